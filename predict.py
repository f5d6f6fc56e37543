"""The one prediction path: predict_captcha on tensors from data_loader's preprocessing,
and predict_images from encoded images or files to predictions, batch by batch."""

import argparse
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from codec import Answers, LabelCodec
from config import Config
from data_loader import SquarePadAndResize, image_pixels
from device import autocast
from familiarity import unfamiliar
from progress import progress_bar

ImageSource = bytes | str | os.PathLike  # encoded image bytes or an image file

# Test-time augmentation: the captcha read as it is and moved 2 pixels left and right, the
# logits averaged. Each copy alone reads about as well as the original; together they read
# 1.7-3.9 points more of our style (three models) and 4.8 more of a new style fine-tuned
# from 1,000 labels, for 3x the model's time (bench/RESULTS.md, "The default run").
TTA_SHIFTS = (0, -2, 2)


def add_tta_flag(parser: argparse.ArgumentParser) -> None:
    """The scripts' ``--tta`` flag: ``args.shifts`` is TTA_SHIFTS with it, (0,) (one view) without."""
    parser.add_argument(
        "--tta", dest="shifts", action="store_const", const=TTA_SHIFTS, default=(0,),
        help="test-time augmentation: each image and 2 shifted copies, logits averaged, 3x slower (default: off)",
    )  # fmt: skip


@dataclass
class Prediction:
    text: str
    confidence: float  # product of the per-position probabilities, end/pad positions included (constrained: given the allowed answers)
    char_confidences: list[float]  # one per predicted character
    unfamiliar: bool | None = None  # looks unlike the training captchas (familiarity.py); None: not known


def shift_right(images: torch.Tensor, dx: int) -> torch.Tensor:
    """images (B, C, H, W), preprocessed, moved ``dx`` pixels right (left when negative); the
    columns uncovered are white (1.0), as SquarePadAndResize pads."""
    if dx == 0:
        return images
    padded = F.pad(images, (max(dx, 0), max(-dx, 0)), value=1.0)
    return padded[..., max(-dx, 0) : max(-dx, 0) + images.shape[-1]]


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: torch.Tensor, codec: LabelCodec, views: int = 1) -> tuple:
    """images (views * B, C, H, W): ``views`` copies of B captchas, one after the other ->
    (class ids (B, max_len), probabilities of those ids (B, max_len), whole-answer
    confidences (B,), unfamiliar (B,) bool or None where the model carries no feature
    statistics), from the logits averaged over the copies, at the model's calibrated
    ``temperature``. (Averaging the probabilities instead read as well but left the
    confidences too low: ECE 3.8-13% against 3.2-7.4%.)

    The first ``codec.min_len`` positions take their likeliest character, never the end: no
    answer is empty or shorter than the model was trained to read. The probability kept is
    the model's own for that character, so an answer it did not believe in carries a low
    confidence. With ``codec.answers`` the answer is the likeliest one they allow
    (constrained_answers)."""
    flags = None
    if getattr(model, "feature_stats", None) is not None:
        logits, embeddings = model(images, with_embedding=True)
        flags = unfamiliar(embeddings.float().unflatten(0, (views, -1)).mean(dim=0), model.feature_stats)
    else:
        logits = model(images)
    logits = logits.float().unflatten(0, (views, -1)).mean(dim=0)  # (B, max_len, K)
    return (*answers(logits, model.temperature, codec), flags)


def answers(logits: torch.Tensor, temperature: float, codec: LabelCodec) -> tuple[torch.Tensor, ...]:
    """Logits (B, max_len, K) -> predict_batch's (class ids, their probabilities, whole-answer
    confidences), at ``temperature``."""
    probs = (logits / temperature).softmax(dim=-1)
    if codec.answers is not None:
        return constrained_answers(probs, codec.answers)
    choice = probs.clone()
    choice[:, : codec.min_len, LabelCodec.PAD] = -1.0
    ids = choice.argmax(dim=-1)
    chosen = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return ids, chosen, chosen.prod(dim=-1)


def constrained_answers(probs: torch.Tensor, answers: Answers) -> tuple[torch.Tensor, ...]:
    """The likeliest answer of probs (B, max_len, K) among those ``answers`` allow, as
    predict_batch returns it. Each position's probabilities are renormalised over the allowed
    classes; an answer of n characters is the best character at each of the first n positions
    and the end at every later one, and n is the allowed length of the highest product. The
    confidence is that product divided by the probability of all answers of allowed lengths,
    so it is the chance the answer is right given that the right one is allowed."""
    tiny = torch.finfo(probs.dtype).tiny
    q = probs * torch.tensor(answers.allowed, dtype=probs.dtype, device=probs.device)
    q = q / q.sum(-1, keepdim=True).clamp_min(tiny)
    best, chars = q[..., 1:].max(-1)  # (B, max_len): the likeliest character at each position
    end = q[..., LabelCodec.PAD]
    zero = torch.zeros_like(end[:, :1])
    ends_after = torch.cat([end.clamp_min(tiny).log().flip(1).cumsum(1).flip(1), zero], 1)  # (B, max_len + 1): log P(end at i >= n)
    score = torch.cat([zero, best.clamp_min(tiny).log().cumsum(1)], 1) + ends_after  # log P(best answer of n characters)
    characters = q[..., 1:].sum(-1).clamp_min(tiny).log()  # (B, max_len): log P(not the end), summed: 1 - end loses precision
    mass = torch.cat([zero, characters.cumsum(1)], 1) + ends_after  # log P(some answer of n characters)
    n = torch.arange(probs.shape[1] + 1, device=probs.device)
    allowed = (n >= answers.shortest) & (n <= answers.longest)
    length = score.masked_fill(~allowed, -torch.inf).argmax(1)  # (B,)
    is_char = torch.arange(probs.shape[1], device=probs.device) < length[:, None]
    ids = torch.where(is_char, chars + 1, LabelCodec.PAD)
    chosen = torch.where(is_char, best, end)
    confidence = score.gather(1, length[:, None]).squeeze(1) - mass.masked_fill(~allowed, -torch.inf).logsumexp(1)
    return ids, chosen, confidence.exp().clamp(max=1.0)


