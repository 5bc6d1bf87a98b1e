"""How much memory there is, and how much one image costs a model: the inputs of batch sizing."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def available_memory() -> int:
    """Bytes of RAM other processes leave free (MemAvailable), or a conservative 4 GiB when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def activation_floats(model: nn.Module, x: torch.Tensor, device: torch.device | str) -> int:
    """Floats the model's layers output for one image: what a backward pass keeps alive per image."""
    total = 0

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out[0].numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1].to(device))
    finally:
        for h in handles:
            h.remove()
    return total


def eval_batch(x: torch.Tensor, cap: int = 4096) -> int:
    """Images per inference batch: thousands of MNIST digits, about a hundred ImageNet-sized images
    (16 M input floats: the activations of a large network stay within a few GB)."""
    per_image = max(1, int(x[0].numel())) if len(x) else 1
    return max(1, min(cap, (16 << 20) // per_image))
