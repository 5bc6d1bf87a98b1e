"""Target labels for targeted attacks: random, next, least-likely, a fixed label, or all wrong labels."""

from __future__ import annotations

import torch
from torch import nn

from engines.core.choices import TARGETS
from engines.core.errors import InputError
from engines.core.evaluate import least_likely


def parse_target(mode: str, classes: int) -> str | int:
    """Validate `--target`: one of TARGETS or an integer label in [0, classes)."""
    if mode in TARGETS:
        return mode
    try:
        label = int(mode)
    except ValueError:
        raise InputError(
            f"unknown target {mode!r}: use random, next, least-likely, all or a label 0..{classes - 1}"
        ) from None
    if not 0 <= label < classes:
        raise InputError(f"target label {label} is out of range: the model has {classes} classes (0..{classes - 1})")
    return label


def choose_targets(
    mode: str | int,
    labels: torch.Tensor,
    classes: int,
    seed: int = 0,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """One target per image (never the true label for random/next/least-likely).

    Random targets come from a generator seeded with `seed` over the whole image list, so the
    same seed gives the same targets however the work is chunked. `all` is expanded by
    `expand_all_targets`, not here.
    """
    n = labels.shape[0]
    if mode == "random":
        gen = torch.Generator().manual_seed(seed)
        offsets = torch.randint(1, classes, (n,), generator=gen)
        return (labels.cpu() + offsets) % classes
    if mode == "next":
        return (labels.cpu() + 1) % classes
    if mode == "least-likely":
        if model is None or images is None:
            raise InputError("least-likely targets need the model and the images")
        return least_likely(model, images, next(model.parameters()).device)
    if isinstance(mode, int):
        return torch.full((n,), mode, dtype=torch.long)
    raise InputError(f"target mode {mode!r} has no single target per image")


def expand_all_targets(labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For `--target all`: (image index, target) for every wrong label of every image."""
    n = labels.shape[0]
    image = torch.arange(n).repeat_interleave(classes - 1)
    offsets = torch.arange(1, classes).repeat(n)
    target = (labels.cpu().repeat_interleave(classes - 1) + offsets) % classes
    return image, target
