"""Batched inference: the one place that runs a model over many images without gradients.

Images go to the model in slices that fit memory (`eval_batch`) and come back on the CPU; every reduction
(argmax, argmin) runs on the model's device, slice by slice, so the answer does not depend on where it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from engines.core.memory import eval_batch


def logit_slices(
    model: nn.Module, x: torch.Tensor, device: torch.device | str, batch: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first index, logits on `device`) of each slice of `x`, for a caller that may stop early."""
    step = batch or eval_batch(x)
    for start in range(0, len(x), step):
        with torch.no_grad():
            out = model(x[start : start + step].to(device))
        yield start, out


def _per_slice(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device | str,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    batch: int | None,
) -> torch.Tensor:
    parts = [reduce(z).cpu() for _, z in logit_slices(model, x, device, batch)]
    if not parts:  # no images: the model's answer to an empty batch keeps the shape and dtype
        with torch.no_grad():
            return reduce(model(x[:0].to(device))).cpu()
    return torch.cat(parts)


def logits(model: nn.Module, x: torch.Tensor, device: torch.device | str, batch: int | None = None) -> torch.Tensor:
    """The model's outputs for `x`, (N, classes), on the CPU."""
    return _per_slice(model, x, device, lambda z: z, batch)


def predict(model: nn.Module, x: torch.Tensor, device: torch.device | str, batch: int | None = None) -> torch.Tensor:
    """Predicted classes of `x` (on the CPU)."""
    return _per_slice(model, x, device, lambda z: z.argmax(1), batch)


def least_likely(
    model: nn.Module, x: torch.Tensor, device: torch.device | str, batch: int | None = None
) -> torch.Tensor:
    """The class each image is least likely to be (the lowest logit), on the CPU: the hardest target."""
    return _per_slice(model, x, device, lambda z: z.argmin(1), batch)


def count_wrong(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, device: torch.device | str, batch: int | None = None
) -> int:
    """How many images of `x` the model does not classify as `labels`."""
    if len(x) == 0:
        return 0
    return int((predict(model, x, device, batch) != labels.cpu()).sum())


def error_rate(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    batch: int | None = None,
) -> float:
    """Percent of the images the model misclassifies (0 for no images)."""
    return 100.0 * count_wrong(model, x, labels, device, batch) / max(len(x), 1)
