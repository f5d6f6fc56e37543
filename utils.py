"""Seeding, model building and loading, the loss, and the training loop."""

import hashlib
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import distributed
from checkpoints import check_output_dir, config_from_checkpoint, find_latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from codec import LabelCodec
from config import Config
from device import autocast, get_device, grad_scaler
from metrics import sequence_metrics, write_history
from model import CNNModel
from predict import run_inference
from schedule import optimizer_and_schedule, replan, steps_that_fit

BUDGET_TIMING = (10, 60)  # steps of a fresh run timed for --time-limit: after start-up, while the warm-up has barely begun
FINISH_VALIDATIONS = 2  # after training, calibrating best.pt and last.pt reads the validation split twice
FINISH_SECONDS = 15.0  # and the rest of the end (checkpoints, plots, pictures): ~5 s here, with room to spare


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
        conv_head=config.conv_head,
    )


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", out_dir: str = "saved_models"):
    """Rebuild the model from a checkpoint alone (newest in ``out_dir`` when ``path`` is None).

    Returns (model in eval mode on ``device``, codec, config, checkpoint dict).
    """
    path = Path(path) if path else find_latest_checkpoint(out_dir)
    ckpt = load_checkpoint(path)
    config = config_from_checkpoint(ckpt)
    model = build_model(config)
    described = f"{config.variant}, {config.img_height}x{config.img_width}, {len(config.charset)} characters"
    load_weights(model, ckpt["model"], f"{path} ({described})")
    model.temperature = float(ckpt.get("temperature", 1.0))  # calibration.py; absent before calibration
    model.to(get_device(device)).eval()
    ckpt["path"] = str(path)
    return model, LabelCodec(config.charset, config.max_len), config, ckpt


def load_recognizer(checkpoint: str | None = None, onnx: str | None = None, device: str | torch.device = "cpu"):
    """(model, codec, config, info) from an ONNX file when ``onnx`` is given (onnxruntime, CPU),
    else from ``checkpoint`` (default: the newest in saved_models/) on ``device``."""
    if onnx:
        from onnx_model import load_onnx

        return load_onnx(onnx)
    return load_model(checkpoint, device)


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


CLASS_ROWS = ("classifier.1.weight", "classifier.1.bias", "ctc_classifier.weight", "ctc_classifier.bias")


def init_from_checkpoint(model: CNNModel, ckpt: dict, config: Config) -> int:
    """Start ``model`` from a trained checkpoint (fine-tuning) and return how many classes are new.

    Every tensor is copied; the per-class rows of the two classifiers are copied character
    by character, so a charset grown by finetune_config keeps all it had learnt and only
    its new characters start from scratch.
    """
    old = config_from_checkpoint(ckpt).charset
    source = [0] + [old.index(c) + 1 if c in old else -1 for c in config.charset]  # new class -> old class
    state, own = dict(ckpt["model"]), model.state_dict()
    for name in CLASS_ROWS:
        rows = own[name].clone()
        for new, old_class in enumerate(source):
            if old_class >= 0:
                rows[new] = state[name][old_class]
        state[name] = rows
    load_weights(model, state, config.init_from)
    return source.count(-1)


def _pretrain_epochs(config: Config) -> int:
    if config.pretrain_epochs >= 0:
        return config.pretrain_epochs
    return 1 if config.pretrained_weights else 0


def _set_phase(model: CNNModel, frozen: bool, config: Config) -> nn.Module:
    """Train mode, except a frozen backbone also keeps its batch-norm statistics (eval mode).

    Returns what the steps call: the model, or under torchrun a DistributedDataParallel
    wrapper built for this phase's trainable parameters.
    """
    model.train()
    for module in model.backbone_modules():
        set_requires_grad(module, not frozen)
        module.train(not frozen)
    if not distributed.active():
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=not config.ctc_weight)


