"""The optimizer, its one-cycle learning-rate schedule, and the --train-minutes time budget
that may shorten the schedule once the first steps are timed."""

import math

import torch
from torch import nn
from tqdm import tqdm

import distributed
from config import Config


def optimizer_and_schedule(model: nn.Module, config: Config, total_steps: int):
    """AdamW at ``config.lr`` / ``config.weight_decay`` and its one-cycle schedule over ``total_steps``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, one_cycle(optimizer, config, total_steps)


def one_cycle(optimizer: torch.optim.Optimizer, config: Config, total_steps: int, done_steps: int = 0):
    """The one-cycle schedule of ``optimizer`` over ``total_steps``, advanced to ``done_steps``
    (learning rate and momentum set as they are there)."""
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total_steps, pct_start=0.15)
    for _ in range(done_steps):
        scheduler.step()
    return scheduler


def fit_time_budget(config: Config, optimizer: torch.optim.Optimizer, scheduler, seconds_per_step: float, steps_per_epoch: int):
    """The schedule to go on with: ``scheduler`` when ``config.train_minutes`` of steps at
    ``seconds_per_step`` hold all the steps it plans, else a one-cycle schedule over the
    steps that do fit, advanced to where ``scheduler`` is (and a note saying so)."""
    done, planned = scheduler.last_epoch, scheduler.total_steps
    total = max(done + 1, min(planned, int(60 * config.train_minutes / seconds_per_step)))
    if total == planned:
        return scheduler
    if distributed.is_main():
        tqdm.write(
            f"--train-minutes {config.train_minutes:g}: at {seconds_per_step:.3f} s per step, {total} of the {planned} planned "
            f"steps fit ({math.ceil(total / steps_per_epoch)} epochs); the one-cycle schedule now ends there (--train-minutes 0: no budget)"
        )
    return one_cycle(optimizer, config, total, done)
