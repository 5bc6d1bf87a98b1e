"""`--device auto|cpu|cuda` resolved once, the same way for every command."""

from __future__ import annotations

import torch

from engines.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """auto = cuda when present else cpu; asking for cuda without one is a user error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA device is available (use --device cpu or auto)")
        return torch.device(name)
    raise InputError(f"unknown device {name!r}: use auto, cpu or cuda")
