"""Inference speed and accuracy side by side: PyTorch eager, onnxruntime (float32 and int8
dynamic quantisation) and ddddocr, on the same fresh captchas, end to end from PNG bytes.

python bench/bench_inference.py                         # newest checkpoint, 512 captchas
python bench/bench_inference.py --checkpoint saved_models/<run>/best.pt --images 1024

Batch 1 is one image at a time (latency: median milliseconds per image). Batch 64 is
images/s over the whole set end to end, through predict.predict_images as
`test.py --csv` runs it, and in the model alone (predict_captcha on tensors already
preprocessed, so this column compares the engines themselves). The engines take turns
for --rounds rounds and the medians are reported, with the median of the per-round
onnxruntime / PyTorch ratios. ddddocr (pip install -r requirements-bench.txt) reads one
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
from config import HelpFormatter
from data_loader import preprocess_image
from labels import parse_label
from onnx_model import export_onnx, load_onnx, quantize_onnx
from predict import predict_captcha, predict_images
from utils import load_model


def one_by_one(read_one, images: list[bytes]) -> tuple[list[str], list[float]]:
    """read_one(PNG bytes) -> text on each image alone: (texts, seconds per image)."""
    texts, seconds = [], []
    for b in images:
        start = time.perf_counter()
        texts.append(read_one(b))
        seconds.append(time.perf_counter() - start)
    return texts, seconds


class OurReader:
    """One of our engines (a CNNModel or an OnnxModel): called on one image's PNG bytes it
    returns the text; ``batched`` and ``model_alone`` give the batch timings."""

    def __init__(self, model, codec, config):
        self.model, self.codec, self.config = model, codec, config

    def __call__(self, image: bytes) -> str:
        ((prediction, _),) = predict_images(self.model, self.codec, self.config, [image], batch_size=1)
        return prediction.text

    def batched(self, images: list[bytes], batch: int) -> float:
        """Images/s of test.py --csv's path over the whole set: PNG bytes to texts."""
        start = time.perf_counter()
        for _ in predict_images(self.model, self.codec, self.config, images, batch):
            pass
        return len(images) / (time.perf_counter() - start)

    def model_alone(self, tensors: torch.Tensor, batch: int) -> float:
        """Images/s of predict_captcha (model, softmax, decoding) on preprocessed tensors (N, C, H, W)."""
        start = time.perf_counter()
        for i in range(0, len(tensors), batch):
            predict_captcha(self.model, self.codec, tensors[i : i + batch])
        return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: newest in saved_models/)")
    p.add_argument("--images", type=int, default=512, help="fresh captchas to read")
    p.add_argument("--seed", type=int, default=4242, help="generator seed for the captchas")
    p.add_argument("--no-ddddocr", action="store_true", help="skip ddddocr even when installed")
    p.add_argument("--rounds", type=int, default=3, help="times each engine is measured, taking turns; medians are reported")
    a = p.parse_args()
    model, codec, config, ckpt = load_model(a.checkpoint)
    rows = render_rows(a.seed, 0, a.images, CaptchaStyle(charset=config.model.charset, max_len=min(8, config.model.max_len)))
    images, labels = [r[0] for r in rows], [parse_label(r[2]) for r in rows]
    engines = {"PyTorch eager": OurReader(model, codec, config)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, ckpt, Path(tmp) / "model.onnx")
        engines["onnxruntime float32"] = OurReader(*load_onnx(fp32)[:3])
        engines["onnxruntime int8 (dynamic)"] = OurReader(*load_onnx(quantize_onnx(fp32, Path(tmp) / "model.int8.onnx"))[:3])
        if not a.no_ddddocr:
            try:
                import ddddocr

                engines["ddddocr"] = ddddocr.DdddOcr(show_ad=False).classification  # one image per call
            except ImportError:
                print("ddddocr not installed (pip install -r requirements-bench.txt): skipped")
        tensors = torch.stack([preprocess_image(b, config) for b in images])
        runs = {name: [] for name in engines}
        texts = {}
        for _ in range(a.rounds):  # engines take turns, so a slow moment of the machine hits each alike
            for name, reader in engines.items():
                texts[name], seconds = one_by_one(reader, images)
                run = {"rate1": len(images) / sum(seconds), "ms1": 1000 * statistics.median(seconds)}
                if isinstance(reader, OurReader):
                    reader.batched(images[:64], 64)  # warm-up at this batch size
                    run |= {"rate64": reader.batched(images, 64), "model64": reader.model_alone(tensors, 64)}
                runs[name].append(run)
    print(f"machine: {machine()}, torch threads {torch.get_num_threads()}")
    print(f"checkpoint: {ckpt['path']} ({config.model.img_height}x{config.model.img_width}); {a.images} fresh captchas, seed {a.seed}")
    print(f"medians of {a.rounds} rounds, the engines taking turns within each round\n")
    print("| engine | batch 1 images/s | batch 1 median ms | batch 64 images/s | batch 64, model only | seq acc | seq acc, ignoring case |")
    print("|---|---|---|---|---|---|---|")
    for name, engine_runs in runs.items():
        med = {k: statistics.median(r[k] for r in engine_runs) for k in engine_runs[0]}
        batch64, alone = (f"{med[k]:.0f}" if k in med else "-" for k in ("rate64", "model64"))
        acc = np.mean([t == y for t, y in zip(texts[name], labels)])
        acc_ci = np.mean([t.lower() == y.lower() for t, y in zip(texts[name], labels)])
        print(f"| {name} | {med['rate1']:.0f} | {med['ms1']:.2f} | {batch64} | {alone} | {acc:.2%} | {acc_ci:.2%} |")
    ort, eager = runs["onnxruntime float32"], runs["PyTorch eager"]
    ratios = {k: statistics.median(o[k] / e[k] for o, e in zip(ort, eager)) for k in ("rate1", "rate64", "model64")}
    print(
        f"\nonnxruntime float32 / PyTorch eager, median of the per-round ratios: batch 64 end to end {ratios['rate64']:.2f}x, "
        f"model only {ratios['model64']:.2f}x; one by one {ratios['rate1']:.2f}x"
    )


if __name__ == "__main__":
    main()
