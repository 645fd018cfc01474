"""Device choice: CUDA when present, CPU otherwise; an explicit choice wins."""

from __future__ import annotations

import torch

from ..errors import CodeclensError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CodeclensError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CodeclensError(f"device '{device}' asked for but CUDA is not available")
    return dev
