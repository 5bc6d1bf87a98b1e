"""A batched, box-constrained L-BFGS solver: one independent problem per row, all on one device.

Every row has its own curvature history, its own projected line search, its own step and its
own convergence flag. Bounds are handled with L-BFGS-B semantics, never by clipping after the
fact:

* the active set holds variables at a bound whose gradient points out of the box;
* the quasi-Newton direction is computed on the free variables only (two-loop recursion with
  the curvature pairs restricted to the free set), and is replaced by the projected steepest
  descent direction if it is not a descent direction;
* the line search runs along the projection arc ``P(x + t d)`` with an Armijo test on the
  projected step, backtracking per row.

Rows stop on the projected-gradient test ``max|P(x - g) - x| <= pgtol``, on the relative
reduction test ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, ftol_floor) <= ftol`` (both stricter by default
than scipy's pgtol=1e-5 and factr=1e7, so that a run ends at least as close to a minimum), or
after ``max_iter`` iterations. The objective is a callable that returns the value and the gradient
of the SAME function at the same points, for a subset of rows.

The loop runs in rounds of one evaluation for every row that needs one (see `minimize`); on the CPU a
round selects those rows, on CUDA it keeps static shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engines.attack.curvature import CurvatureMemory
from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, never_cancel

# fun(x_rows, rows) -> (f_rows, g_rows); `rows` indexes the batch (a LongTensor)
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
IterationHook = Callable[[int, torch.Tensor, torch.Tensor], None]  # (iteration, running (B,) bool, f (B,))

SCIPY_FTOL = 2.220446049250313e-09  # factr=1e7 times machine epsilon, scipy's default


@dataclass
class SolverResult:
    x: torch.Tensor  # (B, n) final iterates
    f: torch.Tensor  # (B,) final values
    iterations: torch.Tensor  # (B,) iterations taken per row
    converged: torch.Tensor  # (B,) bool: stopped by a convergence test, not by max_iter
    memory: CurvatureMemory  # the rows' curvature pairs, to start a related problem from


def projected_gradient(x: torch.Tensor, g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """P(x - g) - x: zero exactly at a KKT point of the box-constrained problem."""
    return torch.minimum(torch.maximum(x - g, lower), upper) - x


def free_variables(x: torch.Tensor, g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Float mask of variables not held at a bound by the gradient."""
    at_lower = (x <= lower) & (g > 0)
    at_upper = (x >= upper) & (g < 0)
    return (~(at_lower | at_upper)).to(x.dtype)


