"""Checkpoint files: atomic writes, safe loading, finding the newest, starting a model from
weights (a checkpoint to fine-tune, an ImageNet backbone), and start-up checks.

A checkpoint is a dict of tensors and plain values (model and optimizer state, the
configuration as a dict, charset, epoch, best metric, history), loaded with
``weights_only=True`` so that a file from anywhere cannot run code.
"""

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from atomic import atomic_write
from config import LEGACY_MODEL_SETTINGS, Config

CHECKPOINT_VERSION = 1
# the general base that ships with the project (pretrained/README.md): read with when
# saved_models/ holds nothing, and started from by semi-supervised runs given no --init-from
SHIPPED = Path(__file__).resolve().parent / "pretrained" / "general.pt"
WEIGHTS_ONLY_KEYS = (
    "model", "config", "charset", "temperature", "feature_stats", "best_metric", "epoch", "history", "saved_at", "train_seconds",
)  # fmt: skip


def save_checkpoint(path: Path, **state) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_write(path) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)


def save_weights_only(source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """A small copy of checkpoint ``source`` for shipping: the weights, the configuration,
    the calibration and the history, without the optimiser's state."""
    ckpt = load_checkpoint(source)
    save_checkpoint(Path(output), **{k: ckpt[k] for k in WEIGHTS_ONLY_KEYS if k in ckpt})
    return Path(output)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely (``weights_only=True``: no pickled code runs) onto the CPU."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a safe captcha checkpoint ({type(err).__name__}: {err})") from err


def find_latest_checkpoint(out_dir: str | os.PathLike = "saved_models") -> Path:
    """The most recently written best.pt (or last.pt) under ``out_dir``."""
    candidates = list(Path(out_dir).glob("*/best.pt")) or list(Path(out_dir).glob("*/last.pt"))
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {out_dir}/ yet: train one with `python main.py`")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def config_from_checkpoint(ckpt: dict) -> Config:
    """The checkpoint's Config (also from files written before the model's settings were
    nested); model settings it predates take the value that rebuilds its model."""
    saved = ckpt["config"]
    if "model" in saved:
        return Config.from_flat(saved | {"model": LEGACY_MODEL_SETTINGS | saved["model"]})
    return Config.from_flat(LEGACY_MODEL_SETTINGS | saved)


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict that names every missing, unexpected or differently shaped tensor
    (a checkpoint made for another charset, input size or variant) instead of a traceback."""
    own = model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape]
    problems = [f"{k}: {theirs} in the file, {ours} in the model" for k, theirs, ours in shapes]
    problems += [f"{k}: missing from the file" for k in own.keys() - state.keys()]
    problems += [f"{k}: not in the model" for k in state.keys() - own.keys()]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{source}: weights do not fit the model: " + "; ".join(sorted(problems)[:5]) + more)
    model.load_state_dict(state)


def load_pretrained_backbone(model: nn.Module, path: str) -> int:
    """Copy every tensor of an EfficientNet ImageNet state_dict file whose name and shape
    match the (possibly cut and re-strided) ``model.backbone``; returns how many were copied."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    own = model.backbone.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.backbone.load_state_dict(usable, strict=False)
    print(f"pretrained backbone: {len(usable)} of {len(own)} tensors loaded from {path}")
    return len(usable)


CLASS_ROWS = ("classifier.1.weight", "classifier.1.bias", "ctc_classifier.weight", "ctc_classifier.bias")


def init_from_checkpoint(model: nn.Module, ckpt: dict, source: str) -> int:
    """Start ``model`` (a CNNModel) from a trained checkpoint (fine-tuning); returns how many classes are new.

    Every tensor is copied; the per-class rows of the two classifiers are copied character
    by character, so a charset grown by finetune_config keeps all it had learnt and only
    its new characters start from scratch.
    """
    old = config_from_checkpoint(ckpt).model.charset
    source_class = [0] + [old.index(c) + 1 if c in old else -1 for c in model.config.charset]  # new class -> old class
    state, own = dict(ckpt["model"]), model.state_dict()
    for name in CLASS_ROWS:
        rows = own[name].clone()
        for new, old_class in enumerate(source_class):
            if old_class >= 0:
                rows[new] = state[name][old_class]
        state[name] = rows
    load_weights(model, state, source)
    return source_class.count(-1)


def check_output_dir(run_dir: Path, need_bytes: int) -> None:
    """Fail at start-up, not after an hour, when ``run_dir`` cannot take the checkpoints."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot write checkpoints to {run_dir}: {err.strerror or err}") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise OSError(f"only {free / 2**20:.0f} MiB free under {run_dir}; checkpoints need about {need_bytes / 2**20:.0f} MiB")