def _prepare_model(config: Config, device: torch.device, run_dir: Path, fresh: bool) -> tuple[nn.Module, torch.memory_format]:
    """The model train_model trains, on ``device`` in its memory format: seeded, started from
    --pretrained-weights or --init-from in a ``fresh`` run (a resumed one loads its own
    weights later), batch norm synchronised under torchrun with --sync-bn."""
    main_rank = distributed.is_main()
    seed_everything(config.seed)
    model = build_model(config)
    if main_rank:
        check_output_dir(run_dir, need_bytes=2 * 4 * 4 * sum(p.numel() for p in model.parameters()) + 2**20)
    if config.pretrained_weights and fresh:
        load_pretrained_backbone(model, config.pretrained_weights)
    if config.init_from and fresh:
        new = init_from_checkpoint(model, load_checkpoint(config.init_from), config)
        if main_rank:
            print(f"fine-tuning from {config.init_from} ({new} new characters)")
    if config.sync_bn and distributed.active():
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main_rank:
            print("note: --sync-bn needs CUDA; ignored on this device")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format), memory_format


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM); ``checkpoint`` holds the state to resume from."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"training interrupted; resume with: python main.py --resume {checkpoint}")
        self.checkpoint = checkpoint


@contextmanager
def stop_requests():
    """Turn the first SIGINT / SIGTERM into a flag (``event.is_set()``) that the training loop
    checks after every step, so it can save before exiting; a second Ctrl-C aborts at once."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def request(signum, _frame):
        event.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"\n{signal.Signals(signum).name}: saving last.pt after this step (Ctrl-C again to abort without saving)", flush=True)

    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train_model(
    config: Config,
    loaders: dict,
    started: float | None = None,
    stop_after_epochs: int | None = None,
    stop_after_steps: int | None = None,
) -> Path:
    """Train per ``config`` on ``loaders`` (from ``load_data``); returns the run folder.

    With ``config.time_limit`` a fresh run plans its one-cycle schedule to end in time:
    ``time_limit`` minutes after ``started`` (``time.perf_counter()`` when the run began,
    so main.py's data generation counts; default: now), leaving time for each epoch's
    validation and for main.py's calibration after training. Steps BUDGET_TIMING are
    timed for the first plan, and each epoch's own steps and validation re-plan it.

    Ctrl-C or SIGTERM saves last.pt at the end of the current step, with the position in
    the epoch, and raises Interrupted; ``config.resume`` continues from it exactly.
    ``stop_after_epochs`` / ``stop_after_steps`` make the same request after that many
    epochs or steps of this call (for tests). With ``config.snapshot_minutes`` the weights
    are also saved as minutes-<m>.pt each time that much training wall time has passed
    (every checkpoint records its ``train_seconds``, resumed runs included).

    Each epoch reseeds torch and the data order from (seed, epoch), and a mid-epoch
    checkpoint keeps the RNG state and the epoch's running sums, so a resumed run ends
    with the same weights and metrics rows as an uninterrupted one.

    Under torchrun (distributed.setup) the model is wrapped in DistributedDataParallel,
    metrics are summed over the processes, and only rank 0 prints and writes files; the
    checkpoints hold the unwrapped model, so every script loads them unchanged.
    """
    device = get_device(config.device)
    if device.type == "cuda" and distributed.active():
        device = torch.device("cuda", torch.cuda.current_device())
    main_rank = distributed.is_main()
    codec = LabelCodec(config.charset, config.max_len)
    resume = load_checkpoint(config.resume) if config.resume else None
    run_name = config.run_name or distributed.broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(config.resume).parent if resume else Path(config.out_dir) / run_name
    model, memory_format = _prepare_model(config, device, run_dir, fresh=resume is None)
    train_loader = loaders["train"]
    steps = min(len(train_loader), config.max_steps or len(train_loader))
    optimizer, scheduler = optimizer_and_schedule(model, config, config.epochs * steps)
    scaler = grad_scaler(device, config.amp)
    start_epoch, best, history, partial = 0, -1.0, [], None
    if resume:
        load_weights(model, resume["model"], config.resume)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume.get("scaler") or {})
        start_epoch, best, history, partial = resume["epoch"] + 1, resume["best_metric"], resume["history"], resume.get("partial")
    frozen_epochs = _pretrain_epochs(config)
    parts = [model, optimizer, scheduler, scaler]  # the --time-limit plan may replace the scheduler
    done_steps, prior_seconds = 0, resume.get("train_seconds", 0.0) if resume else 0.0
    run_start = time.perf_counter() - prior_seconds
    snapshots = 1 + int(prior_seconds / (60 * config.snapshot_minutes)) if config.snapshot_minutes else 1
    budget_times = []  # perf_counter at the BUDGET_TIMING steps of a fresh run
    deadline = (time.perf_counter() if started is None else started) + 60 * config.time_limit

    def planned_epochs() -> int:
        return min(config.epochs, math.ceil(scheduler.total_steps / steps))

    def epoch_steps(epoch: int) -> int:
        """All ``steps``, except in the last epoch of a run shortened by --time-limit."""
        return min(steps, scheduler.total_steps - epoch * steps)

    def label(epoch: int) -> str:
        return f"epoch {epoch + 1}/{planned_epochs()}"

    def fit_to_deadline(per_step: float, per_validation: float, first: bool) -> None:
        """Re-plan the schedule so that its steps, each epoch's validation and the end of the
        run (FINISH_VALIDATIONS passes and FINISH_SECONDS) are over by the deadline; say so
        the ``first`` time and whenever the number of epochs changes."""
        nonlocal scheduler
        before = planned_epochs()
        left = deadline - time.perf_counter() - FINISH_VALIDATIONS * per_validation - FINISH_SECONDS
        fit = steps_that_fit(scheduler.last_epoch, left, per_step, per_validation, steps)
        parts[2] = scheduler = replan(config, optimizer, scheduler, distributed.broadcast(min(config.epochs * steps, fit)))
        if main_rank and (first or planned_epochs() != before):
            tqdm.write(
                f"--time-limit {config.time_limit:g}: at {per_step:.3f} s per step and {per_validation:.0f} s per validation, "
                f"{scheduler.total_steps} of the {config.epochs * steps} planned steps fit ({planned_epochs()} epochs); "
                "the one-cycle schedule ends there (--time-limit 0: no limit)"
            )

    def save(name: str, epoch: int, **extra) -> None:
        if main_rank:
            state = _state(*parts, config, epoch, history) | {"train_seconds": time.perf_counter() - run_start}
            save_checkpoint(run_dir / name, **state, best_metric=best, **extra)

    with stop_requests() as stop:
        for epoch in range(start_epoch, config.epochs):
            if epoch >= planned_epochs():
                break
            torch.manual_seed(config.seed * 1000 + epoch)
            train_loader.generator.manual_seed(config.seed * 1000 + epoch)
            train_loader.sampler.set_epoch(epoch)
            sums = {"loss": 0.0, "seen": 0, "correct": 0, "bad": 0, "seconds": 0.0, "step": 0}
            if partial:
                sums = {k: partial[k] for k in sums}
                torch.set_rng_state(partial["rng"])
                partial = None
            train_loader.sampler.skip = sums["step"] * config.batch_size
            net = _set_phase(model, frozen=epoch < frozen_epochs, config=config)
            bar = tqdm(
                train_loader,
                total=epoch_steps(epoch),
                initial=sums["step"],
                desc=label(epoch),
                unit="batch",
                leave=False,
                disable=not main_rank,
            )
            start = time.perf_counter() - sums["seconds"]
            for images, targets, n_bad in bar:
                sums["step"] += 1
                sums["bad"] += n_bad
                if images is not None:
                    loss, correct = train_step(net, parts, images, targets, config, device, memory_format)
                    sums["loss"] += loss * len(images)
                    sums["seen"] += len(images)
                    sums["correct"] += correct
                    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{sums['seen'] / (time.perf_counter() - start):.0f}")
                done_steps += 1
                if config.time_limit and not resume and done_steps in BUDGET_TIMING:
                    budget_times.append(time.perf_counter())
                    if len(budget_times) == 2:
                        per_step = (budget_times[1] - budget_times[0]) / (BUDGET_TIMING[1] - BUDGET_TIMING[0])
                        # inference reads an image in about a third of a training step's time
                        fit_to_deadline(per_step, len(loaders["val"].dataset) * per_step / config.batch_size / 3, first=True)
                        bar.total = epoch_steps(epoch)
                        bar.set_description(label(epoch))
                if config.snapshot_minutes and time.perf_counter() - run_start >= snapshots * 60 * config.snapshot_minutes:
                    save(f"minutes-{snapshots * config.snapshot_minutes:g}.pt", epoch - 1)
                    snapshots += 1
                if sums["step"] >= steps or scheduler.last_epoch >= scheduler.total_steps:
                    break
                if distributed.any_rank(stop.is_set() or done_steps == stop_after_steps):
                    save("last.pt", epoch - 1, partial=sums | {"seconds": time.perf_counter() - start, "rng": torch.get_rng_state()})
                    raise Interrupted(run_dir / "last.pt")
            bar.close()
            validation_start = time.perf_counter()
            train_time = validation_start - start
            predictions, labels, _, _ = run_inference(model, codec, loaders["val"], config.amp)
            if config.time_limit and not resume and scheduler.last_epoch < scheduler.total_steps:
                fit_to_deadline(train_time / sums["step"], time.perf_counter() - validation_start, first=False)
            metrics = sequence_metrics(distributed.gather_lists(predictions), distributed.gather_lists(labels))
            row = _epoch_row(epoch, sums, metrics, train_time, scheduler.get_last_lr()[0])
            history.append(row)
            if main_rank:
                print(
                    f"{label(epoch)}  loss {row['train_loss']:.4f}  train acc {row['train_seq_acc']:.2%}  "
                    f"val acc {row['val_seq_acc']:.2%}  CER {row['val_cer']:.2%}  {row['img_per_s']:.0f} img/s  bad rows {row['bad_rows']}"
                    + ("  (backbone frozen)" if epoch < frozen_epochs else "")
                )
            if metrics["seq_acc"] > best:
                best = metrics["seq_acc"]
                save("best.pt", epoch)
            save("last.pt", epoch)
            if main_rank:
                write_history(run_dir, history)
            asked = stop.is_set() or epoch + 1 - start_epoch == stop_after_epochs or done_steps == stop_after_steps
            if distributed.any_rank(asked) and epoch + 1 < planned_epochs():
                raise Interrupted(run_dir / "last.pt")
            since_best = len(history) - 1 - max(range(len(history)), key=lambda i: history[i]["val_seq_acc"])
            if config.patience and since_best >= config.patience:
                if main_rank:
                    print(f"early stop: no better validation accuracy for {since_best} epochs (--patience {config.patience})")
                break
    if distributed.active():
        _check_replicas(model)
    return run_dir


def _epoch_row(epoch: int, sums: dict, metrics: dict, train_time: float, lr: float) -> dict:
    """metrics.csv's row for ``epoch`` (0-based): the training sums of every process, and the
    validation ``metrics`` (from sequence_metrics) of the whole split."""
    loss_sum, seen, correct, bad = distributed.sum_all([sums["loss"], sums["seen"], sums["correct"], sums["bad"]])
    return {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / max(1, seen), 5),
        "train_seq_acc": round(correct / max(1, seen), 5),
        "val_seq_acc": round(metrics["seq_acc"], 5),
        "val_cer": round(metrics["cer"], 5),
        "img_per_s": round(seen / train_time, 1),
        "bad_rows": int(bad),
        "lr": round(lr, 7),
    }


def _check_replicas(model: nn.Module) -> None:
    """DistributedDataParallel keeps every process's parameters equal; verify it at the end.
    (Batch-norm running statistics are rank 0's, broadcast at each forward; checkpoints hold rank 0's.)"""
    digest = hashlib.sha256()
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digests = distributed.gather_lists([digest.hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights: {digests}")
    if distributed.is_main():
        print(f"replicas agree: {len(digests)} processes hold identical weights")


def train_step(net, parts, images, targets, config: Config, device, memory_format) -> tuple[float, int]:
    """One optimisation step on images (B, C, H, W), targets (B, max_len); returns (loss, sequences right)."""
    model, optimizer, scheduler, scaler = parts
    images = images.to(device, memory_format=memory_format, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    with autocast(device, config.amp):
        logits, ctc_logits = net(images, with_ctc=True)
    loss = recognition_loss(logits.float(), ctc_logits.float(), targets, config)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item(), int((logits.argmax(-1) == targets).all(dim=1).sum())


def _state(model, optimizer, scheduler, scaler, config: Config, epoch: int, history: list[dict]) -> dict:
    """What every checkpoint holds; ``epoch`` is the index of the last completed epoch."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": asdict(config) | {"resume": ""},
        "charset": config.charset,
        "epoch": epoch,
        "history": list(history),
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
