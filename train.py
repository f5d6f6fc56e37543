"""The training loop: ``train_model`` runs a Trainer, which trains epochs of steps, validates,
checkpoints, and keeps to --time-limit through a TimeBudget.

Each epoch reseeds torch and the data order from (seed, epoch), and a mid-epoch checkpoint
keeps the RNG state and the epoch's running sums, so a resumed run ends with the same
weights and metrics rows as an uninterrupted one. Under torchrun (distributed.setup) the
model is wrapped in DistributedDataParallel, metrics are summed over the processes, and only
rank 0 prints and writes files; checkpoints hold the unwrapped model.
"""

import hashlib
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import distributed
from checkpoints import (
    check_output_dir,
    config_from_checkpoint,
    init_from_checkpoint,
    load_checkpoint,
    load_pretrained_backbone,
    load_weights,
    save_checkpoint,
)
from codec import LabelCodec
from config import Config
from device import autocast, get_device, grad_scaler
from labels import label_problem
from metrics import sequence_metrics, write_history
from model import CNNModel
from predict import run_inference
from progress import progress_bar
from schedule import optimizer_and_schedule, replan, steps_that_fit
from unlabelled import unlabelled_loader
from utils import seed_everything, set_requires_grad

IGNORE = -100  # a target position the loss leaves out (a pseudo-label's unsure character)
BUDGET_TIMING = (10, 60)  # steps of a fresh run timed for --time-limit: after start-up, while the warm-up has barely begun
FINISH_VALIDATIONS = 2  # after training, calibrating best.pt and last.pt reads the validation split twice
FINISH_SECONDS = 15.0  # and the rest of the end (checkpoints, plots, pictures): ~5 s here, with room to spare


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


def recognition_loss(logits: torch.Tensor, ctc_logits: torch.Tensor, targets: torch.Tensor, config: Config) -> torch.Tensor:
    """Per-position cross-entropy on logits (B, max_len, K) against targets (B, max_len),
    plus ``config.ctc_weight`` times CTC on the column logits (B, w, K). Positions marked
    IGNORE are left out, and so are their rows from the CTC term (it needs whole answers)."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, label_smoothing=config.label_smoothing)
    whole = (targets != IGNORE).all(dim=1)
    if not whole.all():
        logits, ctc_logits, targets = logits[whole], ctc_logits[whole], targets[whole]
    if config.ctc_weight and len(targets):
        log_probs = ctc_logits.log_softmax(-1).transpose(0, 1)  # (w, B, K)
        lengths = (targets != LabelCodec.PAD).sum(dim=1)
        input_lengths = torch.full_like(lengths, log_probs.shape[0])
        ctc = F.ctc_loss(log_probs, targets[targets != LabelCodec.PAD], input_lengths, lengths, blank=LabelCodec.PAD, zero_infinity=True)
        loss = loss + config.ctc_weight * ctc
    return loss


@dataclass
class Optimisation:
    """What a training step changes: the weights, AdamW, its one-cycle schedule, the loss scaler."""

    model: CNNModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    scaler: torch.amp.GradScaler

    def state_dicts(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in ("model", "optimizer", "scheduler", "scaler")}

    def load_state_dicts(self, ckpt: dict, source: str) -> None:
        load_weights(self.model, ckpt["model"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt.get("scaler") or {})


def train_step(
    net: nn.Module, opt: Optimisation, images, targets, config: Config, device, memory_format, pseudo: tuple | None = None
) -> tuple[float, int]:
    """One optimisation step of ``net`` (the model, or its DDP wrapper) on images (B, C, H, W)
    and targets (B, max_len); returns (loss, sequences right). ``pseudo``: strong views
    (M, C, H, W) and the teacher's pseudo-labels (M, max_len), learnt in the same forward
    pass with weight ``config.unlabelled_weight``."""
    n = len(images)
    if pseudo is not None:
        images = torch.cat([images, pseudo[0]])
    images = images.to(device, memory_format=memory_format, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    with autocast(device, config.amp):
        logits, ctc_logits = net(images, with_ctc=True)
    logits, ctc_logits = logits.float(), ctc_logits.float()
    loss = recognition_loss(logits[:n], ctc_logits[:n], targets, config)
    if pseudo is not None:
        loss = loss + config.unlabelled_weight * recognition_loss(logits[n:], ctc_logits[n:], pseudo[1].to(device), config)
    logits = logits[:n]
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    if config.grad_clip:
        opt.scaler.unscale_(opt.optimizer)
        nn.utils.clip_grad_norm_(opt.model.parameters(), config.grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    return loss.item(), int((logits.argmax(-1) == targets).all(dim=1).sum())


def make_teacher(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and batch-norm statistics
    (``update_parameters`` after each step: teacher = decay * teacher + (1 - decay) * model),
    in eval mode: it reads the unlabelled images and is validated beside the model."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True).eval()


def pseudo_labels(
    teacher: nn.Module, weak: torch.Tensor, threshold: float, smoothing: float = 0.0, gate: str = "character"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's answers on weak views (N, C, H, W): (class ids (N, max_len), each ended
    by the end/pad class as a label is, and which positions to learn (N, max_len) bool).

    Each position's confidence is its top probability divided by the highest one that label
    ``smoothing`` trains towards (1 - s + s / K): a model trained with smoothing 0.05 never
    puts more than 0.95 on a class. ``gate`` "character" learns every position whose
    confidence is at least ``threshold``; "sequence" learns a whole answer or nothing, by
    the product of its positions' confidences. Positions after the end are learnt only
    where the teacher itself reads the end there; an empty answer is never learnt."""
    with torch.no_grad():
        probs = teacher(weak).float().softmax(-1)  # (N, max_len, K)
    confidence, top = probs.max(-1)
    confidence = (confidence / (1.0 - smoothing + smoothing / probs.shape[-1])).clamp(max=1.0)
    classes = top.masked_fill((top == LabelCodec.PAD).cumsum(1) > 0, LabelCodec.PAD)
    if gate == "sequence":
        learn = (confidence.prod(-1, keepdim=True) >= threshold).expand_as(classes)
    else:
        learn = (confidence >= threshold) & (classes == top)
    return classes, learn & (classes[:, :1] != LabelCodec.PAD)


