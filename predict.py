"""The one prediction path: predict_captcha on tensors from data_loader.preprocess_image."""

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from device import autocast
from labels import LabelCodec


@dataclass
class Prediction:
    text: str
    confidence: float  # product of the per-position probabilities, end/pad positions included
    char_confidences: list[float]  # one per predicted character


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, C, H, W) -> (class ids (B, max_len), probabilities of those ids (B, max_len)),
    the probabilities at the model's calibrated ``temperature``."""
    probs = (model(images).float() / model.temperature).softmax(dim=-1)
    conf, ids = probs.max(dim=-1)
    return ids, conf


def predict_captcha(model: torch.nn.Module, codec: LabelCodec, images: torch.Tensor, amp: bool = False) -> list[Prediction]:
    """images (B, C, H, W) or (C, H, W) -> one Prediction per image."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    device = getattr(model, "device", None) or next(model.parameters()).device
    if isinstance(model, torch.nn.Module):  # an OnnxModel takes plain contiguous arrays
        images = images.to(device, memory_format=torch.channels_last)
    with autocast(device, amp):
        ids, conf = predict_batch(model, images)
    ids, conf = ids.cpu(), conf.cpu()
    out = []
    for row_ids, row_conf in zip(ids, conf):
        text = codec.decode(row_ids)
        out.append(Prediction(text, float(row_conf.prod()), [round(float(c), 4) for c in row_conf[: len(text)]]))
    return out


def run_inference(model: torch.nn.Module, codec: LabelCodec, loader, amp: bool = False, progress: bool = False):
    """Predict every batch of ``loader`` (items from CaptchaDataset).

    Returns (predicted texts, true labels, whole-sequence confidences, seconds spent in the model).
    """
    model.eval()
    predictions, labels, confidences, seconds = [], [], [], 0.0
    for images, targets, _ in tqdm(loader, desc="predicting", unit="batch", disable=not progress, leave=False):
        if images is None:
            continue
        start = time.perf_counter()
        batch = predict_captcha(model, codec, images, amp)
        seconds += time.perf_counter() - start
        predictions += [p.text for p in batch]
        confidences += [p.confidence for p in batch]
        labels += [codec.decode(row) for row in targets]
    return predictions, labels, confidences, seconds
