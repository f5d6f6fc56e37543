"""What the scripts share to run a trained model: seeding, freezing, loading a recognizer
from a checkpoint or an ONNX file, and the flags that choose one. Training is train.py's."""

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from checkpoints import SHIPPED, config_from_checkpoint, find_latest_checkpoint, load_checkpoint, load_weights
from codec import LabelCodec
from device import get_device
from model import CNNModel


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_requires_grad(module: nn.Module, requires_grad: bool) -> None:
    """Freeze or unfreeze every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(requires_grad)


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", out_dir: str = "saved_models"):
    """Rebuild the model from a checkpoint alone (newest in ``out_dir`` when ``path`` is None).

    Returns (model in eval mode on ``device``, codec, config, checkpoint dict).
    """
    path = Path(path) if path else newest_or_shipped(out_dir)
    ckpt = load_checkpoint(path)
    config = config_from_checkpoint(ckpt)
    m = config.model
    model = CNNModel(m)
    load_weights(model, ckpt["model"], f"{path} ({m.variant}, {m.img_height}x{m.img_width}, {len(m.charset)} characters)")
    model.temperature = float(ckpt.get("temperature", 1.0))  # calibration.py; absent before calibration
    model.feature_stats = ckpt.get("feature_stats")  # familiarity.py; absent before calibration
    model.to(get_device(device)).eval()
    ckpt["path"] = str(path)
    return model, LabelCodec.for_model(m), config, ckpt


def newest_or_shipped(out_dir: str = "saved_models") -> Path:
    """The newest checkpoint in ``out_dir``, else the shipped general base (said in one line)."""
    try:
        return find_latest_checkpoint(out_dir)
    except FileNotFoundError:
        if not SHIPPED.is_file():
            raise
        print(f"note: no checkpoint in {out_dir}/ yet: reading with the shipped general base {os.path.relpath(SHIPPED)}")
        return SHIPPED


def load_recognizer(checkpoint: str | None = None, onnx: str | None = None, device: str | torch.device = "cpu"):
    """(model, codec, config, info) from an ONNX file when ``onnx`` is given (onnxruntime, CPU),
    else from ``checkpoint`` (default: the newest in saved_models/) on ``device``."""
    if onnx:
        from onnx_model import load_onnx

        return load_onnx(onnx)
    return load_model(checkpoint, device)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the model a script reads with: --checkpoint, --onnx, --device."""
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: newest in saved_models/)")
    parser.add_argument("--onnx", default=None, help="use this exported ONNX file (onnxruntime) instead of a checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--allowed-chars", default="", help="answer only with these characters (default: all the model reads)")
    parser.add_argument(
        "--length", default="", help="answer only with N or MIN-MAX characters (default: the lengths the model was trained on)"
    )


def recognizer_from_args(args: argparse.Namespace):
    """load_recognizer as add_model_flags' flags ask, its codec constrained to --allowed-chars
    and --length. A missing, unsafe or unfitting file, or constraints the model cannot meet,
    end the script with one line naming them (SystemExit), not a traceback."""
    try:
        model, codec, config, info = load_recognizer(args.checkpoint, args.onnx, get_device(args.device))
        return model, codec.constrained(args.allowed_chars, args.length), config, info
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {err}") from None