def minimize(
    fun: Objective,
    x0: torch.Tensor,
    lower: torch.Tensor | float = 0.0,
    upper: torch.Tensor | float = 1.0,
    *,
    max_iter: int = 100,
    history: int = 10,
    pgtol: float = 1e-7,
    ftol: float = 1e-12,
    ftol_floor: float = 1.0,
    max_line_search: int = 20,
    armijo: float = 1e-4,
    cancel: CancelCheck = never_cancel,
    on_iteration: IterationHook | None = None,
    active: torch.Tensor | None = None,
    memory: CurvatureMemory | None = None,
    budget: torch.Tensor | None = None,
    restart: RestartHook | None = None,
    static: bool | None = None,
    check_every: int = 8,
) -> SolverResult:
    """Minimise B independent box-constrained problems; x0 is (B, n) and is projected into the box first.

    `active` (B,) bool leaves the other rows untouched and never evaluated (their x stays x0);
    `memory` starts from curvature pairs of an earlier run (see `CurvatureMemory.add_identity_curvature`);
    `budget` (B,) caps each row's evaluations of `fun` (the first one included): a row stops, unconverged,
    when it has none left, even inside a line search.

    `restart(rows, x_rows) -> (again, start)` is handed the rows that stopped (converged, out of
    iterations or of budget) with their final points; the rows marked `again` start a new run of up to
    `max_iter` iterations from `start` (the objective may have changed for them) while the others go on:
    a batch of problems that each need several runs never waits for its slowest row.

    The solver advances in rounds of ONE evaluation of `fun` for every row that needs one, whatever it
    needs it for: the start of a run, the first trial of a new direction, or a backtracking step. A row's
    sequence of points is the same as with a line search run to its end before the next row moves, but the
    model sees one batch per round instead of one per backtracking step (the model pads batches to
    blocks of rows, so small batches of backtracking rows cost as much as full ones).

    `static` (default: on CUDA) keeps every shape fixed: every row is evaluated in every round under a mask
    (an idle row at a point it was evaluated at before, so nothing it records changes) and the loop asks the
    device whether any row still runs (and hands stopped rows to `restart`) only every `check_every` rounds:
    selecting rows costs a host synchronisation (`nonzero`), a few milliseconds on a GPU, more than a small
    model's evaluation. Both give the same iterates.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (B, n), got {tuple(x0.shape)}")
    batch, n = x0.shape
    device, dtype = x0.device, x0.dtype
    static = x0.is_cuda if static is None else static
    lower = torch.as_tensor(lower, dtype=dtype, device=device).expand(batch, n)
    upper = torch.as_tensor(upper, dtype=dtype, device=device).expand(batch, n)
    st = _State(
        x=torch.minimum(torch.maximum(x0.detach().clone(), lower), upper),
        lower=lower,
        upper=upper,
        left=torch.full((batch,), 1 << 62, dtype=torch.long, device=device) if budget is None else budget.clone(),
        memory=memory if memory is not None else CurvatureMemory(batch, n, history, x0),
        static=static,
    )
    live = torch.ones(batch, dtype=torch.bool, device=device) if active is None else active.clone()
    st.phase = torch.where(live & (st.left > 0), START, IDLE)
    rules = _Rules(pgtol, ftol, ftol_floor, max_iter, max_line_search, armijo)

    rounds = 0
    while True:
        if cancel():
            raise Cancelled("optimisation cancelled")
        if not static or rounds % check_every == 0:
            if restart is not None and bool(st.stopped.any()):
                _hand_over(st, restart)
            if not bool((st.phase != IDLE).any()):
                break
        _round(fun, st, rules)
        if on_iteration is not None:
            on_iteration(rounds, st.phase != IDLE, st.f)
        rounds += 1
    return SolverResult(x=st.x, f=st.f, iterations=st.iterations, converged=st.converged, memory=st.memory)


RestartHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
IDLE, START, DIRECTION, BACKTRACK, TRIAL = 0, 1, 2, 3, 4  # what a row does next


@dataclass(frozen=True)
class _Rules:
    pgtol: float
    ftol: float
    ftol_floor: float  # the relative decrease is taken over max(|f_k|, |f_k+1|, ftol_floor), scipy's: 1
    max_iter: int
    max_trials: int
    armijo: float


@dataclass
class _State:
    """Every row's point, its line search in progress, and what it does next (`phase`)."""

    x: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    left: torch.Tensor  # evaluations left per row
    memory: CurvatureMemory
    static: bool

    def __post_init__(self) -> None:
        batch, dev = self.x.shape[0], self.x.device
        self.f = torch.zeros(batch, dtype=self.x.dtype, device=dev)
        self.g = torch.zeros_like(self.x)
        self.d = torch.zeros_like(self.x)  # search direction
        self.xt = self.x.clone()  # the trial point of the line search
        self.ft, self.gt = self.f.clone(), self.g.clone()  # the objective there
        self.step = torch.zeros_like(self.f)
        self.slope0 = torch.zeros_like(self.f)  # g·d at the start of the line search
        self.hopeless = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.trials = torch.zeros(batch, dtype=torch.long, device=dev)  # backtracking steps of this search
        self.iterations = torch.zeros_like(self.trials)  # over all runs
        self.age = torch.zeros_like(self.trials)  # iterations of the current run
        self.phase = torch.zeros_like(self.trials)
        self.converged = torch.zeros_like(self.hopeless)
        self.stopped = torch.zeros_like(self.hopeless)  # stopped since last handed to the restart hook

    def select(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows to work on and which of them `mask` holds: the rows of `mask`, or every row under it (static)."""
        if self.static:
            return torch.arange(mask.shape[0], device=mask.device), mask
        rows = mask.nonzero().squeeze(1)
        return rows, torch.ones_like(rows, dtype=torch.bool)

    def stop(self, rows: torch.Tensor, mask: torch.Tensor, converged: torch.Tensor) -> None:
        self.phase[rows] = torch.where(mask, IDLE, self.phase[rows])
        self.converged[rows] = torch.where(mask, converged, self.converged[rows])
        self.stopped[rows] |= mask


def _hand_over(st: _State, restart: RestartHook) -> None:
    """Give the stopped rows to the restart hook; those it sends again start a run at their new point."""
    idx = st.stopped.nonzero().squeeze(1)
    st.stopped[idx] = False
    again, start = restart(idx, st.x[idx])
    start = torch.minimum(torch.maximum(start.to(st.x.dtype), st.lower[idx]), st.upper[idx])
    st.x[idx] = torch.where(again[:, None], start, st.x[idx])
    go = again & (st.left[idx] > 0)
    st.phase[idx] = torch.where(go, START, st.phase[idx])
    st.stopped[idx] = again & ~go  # out of budget: handed back at once, to be finished


def _round(fun: Objective, st: _State, rules: _Rules) -> None:
    """Prepare every row's next point, evaluate them all in one call, and act on the results."""
    _new_directions(st)
    _backtrack(st)
    rows, want = st.select((st.phase == START) | (st.phase == TRIAL))
    if rows.numel() == 0:
        return
    starting = st.phase[rows] == START
    points = torch.where(starting[:, None], st.x[rows], st.xt[rows])
    f, g = fun(points, rows)
    f, g = f.detach(), g.detach()
    st.left[rows] -= want.long()
    _started(st, rows, want & starting, f, g, rules)
    _tried(st, rows, want & ~starting, f, g, rules)


def _new_directions(st: _State) -> None:
    """The quasi-Newton direction (or projected steepest descent) and the first trial step of each row that
    needs one; a row whose predicted decrease is below the objective's rounding error stops there."""
    rows, on = st.select(st.phase == DIRECTION)
    if rows.numel() == 0:
        return
    x, g, f = st.x[rows], st.g[rows], st.f[rows]
    lo, hi = st.lower[rows], st.upper[rows]
    free = free_variables(x, g, lo, hi)
    d = st.memory.direction(rows, g, free)
    descent = (g * d).sum(1)
    fallback = ~(descent < -1e-12 * (g * g).sum(1).sqrt() * d.norm(dim=1))
    d = torch.where(fallback[:, None], -(g * free), d)
    fresh = (st.memory.count[rows] == 0) | fallback
    # first step of a fresh direction: unit length in the max norm (as scipy's first iteration)
    step = torch.where(fresh, torch.clamp(1.0 / d.abs().amax(1).clamp_min(1e-12), max=1.0), torch.ones_like(f))
    slope0 = (g * d).sum(1)
    # converged as far as the arithmetic can tell: a line search there only spends evaluations
    flat = ~(-slope0 * step > _noise(f)) | (st.left[rows] <= 0)
    go = on & ~flat
    st.d[rows] = torch.where(go[:, None], d, st.d[rows])
    st.step[rows] = torch.where(go, step, st.step[rows])
    st.slope0[rows] = torch.where(go, slope0, st.slope0[rows])
    st.trials[rows] = torch.where(go, 0, st.trials[rows])
    st.hopeless[rows] &= ~go
    st.xt[rows] = torch.where(go[:, None], _project(x + step[:, None] * d, lo, hi), st.xt[rows])
    st.phase[rows] = torch.where(go, TRIAL, st.phase[rows])
    st.iterations[rows] += (on & flat).long()
    st.age[rows] += (on & flat).long()
    st.stop(rows, on & flat, torch.ones_like(flat))


def _backtrack(st: _State) -> None:
    """The next, shorter trial step of rows whose last trial failed the Armijo test: quadratic interpolation
    on the projected path, safeguarded to [0.1, 0.5] of the step."""
    rows, on = st.select(st.phase == BACKTRACK)
    if rows.numel() == 0:
        return
    x, f, g, d = st.x[rows], st.f[rows], st.g[rows], st.d[rows]
    t = st.step[rows]
    slope = (g * (st.xt[rows] - x)).sum(1) / t.clamp_min(1e-30)
    curv = (st.ft[rows] - f - slope * t) / (t * t).clamp_min(1e-30)
    t_quad = torch.where(curv > 0, -slope / (2 * curv).clamp_min(1e-30), 0.5 * t)
    t = torch.clamp(t_quad, 0.1 * t, 0.5 * t)
    st.step[rows] = torch.where(on, t, st.step[rows])
    st.hopeless[rows] = torch.where(on, -st.slope0[rows] * t <= _noise(f), st.hopeless[rows])
    st.xt[rows] = torch.where(on[:, None], _project(x + t[:, None] * d, st.lower[rows], st.upper[rows]), st.xt[rows])
    st.trials[rows] += on.long()
    st.phase[rows] = torch.where(on, TRIAL, st.phase[rows])


def _started(st: _State, rows: torch.Tensor, on: torch.Tensor, f: torch.Tensor, g: torch.Tensor, rules: _Rules) -> None:
    """Rows that evaluated the start of a run: stop at once at a KKT point, else look for a direction."""
    st.f[rows] = torch.where(on, f, st.f[rows])
    st.g[rows] = torch.where(on[:, None], g, st.g[rows])
    st.age[rows] = torch.where(on, 0, st.age[rows])
    small = projected_gradient(st.x[rows], st.g[rows], st.lower[rows], st.upper[rows]).abs().amax(1) <= rules.pgtol
    st.phase[rows] = torch.where(on, DIRECTION, st.phase[rows])
    st.stop(rows, on & (small | (st.left[rows] <= 0)), small)


def _tried(st: _State, rows: torch.Tensor, on: torch.Tensor, f: torch.Tensor, g: torch.Tensor, rules: _Rules) -> None:
    """Rows that evaluated a trial point: accept it (Armijo), backtrack, or end the iteration without a step."""
    x, fr, gr = st.x[rows], st.f[rows], st.g[rows]
    xt = st.xt[rows]
    st.ft[rows] = torch.where(on, f, st.ft[rows])
    st.gt[rows] = torch.where(on[:, None], g, st.gt[rows])
    armijo = _armijo_ok(fr, gr, x, xt, f, rules.armijo)
    # a search ends when its test passes, its step is hopeless or its budget is spent; it fails when out of trials
    ended = armijo | st.hopeless[rows] | (st.left[rows] <= 0)
    retry = on & ~ended & (st.trials[rows] < rules.max_trials)
    st.phase[rows] = torch.where(retry, BACKTRACK, st.phase[rows])
    finish = on & ~retry
    ok = finish & ended & torch.isfinite(f) & (f <= fr)
    s, y = xt - x, g - gr
    st.memory.push(rows, s, y, ok & ((s * y).sum(1) > 2.2e-16 * (y * y).sum(1)))
    reduction = (fr - f) / torch.maximum(torch.maximum(fr.abs(), f.abs()), torch.full_like(fr, rules.ftol_floor))
    st.x[rows] = torch.where(ok[:, None], xt, x)
    st.f[rows] = torch.where(ok, f, fr)
    st.g[rows] = torch.where(ok[:, None], g, gr)
    st.iterations[rows] += finish.long()
    st.age[rows] += finish.long()
    pg_small = projected_gradient(st.x[rows], st.g[rows], st.lower[rows], st.upper[rows]).abs().amax(1) <= rules.pgtol
    done = ~ok | pg_small | (reduction <= rules.ftol) | (st.left[rows] <= 0)
    st.phase[rows] = torch.where(finish, DIRECTION, st.phase[rows])
    st.stop(rows, finish & (done | (st.age[rows] >= rules.max_iter)), done)


def _project(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, lower), upper)


def _noise(f: torch.Tensor) -> torch.Tensor:
    """The objective's rounding error: a predicted decrease below it cannot be told from none."""
    return 8 * torch.finfo(f.dtype).eps * torch.maximum(f.abs(), torch.ones_like(f))


def _armijo_ok(
    f: torch.Tensor, g: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, f_new: torch.Tensor, armijo: float
) -> torch.Tensor:
    decrease = (g * (x_new - x)).sum(1)
    return torch.isfinite(f_new) & (f_new <= f + armijo * decrease) & ((x_new - x).abs().amax(1) > 0)
