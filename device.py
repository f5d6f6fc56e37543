"""The device helper and the mixed-precision helpers."""

import contextlib

import torch


def get_device(name: str = "auto") -> torch.device:
    """The named device; "auto" picks cuda, then mps, then cpu. On CUDA it also turns on
    cuDNN's kernel autotuning, which pays off because every batch has the same input shape."""
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
