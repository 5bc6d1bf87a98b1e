"""`--device auto|cpu|cuda` resolved once, the same way for every command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero on the CPU while inside.

    Saturated sigmoids and tiny softmax gradients produce denormals, and CPU arithmetic on them
    is an order of magnitude slower (measured: 16 ms -> 2.7 ms for one forward/backward of
    n100-100-10 on 100 images). The change in results is below float32 resolution.
    """
    changed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)
