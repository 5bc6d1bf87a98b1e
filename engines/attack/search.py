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

What a problem spends is counted in model evaluations (`gradient_evals`, `forward_evals`), and the c search
is built to spend few of them (measured in benchmarks/bench_attack.py, README "Performance"):
* the first c comes from one linearisation of the margin (`first_c`, as DeepFool estimates the distance to
  the boundary), within a factor 1.5 of the final c on the zoo's MLP and convnet, so the bracket is found in a
  step or two of ×3 instead of several of ×10;
* a c-step ends once an iteration decreases the objective by less than `ftol` (relative): the next c starts
  from the best success so far with the L-BFGS curvature pairs carried over, shifted exactly to the new c
  (`CurvatureMemory.add_identity_curvature`: c·‖r‖² only adds 2c·I to the Hessian), so little is lost;
* a problem whose bracket on c is narrower than `c_tolerance`, or whose `budget` is spent, stops at once;
* a problem whose run at one c stops starts the next c at once (`_CSearch.next_c`, `minimize`'s restart
  hook), so a batch never waits for its slowest problem and every round is one model call for all rows.

loss_f is the paper's "continuous loss function associated with f". The default is the cross-entropy of
the target at temperature τ = 0.2 (`target_loss`; τ = 1 is the plain cross-entropy): the minimiser of
c·‖r‖² + CE at the largest successful c lies where CE reaches its level at the boundary crossing, a level
set that cuts off part of the target's region wherever a third class keeps some probability, so the
example is not the closest one; a cooler loss's level set hugs the decision boundary (zoo convnet, 100
images: mean distortion 0.0756 at τ = 1, 0.0751 at τ = 0.3, 0.0750 at τ = 0.2; within 1 % of the best of
ours and DDN on 96 % of the images at τ = 0.2).

A run's relative decrease test divides by max(|f_k|, |f_k+1|, `ftol_floor`), not scipy's max(…, 1): with the
loose `ftol` an objective well below 1 (a saturated model, tiny gradients) would otherwise stop after any
iteration and fail its c. The §4.2 pool and runs recorded before these settings (`LEGACY_SETTINGS`) keep the
solver they ran with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from engines.attack.lbfgsb import SCIPY_FTOL, CurvatureMemory, minimize
from engines.attack.objective import _Objective
from engines.core.choices import DISTANCES
from engines.core.device import cpu_speed_settings
from engines.core.errors import InputError
from engines.core.events import CancelCheck, EventSink, SolverStep, Throttle, ignore_events, never_cancel
from engines.core.options import field_error, option


@dataclass(frozen=True)
class AttackConfig:
    """Settings of the c search and of each L-BFGS-B run."""

    c_steps: int = option(9, label="c-steps", min=1, help="Runs of the search over c per image (bracket, then bisect).")
    max_iter: int = option(100, label="iters", min=1, help="L-BFGS-B iterations per value of c.")
    distance: str = option(
        "l2sq", choices=DISTANCES, help=f"Distance term, one of {', '.join(DISTANCES)}: ‖r‖² (default) or ‖r‖."
    )
    c_init: float | None = option(  # None: a first c per problem from a linearisation of the margin (`first_c`)
        None,
        help="First c (c multiplies the distance: larger c, smaller r); "
        "default: estimated per image from one linearisation of the margin.",
    )
    c_factor: float = 3.0  # ×/÷ per step until c is bracketed (the estimated first c is within ×1.5 typically)
    history: int = 10
    warm_start: bool = option(
        True, flags=("--warm-start/--cold-start",), help="Start each c from the best success so far."
    )
    margin: float = 1e-4
    pgtol: float = 1e-5  # scipy's L-BFGS-B default; the best success is tracked at every evaluation anyway
    ftol: float = 1e-4  # a c-step ends at a relative decrease below this; the next c goes on from its best point
    c_tolerance: float = 0.0  # a problem's c search ends once c_fail / c_ok <= 1 + c_tolerance
    keep_memory: bool = True  # carry the L-BFGS curvature pairs from one c-step to the next (l2sq, warm start)
    budget: int | None = option(  # at most this many forward+backward evaluations per problem
        None,
        min=2,
        cli_range=True,
        help="At most this many forward+backward model evaluations per image (per image and target with "
        "--target all); default: no cap beyond --c-steps × --max-iter.",
    )
    temperature: float = option(  # of the loss (`target_loss`): 1 is the cross-entropy
        0.2,
        min=0.01,
        cli_range=True,
        help="Temperature τ of the loss: 1 is the cross-entropy of the target; smaller τ approaches the "
        "hinge on the logit margin, whose minimisers lie on the decision boundary (closer examples).",
    )
    c_growth: bool = True  # c_factor, c_factor², c_factor³ … on successive moves before c is bracketed
    ftol_floor: float = 1e-12  # the ftol test is relative to max(|f_k|, |f_k+1|, ftol_floor) (scipy: 1)

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise InputError(f"unknown distance {self.distance!r}: use l2sq or l2")
        if self.c_steps < 1 or self.max_iter < 1:
            raise field_error(AttackConfig, "$c_steps and $max_iter must be at least 1", "c_steps", "max_iter")
        if not ((self.c_init is None or self.c_init > 0) and self.c_factor > 1):
            raise field_error(AttackConfig, "$c_init must be > 0 and c_factor > 1", "c_init")
        if not self.c_tolerance >= 0:
            raise InputError("c_tolerance must be >= 0")
        if not self.temperature > 0:
            raise field_error(AttackConfig, "$temperature must be > 0", "temperature")
        if self.budget is not None and self.budget < 2:
            raise field_error(AttackConfig, "$budget must be at least 2 evaluations per problem", "budget")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AttackConfig:
        """A recorded config; one recorded before a setting existed gets the solver it ran with."""
        return cls(**{**LEGACY_SETTINGS, **d})