def predict_captcha(
    model: torch.nn.Module, codec: LabelCodec, images: torch.Tensor, amp: bool = False, shifts: Sequence[int] = (0,)
) -> list[Prediction]:
    """images (B, C, H, W) or (C, H, W) -> one Prediction per image, from the logits averaged
    over the images moved by each of ``shifts`` pixels (TTA_SHIFTS: test-time augmentation)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if tuple(shifts) != (0,):
        images = torch.cat([shift_right(images, dx) for dx in shifts])  # (len(shifts) * B, C, H, W)
    device = getattr(model, "device", None) or next(model.parameters()).device
    if isinstance(model, torch.nn.Module):  # an OnnxModel takes plain contiguous arrays
        images = images.to(device, memory_format=torch.channels_last)
    with autocast(device, amp):
        ids, conf, whole, flags = predict_batch(model, images, codec, len(shifts))
    flags = [None] * len(ids) if flags is None else flags.tolist()
    out = []
    for row_ids, row_conf, row_whole, flag in zip(ids.tolist(), conf.cpu().numpy(), whole.tolist(), flags):
        text = codec.decode(row_ids)
        out.append(Prediction(text, float(row_whole), [round(float(c), 4) for c in row_conf[: len(text)]], flag))
    return out


def _pixels_or_none(items: Sequence[ImageSource], channels: int) -> list[np.ndarray | None]:
    """Decoded pixels (h, w, C) uint8 per item, None for an item that is not a readable image."""
    pixels = []
    for item in items:
        try:
            pixels.append(image_pixels(item, channels))
        except Exception:  # any decoding error: the caller reports the item as unreadable
            pixels.append(None)
    return pixels


_THREAD_COUNT = threading.Lock()


@contextlib.contextmanager
def one_torch_thread():
    """Run the block on one torch thread, then restore the count.

    Preprocessing runs so: a batch of captchas is small work, and after a parallel
    region torch's idle OpenMP threads spin-wait for a while, taking the cores from
    onnxruntime's own threads in the model call that follows. On 2 cores that call took
    15-30% longer after two-thread preprocessing than alone; PyTorch's model, on those
    same OpenMP threads, is not slowed (bench/RESULTS.md). The count is process-wide: a
    lock makes each save-and-restore whole, so callers in several threads cannot leave
    torch on one thread."""
    with _THREAD_COUNT:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def predict_images(
    model: torch.nn.Module,
    codec: LabelCodec,
    config: Config,
    items: Sequence[ImageSource],
    batch_size: int = 64,
    progress: bool = False,
    shifts: Sequence[int] = (0,),
) -> Iterator[tuple[Prediction | None, torch.Tensor | None]]:
    """Encoded images or image files -> (Prediction, image tensor (C, H, W)) per item, in order;
    (None, None) for an item that is not a readable image. One batch is in memory at a time;
    ``progress``: a bar when there are several batches; ``shifts`` as in predict_captcha.

    Decoding the next batch in a background thread while the model reads this one was
    measured and dropped: on 2 cores it gained nothing with onnxruntime and 7% with PyTorch.
    """
    resize = SquarePadAndResize(config.model.img_height, config.model.img_width)
    starts = range(0, len(items), batch_size)
    for start in progress_bar(starts, desc="predicting", unit="batch", disable=not progress or len(starts) <= 1):
        pixels = _pixels_or_none(items[start : start + batch_size], config.model.channels)
        good = [p for p in pixels if p is not None]
        with one_torch_thread():  # the resize is the torch part of preprocessing
            images = resize.batch(good) if good else None  # (N good, C, H, W)
        answers = zip(predict_captcha(model, codec, images, shifts=shifts), images) if good else iter(())
        for p in pixels:
            yield next(answers) if p is not None else (None, None)


def run_inference(
    model: torch.nn.Module, codec: LabelCodec, loader, amp: bool = False, progress: bool = False, shifts: Sequence[int] = (0,)
):
    """Predict every batch of ``loader`` (items from CaptchaDataset); ``shifts`` as in predict_captcha.

    Returns (predicted texts, true labels, whole-sequence confidences, seconds spent in the
    model, unfamiliar flags: True, False or None per image, as Prediction.unfamiliar).
    """
    model.eval()
    predictions, labels, confidences, seconds, flags = [], [], [], 0.0, []
    for images, targets, _ in progress_bar(loader, desc="predicting", unit="batch", disable=not progress, leave=False):
        if images is None:
            continue
        start = time.perf_counter()
        batch = predict_captcha(model, codec, images, amp, shifts)
        seconds += time.perf_counter() - start
        predictions += [p.text for p in batch]
        confidences += [p.confidence for p in batch]
        flags += [p.unfamiliar for p in batch]
        labels += [codec.decode(row) for row in targets]
    return predictions, labels, confidences, seconds, flags
