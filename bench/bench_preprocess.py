"""Where the preprocessing that every engine shares spends its time, per image: PNG
decoding, the colour-mode step, SquarePadAndResize one image at a time (as preprocess_image
calls it) and a batch at a time (as the DataLoader workers and predict.py call it), stacking
a batch, and turning the model's output into answers (predict_captcha around a model that
costs nothing).

    python bench/bench_preprocess.py --images 512

Each stage runs --repeats times over the same fresh captchas (default style); the best
time is reported, in microseconds per image, on one thread.
Other PNG decoders (torchvision's, and OpenCV's where installed) are timed beside PIL's.
"""

import argparse
import io
import time

import numpy as np
import torch
from common import machine
from PIL import Image

from config import HelpFormatter


class _FreeModel(torch.nn.Module):
    """Returns the same logits (B, max_len, n_classes) for any batch: predict_captcha's
    own cost (softmax, confidences, decoding the answers) without a network."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.temperature = logits, 1.0
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # predict_captcha reads the device from a parameter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(images)]


def best_us_per_image(work, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=512, help="fresh captchas timed")
    p.add_argument("--repeats", type=int, default=10, help="runs of each stage; the best is reported")
    p.add_argument("--batch-size", type=int, default=64, help="images per stacked batch")
    a = p.parse_args()
    import torchvision.io

    from captcha_generator import CaptchaStyle, render_rows
    from codec import LabelCodec
    from config import Config
    from data_loader import SquarePadAndResize, image_pixels
    from inputs import decode_image, to_model_mode
    from predict import predict_captcha

    torch.set_num_threads(1)
    config = Config()
    blobs = [row[0] for row in render_rows(4242, 0, a.images, CaptchaStyle())]
    decoded = [decode_image(b, config.model.channels) for b in blobs]
    resize = SquarePadAndResize(config.model.img_height, config.model.img_width)
    tensors = [resize(img) for img in decoded]
    pixels = [image_pixels(img, config.model.channels) for img in decoded]
    pixel_batches = [pixels[i : i + a.batch_size] for i in range(0, len(pixels), a.batch_size)]
    batches = [tensors[i : i + a.batch_size] for i in range(0, len(tensors), a.batch_size)]
    codec = LabelCodec(config.model.charset, config.model.max_len)
    logits = torch.randn(a.batch_size, config.model.max_len, len(config.model.charset) + 1, generator=torch.Generator().manual_seed(0))
    free = _FreeModel(logits)
    stacked = [torch.stack(batch) for batch in batches]
    raw_pngs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    stages = {
        "PNG decoding (PIL: open + load)": lambda: [Image.open(io.BytesIO(b)).load() for b in blobs],
        "PNG decoding (torchvision.io.decode_png)": lambda: [torchvision.io.decode_png(raw) for raw in raw_pngs],
        "colour mode (to_model_mode on decoded images)": lambda: [to_model_mode(img, config.model.channels) for img in decoded],
        "decode_image (decoding + colour mode)": lambda: [decode_image(b, config.model.channels) for b in blobs],
        f"SquarePadAndResize to {config.model.img_height}x{config.model.img_width}, one image at a time": lambda: [
            resize(img) for img in decoded
        ],
        f"SquarePadAndResize.batch, batches of {a.batch_size}": lambda: [resize.batch(batch) for batch in pixel_batches],
        f"torch.stack, batches of {a.batch_size}": lambda: [torch.stack(batch) for batch in batches],
        "answers from logits (predict_captcha without a network)": lambda: [predict_captcha(free, codec, s) for s in stacked],
    }
    try:
        import cv2

        stages["PNG decoding (OpenCV imdecode)"] = lambda: [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs]
    except ImportError:
        pass
    print(f"machine: {machine()}, 1 torch thread; {a.images} fresh captchas (seed 4242), best of {a.repeats}")
    print("| stage | µs per image |\n|---|---|")
    for name, work in stages.items():
        print(f"| {name} | {best_us_per_image(work, len(blobs), a.repeats):.1f} |")


if __name__ == "__main__":
    main()
