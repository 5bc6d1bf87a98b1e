"""The box-constrained L-BFGS attack of Szegedy et al. (§4.1), batched.

For an image x and a target label l the paper solves

    minimise  c · D(r) + loss_f(x + r, l)   subject to  x + r ∈ [0, 1]^m

with a line search over c. Convention: c multiplies the distance term (the paper's form), so a
LARGER c gives a SMALLER perturbation, and the search keeps the largest c whose minimiser is
classified as l (the paper's text says "minimum c"; advertorch and others put the constant on
the loss instead, where the smallest constant is wanted). D is ‖r‖₂² by default or ‖r‖₂.

Every problem (image, target) has its own c, its own bracket and its own L-BFGS-B state
(`engines.attack.lbfgsb.minimize`); the best (smallest-distortion) successful x′ is recorded at every
objective evaluation, line-search trial points included, not only at each run's last iterate.
The value and the gradient always come from one forward/backward pass of the same objective.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from engines.attack.lbfgsb import SCIPY_FTOL, minimize
from engines.core.choices import DISTANCES
from engines.core.device import cpu_speed_settings
from engines.core.errors import InputError
from engines.core.events import CancelCheck, EventSink, SolverStep, Throttle, ignore_events, never_cancel


@dataclass(frozen=True)
class AttackConfig:
    """Settings of the c search and of each L-BFGS-B run."""

    c_steps: int = 9
    max_iter: int = 100
    distance: str = "l2sq"
    c_init: float = 1.0
    c_factor: float = 10.0
    history: int = 10
    warm_start: bool = True
    margin: float = 1e-4
    pgtol: float = 1e-5  # scipy's L-BFGS-B defaults; the best success is tracked at every evaluation anyway
    ftol: float = SCIPY_FTOL

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise InputError(f"unknown distance {self.distance!r}: use l2sq or l2")
        if self.c_steps < 1 or self.max_iter < 1:
            raise InputError("--c-steps and --max-iter must be at least 1")
        if not (self.c_init > 0 and self.c_factor > 1):
            raise InputError("c_init must be > 0 and c_factor > 1")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProblemResult:
    """Per problem (image, target): the best success found and the c search's outcome."""

    x_adv: torch.Tensor  # (B, n) best successful point, or x where none was found
    success: torch.Tensor  # (B,) bool
    sq_dist: torch.Tensor  # (B,) ‖x′ − x‖² of the best success (inf if none)
    c: torch.Tensor  # (B,) largest c whose minimiser succeeded (nan if none)


