"""Where training time goes: main.py's training loop against a bare PyTorch loop on the same
model, batch and input size, and the DataLoader alone.

    python bench/bench_training_loop.py --steps 200
    python bench/bench_training_loop.py --steps 300 --amp --batch-size 256   # on a GPU

On the same generated captchas, with the default Config (model, batch, input size, workers):
  bare loop      one batch decoded once and kept in memory; forward, loss, backward, AdamW
                 (float32, and with the autocast dtype --amp uses: bfloat16 on CPUs and recent GPUs)
  train_step     train_model's own step function on that in-memory batch: the bare loop
                 plus gradient clipping, the one-cycle schedule and counting right answers
  train_model    what main.py runs: load_data's DataLoader, one-cycle schedule, progress bar,
                 accounting; images/s from its epoch line (validation not included)
  DataLoader     the training loader alone (decode, preprocess, collate), with the default
                 workers and with one worker; and with one worker and augmentation on
With --amp, train_step and train_model are compared with the autocast bare loop.
Targets: train_model at least 90% of the bare loop; the DataLoader at least 5x
train_model's images/s and at least 1,000 images/s per worker.
"""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from common import device_name, machine

from config import HelpFormatter

WARMUP_STEPS = 5  # untimed: CUDA's lazy initialisation and kernel selection happen here
SINGLE_WORKER_IMAGES = 8192  # enough for a per-worker rate; at batch 256 the augmented loop took 2 minutes


def timed_steps(step, steps: int, device) -> float:
    """Seconds for ``steps`` calls of ``step()`` after WARMUP_STEPS untimed calls, the device
    synchronised at both ends."""
    import torch

    for _ in range(WARMUP_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bare_loop(config, images, targets, steps: int, amp: bool = False) -> float:
    """Images/s of forward + loss + backward + AdamW step on one in-memory batch on the
    config's device (with ``amp``: the autocast dtype main.py --amp uses there)."""
    import torch

    from device import autocast, get_device
    from model import CNNModel
    from train import recognition_loss
    from utils import seed_everything

    seed_everything(config.seed)
    device = get_device(config.device)
    model = CNNModel(config.model).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images, targets = images.to(device, memory_format=torch.channels_last), targets.to(device)

    def step():
        with autocast(device, amp):
            logits, ctc_logits = model(images, with_ctc=True)
        loss = recognition_loss(logits.float(), ctc_logits.float(), targets, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return steps * len(images) / timed_steps(step, steps, device)


def step_loop(config, images, targets, steps: int) -> float:
    """Images/s of train.train_step (what train_model runs per batch) on one in-memory batch."""
    import torch

    from device import get_device, grad_scaler
    from model import CNNModel
    from schedule import optimizer_and_schedule
    from train import Optimisation, train_step
    from utils import seed_everything

    seed_everything(config.seed)
    device = get_device(config.device)
    model = CNNModel(config.model).to(device, memory_format=torch.channels_last).train()
    opt = Optimisation(model, *optimizer_and_schedule(model, config, WARMUP_STEPS + steps), grad_scaler(device, config.amp))
    images, targets = images.to(device), targets.to(device)
    seconds = timed_steps(lambda: train_step(model, opt, images, targets, config, device, torch.channels_last), steps, device)
    return steps * len(images) / seconds


def loader_alone(loader, batches: int) -> float:
    """Images/s of iterating ``loader`` for ``batches`` batches, worker start-up included."""
    start, seen = time.perf_counter(), 0
    for i, (images, _, _) in enumerate(loader):
        seen += len(images)
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps measured in each loop")
    p.add_argument("--rows", type=int, default=0, help="captchas generated (default: enough for the steps)")
    p.add_argument("--batch-size", type=int, default=0, help="batch size (0: the default Config's)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: the default Config's)")
    p.add_argument("--amp", action="store_true", help="train_step and train_model with mixed precision (main.py --amp)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", default="", help="also write the figures (images/s) to this JSON file")
    a = p.parse_args()
    from captcha_generator import generate_captcha_data
    from checkpoints import load_checkpoint
    from codec import LabelCodec
    from config import Config
    from data_loader import load_data
    from train import train_model

    with tempfile.TemporaryDirectory() as tmp:
        # augmentation off, as in the default run (its 45,000 training rows are above the
        # "auto" threshold); the bench set is smaller, so "auto" would switch it on
        config = Config(out_dir=tmp, run_name="bench", epochs=1, max_steps=a.steps, augment="off", amp=a.amp, device=a.device)
        if a.batch_size:
            config = dataclasses.replace(config, batch_size=a.batch_size)
        if a.workers:
            config = dataclasses.replace(config, workers=a.workers)
        rows = a.rows or int(a.steps * config.batch_size / 0.85) + 200
        data = generate_captcha_data(rows, Path(tmp) / "bench.parquet", seed=5)
        config = dataclasses.replace(config, data=[str(data)])
        codec = LabelCodec(config.model.charset, config.model.max_len)
        loaders = load_data(config, codec)
        images, targets, _ = next(iter(loaders["train"]))
        bare = bare_loop(config, images, targets, a.steps)
        bf16 = bare_loop(config, images, targets, a.steps, amp=True)
        stepped = step_loop(config, images, targets, a.steps)
        history = load_checkpoint(train_model(config, loaders) / "last.pt")["history"]
        trained = history[0]["img_per_s"]
        batches = min(a.steps, len(loaders["train"]))
        feed = loader_alone(load_data(config, codec)["train"], batches)
        single = min(batches, max(1, SINGLE_WORKER_IMAGES // config.batch_size))
        one = loader_alone(load_data(dataclasses.replace(config, workers=1), codec)["train"], single)
        augmented = loader_alone(load_data(dataclasses.replace(config, workers=1, augment="on"), codec)["train"], single)
    print(f"machine: {machine()}")
    print(f"device: {device_name(config.device)}, train_step and train_model {'with' if config.amp else 'without'} --amp")
    m = config.model
    print(f"model {m.variant} stages {m.stages}, input {m.img_height}x{m.img_width}, batch {config.batch_size}")
    print(f"| loop | images/s | ratio |\n|---|---|---|\n| bare PyTorch loop, in-memory batch | {bare:.0f} | 1.00 |")
    print(f"| bare PyTorch loop, autocast (--amp) | {bf16:.0f} | {bf16 / bare:.2f} |")
    same = bf16 if config.amp else bare
    precision = "the autocast bare loop" if config.amp else "bare"
    print(f"| train_step on the in-memory batch (+ clipping, schedule, counting) | {stepped:.0f} | {stepped / same:.2f} of {precision} |")
    ratios = f"{trained / same:.2f} of {precision}, {trained / stepped:.2f} of train_step"
    print(f"| train_model (main.py), {config.workers} workers | {trained:.0f} | {ratios} |")
    print(f"| DataLoader alone, {config.workers} workers | {feed:.0f} | {feed / trained:.1f}x train_model |")
    print(f"| DataLoader alone, 1 worker | {one:.0f} | per worker |")
    print(f"| DataLoader alone, 1 worker, augmentation on (default below 20,000 rows) | {augmented:.0f} | per worker |")
    if a.json:
        figures = {"bare": bare, "amp": bf16, "train_step": stepped, "train_model": trained, "loader": feed, "loader_1_worker": one}
        Path(a.json).write_text(json.dumps({"machine": machine(), "config": dataclasses.asdict(config), "images_per_s": figures}, indent=1))


if __name__ == "__main__":
    main()
