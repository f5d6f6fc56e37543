"""Export a trained checkpoint to ONNX for onnxruntime (or any ONNX runtime).

python export_onnx.py                                   # newest checkpoint -> model.onnx
python export_onnx.py --checkpoint saved_models/<run>/best.pt --output captcha.onnx --check 256

The file has a dynamic batch axis and carries the charset, input size and maximum length
in its metadata, so it is enough on its own to preprocess images and decode predictions.
"""

import argparse

import torch

from captcha_generator import CaptchaStyle, render_rows
from config import Config, HelpFormatter
from data_loader import preprocess_image
from image_folders import find_datasets
from inputs import open_parquet
from onnx_model import export_onnx, load_onnx, quantize_onnx
from utils import load_model


def parity_images(config: Config, rows: int) -> tuple[list[bytes], str]:
    """PNG bytes of ``rows`` images to compare the models on, and where they came from: the
    first rows of the checkpoint's training data, or fresh generated captchas (seed 0) when
    that data is not on this machine."""
    files = find_datasets(config.data, config.labels, config.label_pattern)
    if files:
        batch = next(open_parquet(files[0]).iter_batches(batch_size=rows, columns=["image"]))
        return [r["bytes"] for r in batch.column("image").to_pylist()], str(files[0])
    return [png for png, _, _ in render_rows(0, 0, rows, CaptchaStyle())], "generated captchas (training data not found)"


def parity(model: torch.nn.Module, config: Config, onnx_path: str, rows: int) -> tuple[int, int, float, str]:
    """Predict ``rows`` images (``parity_images``) with both models.

    Returns (images compared, images whose text differs, largest probability difference, source).
    """
    onnx_model, _, _, _ = load_onnx(onnx_path)
    pngs, source = parity_images(config, rows)
    images = torch.stack([preprocess_image(png, config) for png in pngs])
    with torch.no_grad():
        ref = model(images).softmax(-1)
    out = onnx_model(images).softmax(-1)
    return len(images), int((ref.argmax(-1) != out.argmax(-1)).any(dim=1).sum()), float((ref - out).abs().max()), source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: newest in saved_models/)")
    p.add_argument("--output", default="model.onnx", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--int8", action="store_true", help="also write an int8 dynamically quantised copy (<output>.int8.onnx)")
    p.add_argument(
        "--check",
        type=int,
        default=64,
        help="compare PyTorch and onnxruntime on this many training images (generated ones without the data; 0: skip)",
    )
    a = p.parse_args()
    try:
        model, _, config, ckpt = load_model(a.checkpoint)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    out = export_onnx(model, ckpt, a.output, a.opset)
    print(f"exported {ckpt['path']} -> {out}")
    if a.check:
        n, differ, diff, source = parity(model, config, str(out), a.check)
        print(f"parity on {n} images of {source}: {differ} predictions differ, largest probability difference {diff:.2e}")
    if a.int8:
        print(f"int8 copy: {quantize_onnx(out, out.with_suffix('.int8.onnx'))} (measure its accuracy before use)")


if __name__ == "__main__":
    main()
