"""The §4.1 objective, c·D(r) + loss_f(x + r, l), per problem: value and gradient from one forward/backward
pass, the closest success recorded at every evaluation, and the padded model batches that make every row's
arithmetic independent of the batch it is in."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _distance(r: torch.Tensor, kind: str) -> torch.Tensor:
    sq = r.pow(2).sum(1)
    # ‖r‖₂ is not differentiable at r = 0; a tiny smoothing keeps the gradient finite there
    return sq if kind == "l2sq" else (sq + 1e-12).sqrt()


ROW_BLOCK = 64  # rows per padded model evaluation (see `padded_forward`), for small images
PADDED_FLOATS = 1 << 20  # at most this many input floats of padding per block: 64 MNIST digits, 4 ImageNet images


class _Objective:
    """c·D(x′ − x) + CE(f(x′), l) per problem, recording the best success at every evaluation."""

    def __init__(
        self,
        model: nn.Module,
        shape: tuple[int, ...],
        x: torch.Tensor,
        target: torch.Tensor,
        distance: str,
        margin: float = 0.0,
        temperature: float = 1.0,
    ) -> None:
        self.model, self.shape, self.x, self.target, self.distance = model, shape, x, target, distance
        self.margin = margin
        self.temperature = temperature
        self.c = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        self.best_sq = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
        self.best_x = x.clone()
        # per problem: forward+backward passes (the objective) and forward-only passes (verdicts)
        self.gradient_evals = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.forward_evals = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        # each problem's last evaluated point and its verdict: the c search's verdict on a run's final
        # point (nearly always the last one evaluated) then needs no forward pass of its own
        self.last_x = x.clone()
        self.last_reach = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.last_known = torch.zeros_like(self.last_reach)

    def __call__(self, xp: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.gradient_evals[rows] += 1
        xp = xp.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = padded_forward(self.model, xp.view(-1, *self.shape))
            r = xp - self.x[rows]
            value = self.c[rows] * _distance(r, self.distance) + target_loss(
                logits, self.target[rows], self.temperature
            )
            (grad,) = torch.autograd.grad(value.sum(), xp)
        with torch.no_grad():
            sq = r.detach().pow(2).sum(1)
            reach = self.reaches_target(logits.detach(), self.target[rows])
            self.last_x[rows], self.last_reach[rows], self.last_known[rows] = xp.detach(), reach, True
            better = reach & (sq < self.best_sq[rows])
            self.best_sq[rows] = torch.where(better, sq, self.best_sq[rows])
            self.best_x[rows] = torch.where(better[:, None], xp.detach(), self.best_x[rows])
        return value.detach(), grad

    def reaches_target(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """f(x′) = l with the target's logit ahead of every other by `margin`, so that the verdict
        does not flip when the same image is evaluated again in a batch of another size."""
        others = logits.scatter(1, target[:, None], -math.inf).amax(1)
        return logits.gather(1, target[:, None]).squeeze(1) > others + self.margin

    def verdict(self, xp: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Whether the points `xp` of problems `rows` reach their targets: known when a point is the one
        its problem evaluated last, else one forward pass."""
        known = self.last_known[rows] & (self.last_x[rows] == xp).all(1)
        hit = self.last_reach[rows] & known
        miss = (~known).nonzero().squeeze(1)
        if miss.numel():
            self.forward_evals[rows[miss]] += 1
            with torch.no_grad():
                logits = padded_forward(self.model, xp[miss].view(-1, *self.shape))
            hit[miss] = self.reaches_target(logits, self.target[rows[miss]])
        return hit

    def margin_and_gradient(self, xp: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_o − z_t (o: the runner-up to the target) and ‖∇(z_t − z_o)‖ per row: one forward+backward."""
        self.gradient_evals[rows] += 1
        xp = xp.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = padded_forward(self.model, xp.view(-1, *self.shape))
            t = self.target[rows]
            z_t = logits.gather(1, t[:, None]).squeeze(1)
            runner_up = logits.detach().scatter(1, t[:, None], -math.inf).argmax(1)
            gap = logits.gather(1, runner_up[:, None]).squeeze(1) - z_t
            (grad,) = torch.autograd.grad(gap.sum(), xp)
        return gap.detach(), grad.flatten(1).norm(dim=1)


def target_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ·CE(z/τ, t) = τ·softplus((LSE_τ of the other logits − z_t)/τ): at τ = 1 the cross-entropy of the
    target; as τ → 0 the hinge on the margin max_j z_j − z_t, whose level set where the target wins is the
    decision boundary itself. Computed through the cross-entropy kernel, whose rows do not depend on the
    batch (a logsumexp over the other logits differed in the last bits between batch sizes)."""
    if temperature == 1.0:
        return F.cross_entropy(logits, target, reduction="none")
    return temperature * F.cross_entropy(logits / temperature, target, reduction="none")


def row_block(image_numel: int) -> int:
    """Rows per padded block: 64 for MNIST- and CIFAR-sized images, fewer (a power of two) for large ones, so
    that padding two ImageNet images does not cost the forward pass of 64 (a function of the image size only,
    so a run's results still do not depend on its batch size)."""
    block = ROW_BLOCK
    while block > 1 and block * image_numel > PADDED_FLOATS:
        block //= 2
    return block


def padded_forward(model: nn.Module, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """The model on `x` with the batch padded to a multiple of `block` rows.

    Matrix kernels pick their blocking by the number of rows, so one image's logits (and gradient)
    differ in the last bits between a batch of 7 and one of 64; through a hundred L-BFGS steps such
    bits grew to 0.002 per pixel. On a padded batch each row is computed the same way whatever the
    batch holds, which makes the attack's result independent of the batch size and of which other
    problems are still running.
    """
    m = x.shape[0]
    block = block or row_block(int(x[0].numel()))
    pad = -m % block
    if pad == 0:
        return model(x)
    return model(torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]))[:m]
