"""The general base in pretrained/: it loads safely and reads what its card says."""

import math

import pytest
import torch

from captcha_generator import CaptchaStyle, draw_captcha
from checkpoints import SHIPPED
from data_loader import preprocess_image
from looks import font_pool
from predict import predict_captcha
from utils import load_model

CARD_ACCURACY = 0.5005  # pretrained/README.md: validation on many-style captchas it did not train on
CARD_FONTS = 195  # the fonts its training captchas were drawn in (matplotlib's and the Debian packages the card lists)


def test_the_shipped_base_is_small_and_loads_weights_only():
    assert SHIPPED.stat().st_size < 20 * 2**20
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert "optimizer" not in ckpt and ckpt["config"]["model"]["min_len"] == 3
    model, codec, config, _ = load_model(SHIPPED)
    assert codec.min_len == 3 and len(config.model.charset) == 62 and 0.5 < model.temperature < 2


@pytest.mark.skipif(len(font_pool()) != CARD_FONTS, reason="other fonts installed than the base was trained with (.ci/run installs them)")
def test_the_shipped_base_reads_fresh_many_style_captchas_at_its_stated_accuracy():
    model, codec, config, _ = load_model(SHIPPED)
    style = CaptchaStyle(mixed=True, min_len=3)
    n, right = 400, 0
    for start in range(0, n, 100):
        drawn = [draw_captcha(7, i, style) for i in range(start, start + 100)]
        images = torch.stack([preprocess_image(image, config) for _, image, _ in drawn])
        right += sum(p.text == label for p, (label, _, _) in zip(predict_captcha(model, codec, images), drawn))
    error = 3 * math.sqrt(CARD_ACCURACY * (1 - CARD_ACCURACY) / n)  # three standard errors of a 400-captcha sample
    assert abs(right / n - CARD_ACCURACY) < error, right / n
