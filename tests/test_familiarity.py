"""The warning that a batch looks unlike the training captchas: it fires on a far look and
stays quiet on the training look, for a tiny trained model and for the shipped base."""

import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from calibration import calibrate_checkpoint
from checkpoints import SHIPPED
from codec import LabelCodec
from data_loader import load_data
from familiarity import batch_warning, fit_stats, unfamiliar
from predict import predict_images
from utils import load_model

STATS = {"mean": [0.0, 0.0], "std": [1.0, 1.0], "limit": 4.0, "confidence_mean": 0.6, "confidence_std": 0.3}


def test_an_image_is_unfamiliar_beyond_the_validation_distances():
    torch.manual_seed(0)
    validation = torch.randn(2000, 8)
    stats = fit_stats(validation, torch.rand(2000))
    assert unfamiliar(validation, stats).float().mean().item() == pytest.approx(0.01, abs=0.002)
    assert unfamiliar(torch.randn(500, 8) + 3.0, stats).float().mean() > 0.9
    assert unfamiliar(torch.randn(500, 8), stats).float().mean() < 0.05


def test_the_batch_warning_names_its_reason_and_needs_statistics():
    assert batch_warning([True] * 3 + [False] * 7, [0.6] * 10, STATS).startswith("warning: 3 of these 10 captchas")
    assert batch_warning([True] * 2 + [False] * 8, [0.6] * 10, STATS) is None
    assert "far less sure" in batch_warning([False] * 20, [0.3] * 20, STATS)  # 0.3 < 0.6 - 3 * 0.3 / sqrt(20)
    assert batch_warning([False] * 20, [0.45] * 20, STATS) is None  # within chance of the validation mean
    assert batch_warning([False] * 5, [0.0] * 5, STATS) is None  # too few answers to judge a mean
    assert batch_warning([True] * 20, [0.0] * 20, None) is None  # no statistics: an ONNX file


def test_a_trained_model_warns_on_noise_and_not_on_its_own_captchas(tiny_config, tiny_parquet, tmp_path):
    from train import train_model

    config = tiny_config
    loaders = load_data(config, LabelCodec(config.model.charset, config.model.max_len))
    run = train_model(config, loaders)
    checkpoint = tmp_path / "calibrated.pt"
    shutil.copy(run / "best.pt", checkpoint)
    calibrate_checkpoint(checkpoint, loaders["val"])
    model, codec, config, ckpt = load_model(checkpoint)
    assert set(ckpt["feature_stats"]) == {"mean", "std", "limit", "confidence_mean", "confidence_std"}
    own = [r["bytes"] for r in pq.read_table(tiny_parquet, columns=["image"]).column("image").to_pylist()]
    rng = np.random.default_rng(0)
    noise = []
    for _ in range(40):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (50, 150, 3), dtype=np.uint8)).save(buf, "PNG")
        noise.append(buf.getvalue())
    for blobs, warned in ((own, False), (noise, True)):
        preds = [p for p, _ in predict_images(model, codec, config, blobs)]
        assert (batch_warning([p.unfamiliar for p in preds], [p.confidence for p in preds], model.feature_stats) is not None) == warned


def test_the_shipped_base_warns_on_a_look_it_cannot_read_and_not_on_its_own():
    from captcha.image import ImageCaptcha

    from captcha_generator import CaptchaStyle, draw_captcha

    model, codec, config, _ = load_model(SHIPPED)
    rng = np.random.default_rng(1)
    renderer = ImageCaptcha()
    foreign = []
    for _ in range(60):
        buf = io.BytesIO()
        renderer.generate_image("".join(rng.choice(list("abcdefghjkmnpqrstuvwxyz23456789"), 5))).save(buf, "PNG")
        foreign.append(buf.getvalue())
    own = []
    for i in range(60):
        buf = io.BytesIO()
        draw_captcha(11, i, CaptchaStyle(mixed=True, min_len=3))[1].save(buf, "PNG")
        own.append(buf.getvalue())
    for blobs, warned in ((own, False), (foreign, True)):
        preds = [p for p, _ in predict_images(model, codec, config, blobs)]
        assert (batch_warning([p.unfamiliar for p in preds], [p.confidence for p in preds], model.feature_stats) is not None) == warned
