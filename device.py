"""The device helper and the autocast helper."""

import contextlib

import torch


def get_device(name: str = "auto") -> torch.device:
    """The named device; "auto" picks cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when enabled, else a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