# what runs recorded before these settings existed did: a fixed first c, no carried memory, no early end
LEGACY_SETTINGS = {
    "c_init": 1.0,
    "c_factor": 10.0,
    "ftol": SCIPY_FTOL,
    "c_tolerance": 0.0,
    "keep_memory": False,
    "budget": None,
    "temperature": 1.0,
    "c_growth": False,
    "ftol_floor": 1.0,
}


@dataclass
class ProblemResult:
    """Per problem (image, target): the best success found and the c search's outcome."""

    x_adv: torch.Tensor  # (B, n) best successful point, or x where none was found
    success: torch.Tensor  # (B,) bool
    sq_dist: torch.Tensor  # (B,) ‖x′ − x‖² of the best success (inf if none)
    c: torch.Tensor  # (B,) largest c whose minimiser succeeded (nan if none)
    gradient_evals: torch.Tensor  # (B,) forward+backward passes of the model spent on each problem
    forward_evals: torch.Tensor  # (B,) forward-only passes (the c search's verdicts)


def paper_distortion(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """sqrt(Σ (x′ − x)² / n) per image, n = number of pixels (§4.2)."""
    d = (x_adv - x).flatten(1)
    return (d.pow(2).sum(1) / d.shape[1]).sqrt()


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
    obj = _Objective(model, shape, flat, target, config.distance, config.margin, config.temperature)
    search = _CSearch(obj, flat, config)
    gate = Throttle(on_event, progress_every)  # the figures below cost a device sync: build them only when due

    def on_iteration(it: int, running: torch.Tensor, f: torch.Tensor) -> None:
        if gate.due(task):
            on_event(_solver_step(obj, groups, f, running, search.steps, it, config, task))

    minimize(
        obj,
        flat.clone(),
        lower,
        upper,
        max_iter=config.max_iter,
        history=config.history,
        pgtol=config.pgtol,
        ftol=config.ftol,
        ftol_floor=config.ftol_floor,
        cancel=cancel,
        on_iteration=on_iteration,
        memory=search.memory,
        budget=None if config.budget is None else config.budget - obj.gradient_evals,  # first_c spent one
        restart=search.next_c,
    )
    success = torch.isfinite(obj.best_sq)
    return ProblemResult(
        x_adv=obj.best_x.view(x.shape),
        success=success,
        sq_dist=obj.best_sq,
        c=torch.where(search.c_ok > 0, search.c_ok, torch.full_like(search.c_ok, math.nan)),
        gradient_evals=obj.gradient_evals,
        forward_evals=obj.forward_evals,
    )


class _CSearch:
    """Each problem's search over c: when its L-BFGS-B run at one c stops, its verdict moves the bracket and
    the problem starts again at once at the next c (from its best success, memory shifted to the new c),
    whatever the other problems of the batch are doing, until `c_steps` runs, a narrow bracket or its budget."""

    def __init__(self, obj: _Objective, flat: torch.Tensor, config: AttackConfig) -> None:
        self.obj, self.flat, self.config = obj, flat, config
        c = first_c(obj, config) if config.c_init is None else torch.full_like(obj.c, config.c_init)
        obj.c = c
        self.c_ok = torch.zeros_like(c)  # largest c that succeeded (0 = none yet)
        self.c_fail = torch.full_like(c, math.inf)  # smallest c that failed
        self.steps = torch.zeros(c.shape[0], dtype=torch.long, device=c.device)  # finished runs (c-steps)
        self.memory = CurvatureMemory(c.shape[0], flat.shape[1], config.history, flat)

    def next_c(self, rows: torch.Tensor, x_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The restart hook of `minimize`: which of the stopped `rows` go on, and from where."""
        obj, config = self.obj, self.config
        c = obj.c[rows]
        hit = obj.verdict(x_end, rows)
        c_ok = torch.where(hit, torch.maximum(self.c_ok[rows], c), self.c_ok[rows])
        c_fail = torch.where(hit, self.c_fail[rows], torch.minimum(self.c_fail[rows], c))
        self.c_ok[rows], self.c_fail[rows] = c_ok, c_fail
        self.steps[rows] += 1
        bracketed = (c_ok > 0) & torch.isfinite(c_fail)
        # unbracketed, the factor grows (×3, ×9, ×27 …): a first c far off the mark is still left behind soon
        factor = torch.pow(config.c_factor, self.steps[rows].to(c.dtype)) if config.c_growth else config.c_factor
        c_next = torch.where(bracketed, (c_ok * c_fail).sqrt(), torch.where(hit, c * factor, c / factor))
        again = self.steps[rows] < config.c_steps
        again &= ~(bracketed & (c_fail <= c_ok * (1 + config.c_tolerance)))
        if config.budget is not None:
            again &= obj.gradient_evals[rows] < config.budget
        self.steps[rows] = torch.where(again, self.steps[rows], config.c_steps)  # a finished search is complete
        found = torch.isfinite(obj.best_sq[rows])
        start = torch.where((found & config.warm_start)[:, None], obj.best_x[rows], self.flat[rows])
        if config.keep_memory and config.warm_start and config.distance == "l2sq":
            # c·‖r‖² adds 2c·I to the Hessian: the pairs gathered at c are exact at c_next once shifted
            self.memory.add_identity_curvature(rows, torch.where(again, 2 * (c_next - c), 0.0))
        else:
            self.memory.forget(rows)
        obj.c[rows] = torch.where(again, c_next, c)
        return again, start


def _solver_step(
    obj: _Objective,
    groups: torch.Tensor | None,
    f: torch.Tensor,
    running: torch.Tensor,
    steps: torch.Tensor,
    it: int,
    config: AttackConfig,
    task: str,
) -> SolverStep:
    """Progress of the batch: c-steps finished over all problems (a problem that stopped early counts as done)."""
    best = obj.best_sq
    if groups is not None:
        best = best.new_full((int(groups.max()) + 1,), math.inf).scatter_reduce(0, groups, best, "amin")
    found = torch.isfinite(best)
    n_found = int(found.sum())
    mean_dist = float((best[found] / obj.x.shape[1]).sqrt().mean()) if n_found else math.nan
    any_running = bool(running.any())
    c_step = int(steps[running].min()) + 1 if any_running else config.c_steps
    return SolverStep(
        task=task,
        done=float(steps.double().mean()) * config.max_iter,
        total=config.c_steps * config.max_iter,
        c_step=min(c_step, config.c_steps),
        c_steps=config.c_steps,
        iteration=it + 1,
        objective=float(f[running].mean()) if any_running else math.nan,
        running=int(running.sum()),
        success_rate=n_found / best.shape[0],
        mean_distortion=mean_dist,
        evaluations=int(obj.gradient_evals.sum()),
    )


def first_c(obj: _Objective, config: AttackConfig) -> torch.Tensor:
    """A first c per problem from one linearisation of the margin (as DeepFool does), so that the search
    starts near the largest successful c instead of finding it in ×c_factor steps.

    At the §4.1 minimiser on the decision boundary between the target t and the runner-up o, with
    p_t ≈ p_o ≈ ½, the loss gradient is ½·∇(z_t − z_o) = ½g and the distance of the boundary is
    δ = (z_o − z_t)/‖g‖; stationarity of c·‖r‖² + loss gives c = ‖g‖² / (4·(z_o − z_t)) (c·‖r‖: c = ‖g‖/2).
    Problems the model already sends to the target start at c = 1.
    """
    rows = torch.arange(obj.x.shape[0], device=obj.x.device)
    gap, grad_norm = obj.margin_and_gradient(obj.x, rows)
    c = grad_norm.pow(2) / (4 * gap.clamp_min(1e-12)) if config.distance == "l2sq" else grad_norm / 2
    usable = (gap > 0) & torch.isfinite(c) & (c > 0)
    return torch.where(usable, c, torch.ones_like(c))


def validate_images(x: torch.Tensor) -> None:
    """NaN/inf or values outside [0, 1] are user errors, not something to clip silently."""
    if not torch.isfinite(x).all():
        raise InputError("the images contain NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"the images must lie in [0, 1]; found values in [{lo:.4g}, {hi:.4g}]")
