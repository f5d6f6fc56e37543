import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captcha_generator import CaptchaStyle, generate_captcha_data  # noqa: E402
from codec import LabelCodec  # noqa: E402
from config import Config  # noqa: E402
from data_loader import load_data  # noqa: E402
from train import train_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_parquet(tmp_path_factory) -> Path:
    """120 generated captchas (labels of 2-3 characters from a 6-character charset)."""
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    return generate_captcha_data(120, path, seed=1, style=CaptchaStyle(min_len=2, max_len=3, charset="abc123"), workers=1)


def make_tiny_config(parquet: Path, out_dir: Path, **overrides) -> Config:
    """A model and run small enough to train a few steps in seconds on a CPU."""
    settings = dict(
        data=[str(parquet)],
        charset="abc123",
        max_len=4,
        img_height=32,
        img_width=96,
        width_mult=0.25,
        depth_mult=0.25,
        head_dim=32,
        epochs=2,
        batch_size=16,
        max_steps=3,
        workers=0,
        out_dir=str(out_dir),
        run_name="run",
        split_ratios="0.7,0.15,0.15",
    )
    return Config.from_flat(settings | overrides)


@pytest.fixture
def tiny_config(tiny_parquet, tmp_path) -> Config:
    return make_tiny_config(tiny_parquet, tmp_path / "models")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_parquet, tmp_path_factory) -> Path:
    """best.pt of a one-epoch tiny run, shared by the script tests."""
    config = make_tiny_config(tiny_parquet, tmp_path_factory.mktemp("models"), epochs=1, max_steps=4)
    return train_model(config, load_data(config, LabelCodec(config.model.charset, config.model.max_len))) / "best.pt"
