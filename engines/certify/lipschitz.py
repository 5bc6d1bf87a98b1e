"""A certified lower bound on the minimum adversarial distortion, from the frame-bound engine (§4.3).

If the logits map f is L-Lipschitz (ℓ2 → ℓ2), a perturbation r changes each logit difference z_y − z_j by at
most ‖e_y − e_j‖·‖f(x + r) − f(x)‖ ≤ √2·L‖r‖. No label change is therefore possible while
√2·L‖r‖ < margin = z_y − max_{j≠y} z_j: every adversarial example of a correctly classified x lies at ℓ2
distance at least margin / (√2·L). L is the product of the layer bounds the frame-bound engine guarantees
(layers as they run, sigmoid's 1/4 and the other exact factors between them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from engines.bounds.network import frame_bounds
from engines.core.errors import ModelError
from engines.core.evaluate import logits


def lipschitz_constant(model: nn.Module, input_shape: Sequence[int]) -> float:
    """A guaranteed ℓ2 Lipschitz constant of the model's logits, or a ModelError saying why there is none."""
    bounds = frame_bounds(model, input_shape, device="cpu", dtype=torch.float64)
    if bounds.lipschitz_upper is None:
        raise ModelError(f"no certified bound for this model: {bounds.lipschitz_note}")
    return float(bounds.lipschitz_upper)


def logit_margins(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per image (negative where the model is wrong)."""
    z = logits(model, x, next(model.parameters()).device).double()
    y = labels.cpu()
    return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], -math.inf).amax(1)


def certified_radius(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """Per image, the ℓ2 radius inside which no label change is possible (0 where the model is already wrong)."""
    return (logit_margins(model, x, labels) / (math.sqrt(2.0) * lipschitz)).clamp(min=0.0)
