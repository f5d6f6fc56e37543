import shutil

import pyarrow.parquet as pq
import pytest
import torch

from calibration import calibrate_checkpoint, collect_logits, fit_temperature
from checkpoints import load_checkpoint
from data_loader import load_data, preprocess_image
from onnx_model import export_onnx, load_onnx
from predict import predict_captcha
from utils import load_model


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_fit_temperature_recovers_how_overconfident_or_timid_the_logits_are(scale):
    generator = torch.Generator().manual_seed(0)
    true_logits = 2 * torch.randn(4000, 4, 10, generator=generator)
    targets = torch.multinomial(true_logits.flatten(0, 1).softmax(-1), 1, generator=generator).view(4000, 4)
    temperature, before, after = fit_temperature(true_logits * scale, targets)
    assert temperature == pytest.approx(scale, rel=0.1)
    assert after < before


@pytest.fixture
def calibrated(tiny_checkpoint, tmp_path):
    path = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, path)
    model, codec, config, _ = load_model(path)
    loader = load_data(config, codec)["val"]
    return path, loader, calibrate_checkpoint(path, loader)


def test_calibration_is_stored_and_changes_confidences_not_answers(calibrated, tiny_checkpoint, tiny_parquet):
    path, loader, (temperature, before, after) = calibrated
    assert load_checkpoint(path)["temperature"] == temperature and "temperature" not in load_checkpoint(tiny_checkpoint)
    assert after <= before
    raw, _, _, _ = load_model(tiny_checkpoint)
    model, codec, config, _ = load_model(path)
    assert model.temperature == temperature and raw.temperature == 1.0
    images = torch.stack([preprocess_image(r["image"]["bytes"], config) for r in pq.read_table(tiny_parquet).slice(0, 16).to_pylist()])
    calibrated_predictions, raw_predictions = predict_captcha(model, codec, images), predict_captcha(raw, codec, images)
    assert [p.text for p in calibrated_predictions] == [p.text for p in raw_predictions]
    probs = (collect_logits(model, [(images, torch.zeros(16, config.model.max_len, dtype=torch.long), 0)])[0] / temperature).softmax(-1)
    choice = probs.clone()
    choice[:, : codec.min_len, 0] = -1.0  # answers never end before min_len
    expected = probs.gather(-1, choice.argmax(-1, keepdim=True)).squeeze(-1).prod(-1)
    assert torch.allclose(torch.tensor([p.confidence for p in calibrated_predictions]), expected, atol=1e-5)


def test_an_onnx_export_carries_the_temperature(calibrated, tiny_parquet, tmp_path):
    path, _, (temperature, _, _) = calibrated
    model, codec, config, ckpt = load_model(path)
    onnx_model, onnx_codec, _, _ = load_onnx(export_onnx(model, ckpt, tmp_path / "model.onnx"))
    assert onnx_model.temperature == pytest.approx(temperature)
    images = torch.stack([preprocess_image(r["image"]["bytes"], config) for r in pq.read_table(tiny_parquet).slice(0, 16).to_pylist()])
    ours, theirs = predict_captcha(model, codec, images), predict_captcha(onnx_model, onnx_codec, images)
    assert [p.text for p in ours] == [p.text for p in theirs]
    assert all(abs(a.confidence - b.confidence) < 1e-4 for a, b in zip(ours, theirs))
