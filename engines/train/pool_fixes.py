"""Fixes of §4.2's pool (issue 24), each a named option of `AdversarialSettings`.

- `target = "nearest"`: each example is attacked toward the wrong class nearest to the point by the linearised
  distance max(−m_j, 0) / ‖∇m_j‖, with m_j = z_j − z_y the logit margin of class j (a class already ahead of the
  true one is at distance 0), instead of an arbitrary (random) class;
- `cap` (rms of the perturbation, in the layer's own units): an example farther from its clean point is dropped
  (`cap_policy = "drop"`: the slot keeps its old example) or shrunk onto the cap along its own direction
  (`"shrink"`: the point stays inside the layer's box, which is convex and holds both ends).
"""

from __future__ import annotations

import torch
from torch import nn

CAP_POLICIES = ("drop", "shrink")


def nearest_targets(model: nn.Module, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each point, the wrong class with the smallest linearised distance from it (see the module's note)."""
    h = points.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(h)
        classes = logits.shape[1]
        true = logits.gather(1, labels[:, None].to(logits.device)).squeeze(1)
        distances = []
        for j in range(classes):
            margin = logits[:, j] - true
            (grad,) = torch.autograd.grad(margin.sum(), h, retain_graph=j < classes - 1)
            norm = grad.flatten(1).norm(dim=1)
            distances.append((-margin.detach()).clamp(min=0) / norm.clamp(min=1e-12))
    dist = torch.stack(distances, 1)
    dist.scatter_(1, labels[:, None].to(dist.device), float("inf"))  # never the true class
    return dist.argmin(1).cpu()


def rms_distance(examples: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per example, the root-mean-square of its perturbation: the cap's unit (one value per layer unit)."""
    return (examples - clean).flatten(1).pow(2).mean(1).sqrt()


def cap_examples(
    clean: torch.Tensor, examples: torch.Tensor, success: torch.Tensor, cap: float, policy: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(the examples within `cap`, which are still kept, how many successes were above it): above the cap an example
    is dropped or shrunk onto it."""
    rms = rms_distance(examples, clean)
    over = rms > cap
    capped = int((over & success).sum())
    if policy == "drop":
        return examples, success & ~over, capped
    # a hair inside the cap, so that float rounding never leaves a shrunk example above it
    scale = torch.where(over, cap * (1 - 1e-5) / rms.clamp(min=1e-30), torch.ones_like(rms))
    shrunk = clean + (examples - clean) * scale.view(-1, *[1] * (clean.ndim - 1))
    return shrunk, success, capped
