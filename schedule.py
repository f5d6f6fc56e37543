"""The optimizer, its one-cycle learning-rate schedule, and the --time-limit plan that fits
the schedule to the time a run has left."""

import math
from itertools import count

import torch
from torch import nn

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


def steps_that_fit(done: int, seconds_left: float, per_step: float, per_validation: float, steps_per_epoch: int) -> int:
    """The largest total step count whose steps after ``done``, with the validation pass
    that ends each epoch they reach, take at most ``seconds_left``; ``done`` when none fit."""
    epochs_done = done // steps_per_epoch
    for validations in count(1):
        total = done + int((seconds_left - validations * per_validation) / per_step)
        if total <= done:
            return done
        if math.ceil(total / steps_per_epoch) - epochs_done <= validations:
            return total


def replan(config: Config, optimizer: torch.optim.Optimizer, scheduler, total_steps: int):
    """``scheduler`` when it already plans ``total_steps``, else a one-cycle schedule over
    ``total_steps`` advanced to where ``scheduler`` is."""
    if total_steps == scheduler.total_steps:
        return scheduler
    return one_cycle(optimizer, config, total_steps, scheduler.last_epoch)
