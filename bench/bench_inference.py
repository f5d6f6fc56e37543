"""Inference speed and accuracy side by side: PyTorch eager, onnxruntime (float32 and int8
dynamic quantisation) and ddddocr, on the same fresh captchas, end to end from PNG bytes.

python bench/bench_inference.py                         # newest checkpoint, 512 captchas
python bench/bench_inference.py --checkpoint saved_models/<run>/best.pt --images 1024

Batch 1 is one image at a time (latency: median milliseconds per image); batch 64 is
images/s over the whole set, end to end, and in the model alone (the time inside
predict_captcha, on tensors already preprocessed: the same PNG decoding and resizing
feed every engine, so this column compares the engines themselves). ddddocr (pip install -r requirements-bench.txt) reads one
image per call, so it has batch-1 figures only; it is not trained on our captchas, so its
accuracy is shown case-insensitively and only for orientation.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from captcha_generator import CaptchaStyle, render_rows
from data_loader import preprocess_image
from labels import parse_label
from onnx_model import export_onnx, load_onnx, quantize_onnx
from predict import predict_captcha
from utils import load_model


def time_engine(read, images: list[bytes], batch: int) -> tuple[list[str], float, float, float | None]:
    """read(list of PNG bytes) -> texts. Returns (texts, images/s, median ms per call,
    images/s in the model alone where ``read`` counts its ``model_seconds``, else None)."""
    read(images[:batch])  # warm-up
    if hasattr(read, "model_seconds"):
        read.model_seconds = 0.0
    texts, calls = [], []
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        t = time.perf_counter()
        texts += read(images[i : i + batch])
        calls.append(time.perf_counter() - t)
    in_model = len(images) / read.model_seconds if hasattr(read, "model_seconds") else None
    return texts, len(images) / (time.perf_counter() - start), 1000 * statistics.median(calls), in_model


class OurReader:
    """PNG bytes -> texts through preprocess_image and predict_captcha, counting the
    seconds spent in predict_captcha (the model, softmax and decoding)."""

    def __init__(self, model, codec, config):
        self.model, self.codec, self.config, self.model_seconds = model, codec, config, 0.0

    def __call__(self, chunk: list[bytes]) -> list[str]:
        images = torch.stack([preprocess_image(b, self.config) for b in chunk])
        start = time.perf_counter()
        texts = [p.text for p in predict_captcha(self.model, self.codec, images)]
        self.model_seconds += time.perf_counter() - start
        return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: newest in saved_models/)")
    p.add_argument("--images", type=int, default=512, help="fresh captchas to read")
    p.add_argument("--seed", type=int, default=4242, help="generator seed for the captchas")
    p.add_argument("--no-ddddocr", action="store_true", help="skip ddddocr even when installed")
    a = p.parse_args()
    model, codec, config, ckpt = load_model(a.checkpoint)
    rows = render_rows(a.seed, 0, a.images, CaptchaStyle(charset=config.charset, max_len=min(8, config.max_len)))
    images, labels = [r[0] for r in rows], [parse_label(r[2]) for r in rows]
    engines = {"PyTorch eager": OurReader(model, codec, config)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, ckpt, Path(tmp) / "model.onnx")
        engines["onnxruntime float32"] = OurReader(*load_onnx(fp32)[:3])
        engines["onnxruntime int8 (dynamic)"] = OurReader(*load_onnx(quantize_onnx(fp32, Path(tmp) / "model.int8.onnx"))[:3])
        if not a.no_ddddocr:
            try:
                import ddddocr

                ocr = ddddocr.DdddOcr(show_ad=False)
                engines["ddddocr"] = lambda chunk: [ocr.classification(b) for b in chunk]
            except ImportError:
                print("ddddocr not installed (pip install -r requirements-bench.txt): skipped")
        rows = []
        for name, read in engines.items():
            texts, rate1, ms1, _ = time_engine(read, images, 1)
            rate64, model64 = time_engine(read, images, 64)[1::2] if name != "ddddocr" else (None, None)
            acc = np.mean([t == y for t, y in zip(texts, labels)])
            acc_ci = np.mean([t.lower() == y.lower() for t, y in zip(texts, labels)])
            rows.append((name, rate1, ms1, rate64, model64, acc, acc_ci))
    print(f"machine: {machine()}, torch threads {torch.get_num_threads()}")
    print(f"checkpoint: {ckpt['path']} ({config.img_height}x{config.img_width}); {a.images} fresh captchas, seed {a.seed}\n")
    print(
        "| engine | batch 1 images/s | batch 1 median ms | batch 64 images/s | batch 64, model only | seq acc | seq acc, case-insensitive |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rate1, ms1, rate64, model64, acc, acc_ci in rows:
        batch64, alone = ("-" if x is None else f"{x:.0f}" for x in (rate64, model64))
        print(f"| {name} | {rate1:.0f} | {ms1:.2f} | {batch64} | {alone} | {acc:.2%} | {acc_ci:.2%} |")


if __name__ == "__main__":
    main()
