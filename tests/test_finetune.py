"""Mixing data sources, fine-tuning from a checkpoint, augmentation and early stopping."""

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from captcha_generator import CaptchaStyle, generate_captcha_data
from checkpoints import config_from_checkpoint, init_from_checkpoint, load_checkpoint
from codec import LabelCodec
from config import Config, finetune_config
from data_loader import augmentation, load_data
from labels import parse_label
from model import CNNModel
from train import train_model

ROOT = Path(__file__).resolve().parents[1]


def loaders_for(config):
    return load_data(config, LabelCodec(config.model.charset, config.model.max_len))


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    """Source 0: 60 captchas of letters; source 1: 200 captchas of digits."""
    folder = tmp_path_factory.mktemp("sources")
    letters = generate_captcha_data(60, folder / "letters.parquet", seed=3, style=CaptchaStyle(charset="abc", min_len=2, max_len=3))
    digits = generate_captcha_data(200, folder / "digits.parquet", seed=4, style=CaptchaStyle(charset="123", min_len=2, max_len=3))
    return letters, digits


def test_mix_weights_are_honoured_and_validation_uses_the_first_source(two_sources, tiny_config):
    config = dataclasses.replace(tiny_config, data=[str(p) for p in two_sources], mix="0.3,0.7", split_ratios="0.6,0.2,0.2")
    loaders = loaders_for(config)
    train = loaders["train"]
    drawn = []
    for epoch in range(3):
        train.sampler.set_epoch(epoch)
        drawn.append(train.dataset.rows[list(train.sampler), 2])
    for sources in drawn:
        assert len(sources) == len(train.dataset) and abs(np.mean(sources == 0) - 0.3) < 1.5 / len(sources)
    assert not np.array_equal(drawn[0], drawn[1])  # a fresh draw every epoch
    for split in ("val", "test"):
        labels = loaders[split].dataset.labels
        assert labels and all(set(label) <= set("abc") for label in labels)


def test_a_bad_mix_is_refused_by_name():
    with pytest.raises(ValueError, match="one non-negative weight per --data source"):
        _ = Config(data=["a", "b"], mix="1").mix_weights


def test_finetuning_grows_the_charset_and_keeps_what_was_learnt(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    base = config_from_checkpoint(ckpt)
    asked = Config.from_flat(dict(charset="xa1y", img_height=64, epochs=2, init_from=str(tiny_checkpoint)))
    config = finetune_config(base, asked, {"charset", "img_height", "epochs", "init_from"})
    assert config.model.charset == base.model.charset + "xy" and config.model.img_height == base.model.img_height and config.epochs == 2
    model = CNNModel(config.model)
    assert init_from_checkpoint(model, ckpt, str(tiny_checkpoint)) == 2
    state, old = model.state_dict(), ckpt["model"]
    for name in ("classifier.1.weight", "ctc_classifier.bias"):
        assert state[name].shape[0] == len(config.model.charset) + 1
        assert (state[name][: len(base.model.charset) + 1] == old[name]).all()
    assert all((state[k] == v).all() for k, v in old.items() if not k.startswith(("classifier.1", "ctc_classifier")))


def test_main_init_from_takes_shape_from_the_checkpoint(tiny_checkpoint, tiny_parquet, tmp_path):
    cmd = [sys.executable, str(ROOT / "main.py"), "--init-from", str(tiny_checkpoint), "--data", str(tiny_parquet), "--charset", "abc123z"]
    cmd += ["--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--workers", "0", "--run-name", "ft", "--lr", "5e-4"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fine-tuning from" in result.stdout and "(1 new characters)" in result.stdout
    ckpt = load_checkpoint(tmp_path / "saved_models" / "ft" / "last.pt")
    assert ckpt["charset"] == "abc123z" and (ckpt["config"]["model"]["img_height"], ckpt["config"]["model"]["img_width"]) == (32, 96)


def test_early_stopping_stops_when_validation_stops_improving(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=6, lr=0.0, patience=2)
    history = load_checkpoint(train_model(config, loaders_for(config)) / "last.pt")["history"]
    assert len(history) == 3  # epoch 1 is the best; two more without improvement, then stop


def test_augmentation_is_on_for_small_sets_and_keeps_the_captcha_shape(tiny_parquet):
    assert augmentation(Config(augment="auto"), 50000) is None and augmentation(Config(augment="off"), 10) is None
    augment = augmentation(Config(augment="auto"), 1000)
    row = pq.read_table(tiny_parquet).to_pylist()[0]
    image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
    out = [augment(image) for _ in range(4)]
    assert all(o.size == image.size and o.mode == "RGB" for o in out)
    assert any(not np.array_equal(np.asarray(o), np.asarray(image)) for o in out)
    assert parse_label(row["text"])  # the label is untouched by construction