class TimeBudget:
    """--time-limit: the deadline, the timing of a fresh run's first steps, and how many
    steps fit before it (a resumed run keeps the plan its checkpoint holds)."""

    def __init__(self, minutes: float, started: float, fresh: bool):
        self.active = bool(minutes) and fresh
        self.deadline = started + 60 * minutes
        self._marks = []  # perf_counter at the BUDGET_TIMING steps

    def timed_step(self, done_steps: int) -> float | None:
        """Call after each step: seconds per step, once the BUDGET_TIMING steps are timed."""
        if not self.active or done_steps not in BUDGET_TIMING:
            return None
        self._marks.append(time.perf_counter())
        return (self._marks[1] - self._marks[0]) / (BUDGET_TIMING[1] - BUDGET_TIMING[0]) if len(self._marks) == 2 else None

    def steps_that_fit(self, done: int, per_step: float, per_validation: float, steps_per_epoch: int) -> int:
        """The total steps whose rest, each epoch's validation and the end of the run
        (FINISH_VALIDATIONS passes and FINISH_SECONDS) are over by the deadline."""
        left = self.deadline - time.perf_counter() - FINISH_VALIDATIONS * per_validation - FINISH_SECONDS
        return steps_that_fit(done, left, per_step, per_validation, steps_per_epoch)


def _pretrain_epochs(config: Config) -> int:
    if config.pretrain_epochs >= 0:
        return config.pretrain_epochs
    return 1 if config.pretrained_weights else 0


