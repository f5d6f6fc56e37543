"""Device, seeding, checkpoints, model loading and the training loop."""

import csv
import os
import random
import time
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from config import Config
from device import autocast, get_device
from labels import LabelCodec
from metrics import sequence_metrics
from model import CNNModel
from predict import run_inference

CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_requires_grad(module: nn.Module, requires_grad: bool) -> None:
    """Freeze or unfreeze every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(requires_grad)


def build_model(config: Config) -> CNNModel:
    return CNNModel(
        num_classes=len(config.charset) + 1,
        max_len=config.max_len,
        img_height=config.img_height,
        img_width=config.img_width,
        channels=config.channels,
        variant=config.variant,
        width_strides=config.width_strides,
        width_mult=config.width_mult or None,
        depth_mult=config.depth_mult or None,
        head_dim=config.head_dim,
        dropout=config.dropout,
        drop_connect=config.drop_connect,
        stages=config.stages,
    )


def save_checkpoint(path: Path, **state) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely (``weights_only=True``: no pickled code runs) onto the CPU."""
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
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in ckpt["config"].items() if k in known})


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", out_dir: str = "saved_models"):
    """Rebuild the model from a checkpoint alone (newest in ``out_dir`` when ``path`` is None).

    Returns (model in eval mode on ``device``, codec, config, checkpoint dict).
    """
    path = Path(path) if path else find_latest_checkpoint(out_dir)
    ckpt = load_checkpoint(path)
    config = config_from_checkpoint(ckpt)
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    ckpt["path"] = str(path)
    return model, LabelCodec(config.charset, config.max_len), config, ckpt


def recognition_loss(logits: torch.Tensor, ctc_logits: torch.Tensor, targets: torch.Tensor, config: Config) -> torch.Tensor:
    """Per-position cross-entropy on logits (B, max_len, K) against targets (B, max_len),
    plus ``config.ctc_weight`` times CTC on the column logits (B, w, K)."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=config.label_smoothing)
    if config.ctc_weight:
        log_probs = ctc_logits.log_softmax(-1).transpose(0, 1)  # (w, B, K)
        lengths = (targets != LabelCodec.PAD).sum(dim=1)
        input_lengths = torch.full_like(lengths, log_probs.shape[0])
        ctc = F.ctc_loss(log_probs, targets[targets != LabelCodec.PAD], input_lengths, lengths, blank=LabelCodec.PAD, zero_infinity=True)
        loss = loss + config.ctc_weight * ctc
    return loss


def load_pretrained_backbone(model: CNNModel, path: str) -> int:
    """Copy every tensor of an EfficientNet ImageNet state_dict file whose name and shape
    match the (possibly cut and re-strided) backbone; returns how many were copied."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    own = model.backbone.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.backbone.load_state_dict(usable, strict=False)
    print(f"pretrained backbone: {len(usable)} of {len(own)} tensors loaded from {path}")
    return len(usable)


def _pretrain_epochs(config: Config) -> int:
    if config.pretrain_epochs >= 0:
        return config.pretrain_epochs
    return 1 if config.pretrained_weights else 0


def _set_phase(model: CNNModel, frozen: bool) -> None:
    """Train mode, except a frozen backbone also keeps its batch-norm statistics (eval mode)."""
    model.train()
    for module in model.backbone_modules():
        set_requires_grad(module, not frozen)
        module.train(not frozen)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(title="train loss", xlabel="epoch")
    ax_acc.plot(epochs, [h["val_seq_acc"] for h in history], marker="o", label="sequence accuracy")
    ax_acc.plot(epochs, [h["val_cer"] for h in history], marker="o", label="CER")
    ax_acc.set(title="validation", xlabel="epoch", ylim=(0, 1))
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


def train_model(config: Config, loaders: dict, stop_after_epochs: int | None = None) -> Path:
    """Train per ``config`` on ``loaders`` (from ``load_data``); returns the run folder.

    ``stop_after_epochs`` stops this call early, as an interruption would, leaving a
    last.pt that ``config.resume`` continues from.

    Each epoch reseeds torch and the shuffling generator from (seed, epoch), so a run
    resumed from last.pt continues exactly as the uninterrupted run would.
    """
    device = get_device(config.device)
    codec = LabelCodec(config.charset, config.max_len)
    resume = load_checkpoint(config.resume) if config.resume else None
    run_dir = Path(config.resume).parent if resume else Path(config.out_dir) / (config.run_name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    model = build_model(config)
    if config.pretrained_weights and not resume:
        load_pretrained_backbone(model, config.pretrained_weights)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    train_loader = loaders["train"]
    steps = min(len(train_loader), config.max_steps or len(train_loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps, pct_start=0.15)
    start_epoch, best, history = 0, -1.0, []
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, best, history = resume["epoch"] + 1, resume["best_metric"], resume["history"]
    frozen_epochs = _pretrain_epochs(config)
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 1000 + epoch)
        train_loader.generator.manual_seed(config.seed * 1000 + epoch)
        _set_phase(model, frozen=epoch < frozen_epochs)
        total_loss, seen, correct, bad, start = 0.0, 0, 0, 0, time.perf_counter()
        bar = tqdm(train_loader, total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False)
        for step, (images, targets, n_bad) in enumerate(bar):
            bad += n_bad
            if images is None:
                continue
            images, targets = images.to(device, memory_format=memory_format), targets.to(device)
            with autocast(device, config.amp):
                logits, ctc_logits = model(images, with_ctc=True)
            loss = recognition_loss(logits.float(), ctc_logits.float(), targets, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(images)
            seen += len(images)
            correct += (logits.argmax(-1) == targets).all(dim=1).sum().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
            if step + 1 >= steps:
                break
        train_time = time.perf_counter() - start
        predictions, labels, _, _ = run_inference(model, codec, loaders["val"], config.amp)
        metrics = sequence_metrics(predictions, labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(total_loss / max(1, seen), 5),
            "train_seq_acc": round(correct / max(1, seen), 5),
            "val_seq_acc": round(metrics["seq_acc"], 5),
            "val_cer": round(metrics["cer"], 5),
            "img_per_s": round(seen / train_time, 1),
            "bad_rows": bad,
            "lr": round(scheduler.get_last_lr()[0], 7),
        }
        history.append(row)
        print(
            f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  train acc {row['train_seq_acc']:.2%}  "
            f"val acc {row['val_seq_acc']:.2%}  CER {row['val_cer']:.2%}  {row['img_per_s']:.0f} img/s  bad rows {bad}"
            + ("  (backbone frozen)" if epoch < frozen_epochs else "")
        )
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": asdict(config) | {"resume": ""},
            "charset": config.charset,
            "epoch": epoch,
            "history": history,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if metrics["seq_acc"] > best:
            best = metrics["seq_acc"]
            save_checkpoint(run_dir / "best.pt", **state, best_metric=best)
        save_checkpoint(run_dir / "last.pt", **state, best_metric=best)
        _write_metrics(run_dir, history)
        if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs:
            break
    return run_dir
