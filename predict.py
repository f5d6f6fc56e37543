"""The one prediction path: preprocess_image and predict_captcha, used by every script."""

import os
from dataclasses import dataclass

import torch
from PIL import Image

from config import Config
from data_loader import SquarePadAndResize, decode_image
from labels import LabelCodec
from utils import autocast, predict_batch


@dataclass
class Prediction:
    text: str
    confidence: float  # product of the per-position probabilities, end/pad positions included
    char_confidences: list[float]  # one per predicted character


def preprocess_image(image: Image.Image | bytes | str | os.PathLike, config: Config) -> torch.Tensor:
    """A PIL image, encoded bytes or a file path -> tensor (C, H, W) as the model sees it."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            image = f.read()
    if isinstance(image, bytes):
        image = decode_image(image, config.channels)
    else:
        image = image.convert("RGB").convert("L" if config.channels == 1 else "RGB")
    return SquarePadAndResize(config.img_height, config.img_width)(image)


def predict_captcha(model: torch.nn.Module, codec: LabelCodec, images: torch.Tensor, amp: bool = False) -> list[Prediction]:
    """images (B, C, H, W) or (C, H, W) -> one Prediction per image."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    device = next(model.parameters()).device
    with autocast(device, amp):
        ids, conf = predict_batch(model, images.to(device, memory_format=torch.channels_last))
    ids, conf = ids.cpu(), conf.cpu()
    out = []
    for row_ids, row_conf in zip(ids, conf):
        text = codec.decode(row_ids)
        out.append(Prediction(text, float(row_conf.prod()), [round(float(c), 4) for c in row_conf[: len(text)]]))
    return out