def prepare_model(config: Config, device: torch.device, run_dir: Path, fresh: bool) -> tuple[CNNModel, torch.memory_format]:
    """The model to train, on ``device`` in its memory format: seeded, started from
    --pretrained-weights or --init-from in a ``fresh`` run (a resumed one loads its own
    weights later), batch norm synchronised under torchrun with --sync-bn."""
    main_rank = distributed.is_main()
    seed_everything(config.seed)
    model = CNNModel(config.model)
    if main_rank:
        check_output_dir(run_dir, need_bytes=2 * 4 * 4 * sum(p.numel() for p in model.parameters()) + 2**20)
    if config.pretrained_weights and fresh:
        load_pretrained_backbone(model, config.pretrained_weights)
    if config.init_from and fresh:
        new = init_from_checkpoint(model, load_checkpoint(config.init_from), config.init_from)
        if main_rank:
            print(f"fine-tuning from {config.init_from} ({new} new characters)")
    if config.sync_bn and distributed.active():
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main_rank:
            print("note: --sync-bn needs CUDA; ignored on this device")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format), memory_format


class Trainer:
    """One training run: its model and optimiser, its run folder, and where it stands."""

    def __init__(self, config: Config, loaders: dict, started: float | None = None):
        resume = load_checkpoint(config.resume) if config.resume else None
        self.device = get_device(config.device)
        if self.device.type == "cuda" and distributed.active():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.main_rank = distributed.is_main()
        run_name = config.run_name or distributed.broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"))
        self.run_dir = Path(config.resume).parent if resume else Path(config.out_dir) / run_name
        model, self.memory_format = prepare_model(config, self.device, self.run_dir, fresh=resume is None)
        if not config.model.min_len:  # answers never shorter than the shortest training label (a resumed run's: its own)
            labels = loaders["train"].dataset.labels
            shortest = config_from_checkpoint(resume).model.min_len if resume else min(len(label) for label in labels)
            config = replace(config, model=replace(config.model, min_len=shortest))
        self.config, self.loaders = config, loaders
        self.codec = LabelCodec.for_model(config.model)  # validation reads as users will
        train_loader = loaders["train"]
        self.steps = min(len(train_loader), config.max_steps or len(train_loader))
        optimizer, scheduler = optimizer_and_schedule(model, config, config.epochs * self.steps)
        self.opt = Optimisation(model, optimizer, scheduler, grad_scaler(self.device, config.amp))
        self.ema = None  # the teacher: an exponential moving average of the weights
        if config.unlabelled or config.ema:
            self.ema = make_teacher(model, config.ema_decay)
        self.unlabelled = unlabelled_loader(config, self.steps) if config.unlabelled else None
        self.start_epoch, self.best, self.history, self.partial = 0, -1.0, [], None
        if resume:
            self.opt.load_state_dicts(resume, config.resume)
            if self.ema is not None:
                self.ema.load_state_dict(resume["ema"])
            self.start_epoch, self.best, self.history = resume["epoch"] + 1, resume["best_metric"], resume["history"]
            self.partial = resume.get("partial")
        self.frozen_epochs = _pretrain_epochs(config)
        prior_seconds = resume.get("train_seconds", 0.0) if resume else 0.0
        self.run_start = time.perf_counter() - prior_seconds
        self.snapshots = 1 + int(prior_seconds / (60 * config.snapshot_minutes)) if config.snapshot_minutes else 1
        self.budget = TimeBudget(config.time_limit, time.perf_counter() if started is None else started, fresh=resume is None)
        self.done_steps = 0  # in this call, for stop_after_steps and the budget's timing
        self._wrapped = None  # (frozen, DistributedDataParallel wrapper) under torchrun

    def planned_epochs(self) -> int:
        return min(self.config.epochs, math.ceil(self.opt.scheduler.total_steps / self.steps))

    def epoch_steps(self, epoch: int) -> int:
        """All ``steps``, except in the last epoch of a run shortened by --time-limit."""
        return min(self.steps, self.opt.scheduler.total_steps - epoch * self.steps)

    def label(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.planned_epochs()}"

    def run(self, stop_after_epochs: int | None = None, stop_after_steps: int | None = None) -> Path:
        """Train to the end of the plan (or early stop); returns the run folder. A stop request,
        or ``stop_after_epochs`` / ``stop_after_steps`` of this call, saves last.pt and raises Interrupted."""
        with stop_requests() as stop:
            for epoch in range(self.start_epoch, self.config.epochs):
                if epoch >= self.planned_epochs():
                    break
                sums, train_time = self.train_epoch(epoch, lambda: stop.is_set() or self.done_steps == stop_after_steps)
                self.validate(epoch, sums, train_time)
                asked = stop.is_set() or epoch + 1 - self.start_epoch == stop_after_epochs or self.done_steps == stop_after_steps
                if distributed.any_rank(asked) and epoch + 1 < self.planned_epochs():
                    raise Interrupted(self.run_dir / "last.pt")
                if self.patience_ran_out():
                    break
        if distributed.active():
            _check_replicas(self.opt.model)
        return self.run_dir

    def train_epoch(self, epoch: int, stop_asked) -> tuple[dict, float]:
        """The steps of ``epoch`` (from where a mid-epoch checkpoint left it); returns the
        epoch's running sums and its training seconds. ``stop_asked()`` is checked after each step."""
        config, loader = self.config, self.loaders["train"]
        torch.manual_seed(config.seed * 1000 + epoch)
        loader.generator.manual_seed(config.seed * 1000 + epoch)
        loader.sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "seen": 0, "correct": 0, "bad": 0, "seconds": 0.0, "step": 0} | dict.fromkeys(UNLABELLED_SUMS, 0)
        if self.partial:
            sums = {k: self.partial.get(k, v) for k, v in sums.items()}
            torch.set_rng_state(self.partial["rng"])
            self.partial = None
        loader.sampler.skip = sums["step"] * config.batch_size
        unlabelled = self.unlabelled_batches(epoch, sums["step"])
        net = self.set_phase(frozen=epoch < self.frozen_epochs)
        bar = progress_bar(
            loader, total=self.epoch_steps(epoch), initial=sums["step"], desc=self.label(epoch), unit="batch", leave=False,
            disable=not self.main_rank,
        )  # fmt: skip
        start = time.perf_counter() - sums["seconds"]
        for images, targets, n_bad in bar:
            sums["step"] += 1
            sums["bad"] += n_bad
            pseudo = self.pseudo_batch(next(unlabelled), sums) if unlabelled else None
            if images is not None:
                loss, correct = train_step(net, self.opt, images, targets, config, self.device, self.memory_format, pseudo)
                if self.ema is not None:
                    self.ema.update_parameters(self.opt.model)
                sums["loss"] += loss * len(images)
                sums["seen"] += len(images)
                sums["correct"] += correct
                bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{sums['seen'] / (time.perf_counter() - start):.0f}", refresh=False)
            self.done_steps += 1
            per_step = self.budget.timed_step(self.done_steps)
            if per_step is not None:
                # inference reads an image in about a third of a training step's time
                self.fit_to_deadline(per_step, len(self.loaders["val"].dataset) * per_step / config.batch_size / 3, first=True)
                bar.total = self.epoch_steps(epoch)
                bar.set_description(self.label(epoch), refresh=False)
            self.save_snapshot(epoch)
            if sums["step"] >= self.steps or self.opt.scheduler.last_epoch >= self.opt.scheduler.total_steps:
                break
            if distributed.any_rank(stop_asked()):
                self.save("last.pt", epoch - 1, partial=sums | {"seconds": time.perf_counter() - start, "rng": torch.get_rng_state()})
                raise Interrupted(self.run_dir / "last.pt")
        bar.close()
        return sums, time.perf_counter() - start

    def unlabelled_batches(self, epoch: int, step: int):
        """This epoch's unlabelled batches from step ``step`` on (None without --unlabelled)."""
        if self.unlabelled is None:
            return None
        self.unlabelled.generator.manual_seed(self.config.seed * 1000 + epoch + 1)
        self.unlabelled.sampler.set_epoch(epoch)
        self.unlabelled.sampler.skip = step * self.unlabelled.batch_size
        return iter(self.unlabelled)

    def pseudo_batch(self, batch, sums: dict) -> tuple | None:
        """The strong views of the images where the teacher reads some position confidently,
        with its answers (IGNORE at the positions not to learn); counts the answers' positions
        (characters and end) that passed and, where the unlabelled rows carry labels, how many
        of those were right."""
        weak, strong, labels, bad = batch
        sums["u_bad"] += bad
        if weak is None:
            return None
        weak = weak.to(self.device, memory_format=self.memory_format)
        config = self.config
        classes, learn = pseudo_labels(self.ema, weak, config.threshold, config.label_smoothing, config.gate)
        classes, learn = classes.cpu(), learn.cpu()
        answer = torch.ones_like(learn)  # its characters and the end that follows them
        answer[:, 1:] = classes[:, :-1] != LabelCodec.PAD
        sums["u_seen"] += int(answer.sum())
        sums["u_passed"] += int((learn & answer).sum())
        for row, ok, label in zip(classes, learn & answer, (self.codec.fold(lab or "") for lab in labels)):
            if label and label_problem(label, self.codec.charset, self.codec.max_len) is None:
                sums["u_known"] += int(ok.sum())
                sums["u_right"] += int((row == self.codec.encode(label))[ok].sum())
        keep = learn.any(dim=1)
        return (strong[keep], classes.masked_fill(~learn, IGNORE)[keep]) if keep.any() else None

    def validate(self, epoch: int, sums: dict, train_time: float) -> None:
        """Read the validation split, re-plan the time budget, print and record the epoch's
        row, and save best.pt (when better) and last.pt."""
        validation_start = time.perf_counter()
        predictions, labels, *_ = run_inference(self.opt.model, self.codec, self.loaders["val"], self.config.amp)
        scheduler = self.opt.scheduler
        if self.budget.active and scheduler.last_epoch < scheduler.total_steps:
            self.fit_to_deadline(train_time / sums["step"], time.perf_counter() - validation_start, first=False)
        metrics = sequence_metrics(distributed.gather_lists(predictions), distributed.gather_lists(labels))
        teacher = None
        if self.ema is not None:
            predictions, labels, *_ = run_inference(self.ema.module, self.codec, self.loaders["val"], self.config.amp)
            teacher = sequence_metrics(distributed.gather_lists(predictions), distributed.gather_lists(labels))
        row = _epoch_row(epoch, sums, metrics, train_time, self.opt.scheduler.get_last_lr()[0], teacher)
        self.history.append(row)
        if self.main_rank:
            print(
                f"{self.label(epoch)}  loss {row['train_loss']:.4f}  train acc {row['train_seq_acc']:.2%}  "
                f"val acc {row['val_seq_acc']:.2%}  CER {row['val_cer']:.2%}  {row['img_per_s']:.0f} img/s  bad rows {row['bad_rows']}"
                + ("  (backbone frozen)" if epoch < self.frozen_epochs else "")
                + _semi_supervised_text(row)
            )
        if teacher is not None and teacher["seq_acc"] > max(metrics["seq_acc"], self.best):
            self.best = teacher["seq_acc"]
            self.save("best.pt", epoch, model=self.ema.module.state_dict(), weights="teacher")
        elif metrics["seq_acc"] > self.best:
            self.best = metrics["seq_acc"]
            self.save("best.pt", epoch)
        self.save("last.pt", epoch)
        if self.main_rank:
            write_history(self.run_dir, self.history)

    def patience_ran_out(self) -> bool:
        """--patience: no better validation accuracy for that many epochs (said once)."""
        history = self.history
        since_best = len(history) - 1 - max(range(len(history)), key=lambda i: history[i]["val_seq_acc"])
        if not self.config.patience or since_best < self.config.patience:
            return False
        if self.main_rank:
            print(f"early stop: no better validation accuracy for {since_best} epochs (--patience {self.config.patience})")
        return True

    def set_phase(self, frozen: bool) -> nn.Module:
        """Train mode, except a frozen backbone also keeps its batch-norm statistics (eval mode).

        Returns what the steps call: the model, or under torchrun a DistributedDataParallel
        wrapper for this phase's trainable parameters, built once per phase: a wrapper made
        anew each epoch left the previous one's reducer (autograd hooks, gloo work) to be torn
        down while the next was in use.
        """
        model = self.opt.model
        model.train()
        for module in model.backbone_modules():
            set_requires_grad(module, not frozen)
            module.train(not frozen)
        if not distributed.active():
            return model
        if self._wrapped is None or self._wrapped[0] != frozen:
            self._wrapped = None  # the previous phase's wrapper goes before the next one is built
            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=not self.config.ctc_weight)
            self._wrapped = (frozen, ddp)
        return self._wrapped[1]

    def fit_to_deadline(self, per_step: float, per_validation: float, first: bool) -> None:
        """Re-plan the one-cycle schedule to end by the deadline; say so the ``first`` time and
        whenever the number of epochs changes."""
        config, before = self.config, self.planned_epochs()
        scheduler = self.opt.scheduler
        fit = self.budget.steps_that_fit(scheduler.last_epoch, per_step, per_validation, self.steps)
        self.opt.scheduler = replan(config, self.opt.optimizer, scheduler, distributed.broadcast(min(config.epochs * self.steps, fit)))
        if self.main_rank and (first or self.planned_epochs() != before):
            tqdm.write(
                f"--time-limit {config.time_limit:g}: at {per_step:.3f} s per step and {per_validation:.0f} s per validation, "
                f"{self.opt.scheduler.total_steps} of the {config.epochs * self.steps} planned steps fit ({self.planned_epochs()} epochs); "
                "the one-cycle schedule ends there (--time-limit 0: no limit)"
            )

    def save_snapshot(self, epoch: int) -> None:
        """--snapshot-minutes: minutes-<m>.pt each time that much training time has passed."""
        minutes = self.config.snapshot_minutes
        if minutes and time.perf_counter() - self.run_start >= self.snapshots * 60 * minutes:
            self.save(f"minutes-{self.snapshots * minutes:g}.pt", epoch - 1)
            self.snapshots += 1

    def save(self, name: str, epoch: int, **extra) -> None:
        """Checkpoint ``name`` in the run folder (rank 0 only); ``epoch`` is the last one completed."""
        if not self.main_rank:
            return
        state = self.opt.state_dicts() | {
            "config": asdict(self.config) | {"resume": ""},
            "charset": self.config.model.charset,
            "epoch": epoch,
            "history": list(self.history),
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "train_seconds": time.perf_counter() - self.run_start,
            "best_metric": self.best,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        save_checkpoint(self.run_dir / name, **(state | extra))


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
    """
    return Trainer(config, loaders, started).run(stop_after_epochs, stop_after_steps)


UNLABELLED_SUMS = ("u_seen", "u_passed", "u_known", "u_right", "u_bad")


def _epoch_row(epoch: int, sums: dict, metrics: dict, train_time: float, lr: float, teacher: dict | None = None) -> dict:
    """metrics.csv's row for ``epoch`` (0-based): the training sums of every process, and the
    validation ``metrics`` (from sequence_metrics) of the whole split, and of the teacher's."""
    loss_sum, seen, correct, bad = distributed.sum_all([sums["loss"], sums["seen"], sums["correct"], sums["bad"]])
    u_seen, u_passed, u_known, u_right, u_bad = distributed.sum_all([sums[k] for k in UNLABELLED_SUMS])
    extra = {}
    if teacher is not None:
        extra["teacher_val_seq_acc"] = round(teacher["seq_acc"], 5)
    if u_seen:
        extra |= {"unlabelled_passed": round(u_passed / u_seen, 5), "unlabelled_bad": int(u_bad)}
        extra["pseudo_label_acc"] = round(u_right / u_known, 5) if u_known else None
    return {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / max(1, seen), 5),
        "train_seq_acc": round(correct / max(1, seen), 5),
        "val_seq_acc": round(metrics["seq_acc"], 5),
        "val_cer": round(metrics["cer"], 5),
        "img_per_s": round(seen / train_time, 1),
        "bad_rows": int(bad),
        "lr": round(lr, 7),
    } | extra


def _semi_supervised_text(row: dict) -> str:
    """The epoch line's teacher and unlabelled figures, where the run has them."""
    text = f"  teacher val acc {row['teacher_val_seq_acc']:.2%}" if "teacher_val_seq_acc" in row else ""
    if "unlabelled_passed" in row:
        text += f"  unlabelled positions passed {row['unlabelled_passed']:.1%}"
        if row["pseudo_label_acc"] is not None:
            text += f" ({row['pseudo_label_acc']:.1%} right)"
    return text


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