def paper_distortion(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """sqrt(Σ (x′ − x)² / n) per image, n = number of pixels (§4.2)."""
    d = (x_adv - x).flatten(1)
    return (d.pow(2).sum(1) / d.shape[1]).sqrt()


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
    ) -> None:
        self.model, self.shape, self.x, self.target, self.distance = model, shape, x, target, distance
        self.margin = margin
        self.c = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        self.best_sq = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
        self.best_x = x.clone()
        self.evaluations = 0

    def __call__(self, xp: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.evaluations += 1
        xp = xp.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = padded_forward(self.model, xp.view(-1, *self.shape))
            r = xp - self.x[rows]
            value = self.c[rows] * _distance(r, self.distance) + F.cross_entropy(
                logits, self.target[rows], reduction="none"
            )
            (grad,) = torch.autograd.grad(value.sum(), xp)
        with torch.no_grad():
            sq = r.detach().pow(2).sum(1)
            better = self.reaches_target(logits.detach(), self.target[rows]) & (sq < self.best_sq[rows])
            self.best_sq[rows] = torch.where(better, sq, self.best_sq[rows])
            self.best_x[rows] = torch.where(better[:, None], xp.detach(), self.best_x[rows])
        return value.detach(), grad

    def reaches_target(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """f(x′) = l with the target's logit ahead of every other by `margin`, so that the verdict
        does not flip when the same image is evaluated again in a batch of another size."""
        others = logits.scatter(1, target[:, None], -math.inf).amax(1)
        return logits.gather(1, target[:, None]).squeeze(1) > others + self.margin

    def predicts_target(self, xp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.reaches_target(padded_forward(self.model, xp.view(-1, *self.shape)), self.target)


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


@cpu_speed_settings()
def attack_problems(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    config: AttackConfig,
    *,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
    progress_every: float = 0.25,
    task: str = "attack",
    groups: torch.Tensor | None = None,
    lower: float = 0.0,
    upper: float = 1.0,
) -> ProblemResult:
    """Run the per-problem c search on a batch. x is (B, C, H, W) in the box [lower, upper] ([0, 1]: images;
    a hidden layer's output range for §4.2's per-layer examples), target is (B,).

    `groups` (B,) maps problems to images (several targets of one image): progress then counts
    an image as a success when any of its problems is, with its closest success's distortion.
    """
    shape = tuple(x.shape[1:])
    flat = x.reshape(x.shape[0], -1)
    obj = _Objective(model, shape, flat, target, config.distance, config.margin)
    c = torch.full_like(obj.c, config.c_init)
    c_ok = torch.zeros_like(c)  # largest c that succeeded (0 = none yet)
    c_fail = torch.full_like(c, math.inf)  # smallest c that failed
    start = flat.clone()
    gate = Throttle(on_event, progress_every)  # the figures below cost a device sync: build them only when due

    for step in range(config.c_steps):
        obj.c = c

        def on_iteration(it: int, rows: torch.Tensor, f: torch.Tensor, step: int = step) -> None:
            if not gate.due(task):
                return
            best = obj.best_sq
            if groups is not None:
                best = best.new_full((int(groups.max()) + 1,), math.inf).scatter_reduce(0, groups, best, "amin")
            found = torch.isfinite(best)
            n_found = int(found.sum())
            mean_dist = float((best[found] / flat.shape[1]).sqrt().mean()) if n_found else math.nan
            on_event(
                SolverStep(
                    task=task,
                    done=step * config.max_iter + it + 1,
                    total=config.c_steps * config.max_iter,
                    c_step=step + 1,
                    c_steps=config.c_steps,
                    iteration=it + 1,
                    objective=float(f.mean()),
                    running=int(rows.numel()),
                    success_rate=n_found / best.shape[0],
                    mean_distortion=mean_dist,
                )
            )

        res = minimize(
            obj,
            start,
            lower,
            upper,
            max_iter=config.max_iter,
            history=config.history,
            pgtol=config.pgtol,
            ftol=config.ftol,
            cancel=cancel,
            on_iteration=on_iteration,
        )
        hit = obj.predicts_target(res.x)
        c_ok = torch.where(hit, torch.maximum(c_ok, c), c_ok)
        c_fail = torch.where(hit, c_fail, torch.minimum(c_fail, c))
        bracketed = (c_ok > 0) & torch.isfinite(c_fail)
        c = torch.where(bracketed, (c_ok * c_fail).sqrt(), torch.where(hit, c * config.c_factor, c / config.c_factor))
        found = torch.isfinite(obj.best_sq)
        start = torch.where(found[:, None], obj.best_x, flat) if config.warm_start else flat.clone()

    success = torch.isfinite(obj.best_sq)
    return ProblemResult(
        x_adv=obj.best_x.view(x.shape),
        success=success,
        sq_dist=obj.best_sq,
        c=torch.where(c_ok > 0, c_ok, torch.full_like(c_ok, math.nan)),
    )


def validate_images(x: torch.Tensor) -> None:
    """NaN/inf or values outside [0, 1] are user errors, not something to clip silently."""
    if not torch.isfinite(x).all():
        raise InputError("the images contain NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"the images must lie in [0, 1]; found values in [{lo:.4g}, {hi:.4g}]")
