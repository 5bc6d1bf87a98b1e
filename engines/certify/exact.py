"""The exact minimum adversarial distortion of a model whose logits are affine, z = W·x + b.

For an image x and a target t, the smallest ‖r‖₂ with x + r in [0, 1]ⁿ and (w_t − w_j)·(x + r) + b_t − b_j ≥ 0
for every j ≠ t is a convex QP: min ½‖z − x‖² s.t. A z + c ≥ 0, 0 ≤ z ≤ 1. Its Lagrange dual has one
variable per constraint (K − 1 of them), λ ≥ 0, with z(λ) = clip(x + Aᵀλ, 0, 1) and
g(λ) = ½‖z(λ) − x‖² − λ·(A z(λ) + c), concave and differentiable (∇g = −(A z(λ) + c)). scipy's L-BFGS-B
maximises the sum of the duals of a batch of problems (they are independent). Any λ ≥ 0 gives a certified
lower bound √(2 g(λ)); z(λ) gives the primal value, and the two agree to the reported gap when the problem is
solved. The untargeted minimum is the smallest over targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import fmin_l_bfgs_b

PROBLEMS_PER_SOLVE = 512


@dataclass
class ExactMinimum:
    """Per problem: the certified lower bound √(2g) (the reported minimum), the primal distance ‖z(λ) − x‖,
    its worst constraint violation, and the minimiser z(λ)."""

    lower: torch.Tensor
    primal: torch.Tensor
    violation: torch.Tensor
    z: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """Relative duality gap (primal − lower) / primal (0 where both are 0)."""
        return ((self.primal - self.lower) / self.primal.clamp(min=1e-300)).where(self.primal > 0, 0.0)


def target_constraints(
    weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, c) per problem: rows w_t − w_j, offsets b_t − b_j for every j ≠ t ((P, K − 1, n), (P, K − 1))."""
    k = weight.shape[0]
    others = torch.stack([torch.tensor([j for j in range(k) if j != int(t)]) for t in target])
    a = weight[target][:, None, :] - weight[others]
    c = bias[target][:, None] - bias[others]
    return a, c


def solve_targets(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, target: torch.Tensor, tol: float = 1e-10
) -> ExactMinimum:
    """The exact minimum for each (image, target) pair: x (P, n) flat in [0, 1], target (P,)."""
    weight, bias = weight.to(torch.float64).cpu(), bias.to(torch.float64).cpu()
    x = x.reshape(x.shape[0], -1).to(torch.float64).cpu()
    parts = []
    for i in range(0, x.shape[0], PROBLEMS_PER_SOLVE):
        a, c = target_constraints(weight, bias, target[i : i + PROBLEMS_PER_SOLVE].cpu())
        parts.append(_solve_batch(a, c, x[i : i + PROBLEMS_PER_SOLVE], tol))
    return ExactMinimum(*(torch.cat([getattr(p, f) for p in parts]) for f in ("lower", "primal", "violation", "z")))


def _dual(a: torch.Tensor, c: torch.Tensor, x: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
    z = (x + torch.einsum("pmn,pm->pn", a, lam)).clamp(0, 1)
    slack = torch.einsum("pmn,pn->pm", a, z) + c
    g = 0.5 * (z - x).square().sum(-1) - (lam * slack).sum(-1)
    return g, slack, z


def _solve_batch(a: torch.Tensor, c: torch.Tensor, x: torch.Tensor, tol: float) -> ExactMinimum:
    p, m = c.shape

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        lam = torch.from_numpy(v).view(p, m)
        g, slack, _ = _dual(a, c, x, lam)
        return -float(g.sum()), slack.reshape(-1).numpy().copy()

    start = np.zeros(p * m)
    v, _, _ = fmin_l_bfgs_b(objective, start, bounds=[(0, None)] * (p * m), m=20, factr=10, pgtol=tol, maxiter=20000)
    lam = torch.from_numpy(v).view(p, m)
    g, slack, z = _dual(a, c, x, lam)
    # the region of a target may be empty inside the box: the dual is then unbounded (g grows past n/2)
    empty = g > 0.5 * x.shape[1]
    lower = torch.where(empty, math.inf, g.clamp(min=0).mul(2).sqrt())
    primal = torch.where(empty, math.inf, (z - x).norm(dim=-1))
    violation = (-slack).clamp(min=0).amax(-1)
    return ExactMinimum(lower, primal, violation, z)


def exact_untargeted(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the exact minimum over every wrong target (0 where the model already errs), the closest
    target, and the worst relative duality gap over the image's targets."""
    k = weight.shape[0]
    b = x.shape[0]
    image = torch.arange(b).repeat_interleave(k - 1)
    target = (labels.cpu().repeat_interleave(k - 1) + torch.arange(1, k).repeat(b)) % k
    flat = x.reshape(b, -1)
    res = solve_targets(weight, bias, flat[image], target)
    lower = res.lower.view(b, k - 1)
    best, which = lower.min(1)
    gap = res.gap.view(b, k - 1).gather(1, which[:, None]).squeeze(1)
    logits = flat.to(torch.float64) @ weight.to(torch.float64).cpu().T + bias.to(torch.float64).cpu()
    wrong = logits.argmax(1) != labels.cpu()
    best = torch.where(wrong, 0.0, best)
    return best, target.view(b, k - 1).gather(1, which[:, None]).squeeze(1), gap
