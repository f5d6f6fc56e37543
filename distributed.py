"""Data-parallel training under torchrun, switched on by its environment variables.

    torchrun --standalone --nproc_per_node=2 main.py ...

Plain ``python main.py`` never initialises a process group: every helper here then
answers as a single process would.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def setup() -> None:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) when RANK/WORLD_SIZE are set."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the one process that prints, plots and writes checkpoints."""
    return rank() == 0


def broadcast(value):
    """Rank 0's ``value`` (any picklable object), on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_lists(items: list) -> list:
    """Every rank's ``items`` concatenated in rank order, on every rank."""
    if not active():
        return items
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def sum_all(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not active():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop together)."""
    return sum_all([float(flag)])[0] > 0 if active() else flag


@contextmanager
def main_rank_first():
    """Rank 0 runs the block first (say, writing files the others then read), then the rest."""
    if active() and not is_main():
        dist.barrier()
    yield
    if active() and is_main():
        dist.barrier()
