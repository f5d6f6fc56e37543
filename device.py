"""The device helper, the memory allocator's settings and the mixed-precision helpers."""

import contextlib
import ctypes

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Have the C library's malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc gives each allocation above a threshold (128 KiB, then the size of the
    largest block freed so far) its own fresh mapping, unmaps it when freed, and trims the
    heap's free top above 128 KiB: the activations of every forward and backward pass are
    then page-faulted and zeroed anew. Served from the heap (up to 32 MiB, glibc's maximum)
    and kept (up to 1 GiB), they gave this project's 2-core CPU ~9% more training images/s
    in main.py (1.2x in a bare training step) and 1.6x in the model's inference
    (bench/RESULTS.md). Only the process's future allocations are affected; a no-op where
    the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # not glibc/musl (macOS, Windows)
        return
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    mallopt(M_TRIM_THRESHOLD, 2**30)


def get_device(name: str | torch.device = "auto") -> torch.device:
    """The named device; "auto" picks cuda, then mps, then cpu. It also prepares the process
    for it: keep_freed_memory() and, on CUDA, cuDNN's kernel autotuning, which pays off
    because every batch has the same input shape."""
    keep_freed_memory()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where ``device`` computes in it (CPUs, CUDA cards from Ampere on), else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """Mixed-precision autocast on ``device`` (amp_dtype) when enabled, else a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for float16 autocast (bfloat16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=enabled and amp_dtype(device) == torch.float16)
