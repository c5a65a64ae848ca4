"""Device choice and mixed precision: bf16 autocast on CUDA, fp32 on CPU, one code path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mmclinic.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; asking for CUDA without one is a ConfigError."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("config.device_unavailable", "CUDA was requested but no CUDA device is available")
        return torch.device(device)
    raise ConfigError("config.bad_device", f"device must be auto, cpu or cuda, got {device!r}")


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; a no-op on CPU, where fp32 keeps outputs bit-reproducible."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        yield


def device_label(device: torch.device) -> str:
    """Human/provenance label, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100)``."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    return "cpu"
