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
reduction test ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol`` (both stricter by default
than scipy's pgtol=1e-5 and factr=1e7, so that a run ends at least as close to a minimum), or
after ``max_iter`` iterations. The objective is a callable that returns the value and the gradient
of the SAME function at the same points, for a subset of rows.

The only host synchronisations in the loop are one "is any row still running" test per iteration
and the row selection of the backtracking steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, never_cancel

# fun(x_rows, rows) -> (f_rows, g_rows); `rows` indexes the batch (a LongTensor)
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
IterationHook = Callable[[int, torch.Tensor, torch.Tensor], None]

SCIPY_FTOL = 2.220446049250313e-09  # factr=1e7 times machine epsilon, scipy's default


@dataclass
class SolverResult:
    x: torch.Tensor  # (B, n) final iterates
    f: torch.Tensor  # (B,) final values
    iterations: torch.Tensor  # (B,) iterations taken per row
    converged: torch.Tensor  # (B,) bool: stopped by a convergence test, not by max_iter


def projected_gradient(x: torch.Tensor, g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """P(x - g) - x: zero exactly at a KKT point of the box-constrained problem."""
    return torch.minimum(torch.maximum(x - g, lower), upper) - x


def free_variables(x: torch.Tensor, g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Float mask of variables not held at a bound by the gradient."""
    at_lower = (x <= lower) & (g > 0)
    at_upper = (x >= upper) & (g < 0)
    return (~(at_lower | at_upper)).to(x.dtype)


class _History:
    """Per-row ring buffer of curvature pairs (s, y).

    Slots are read and written through flat row-major indices (`index_select`/`index_copy_`),
    one slot at a time: gathering all pairs at once with advanced indexing materialises two
    (rows, m, n) copies per iteration and was the slowest part of the attack.
    """

    def __init__(self, batch: int, n: int, size: int, like: torch.Tensor) -> None:
        self.size = size
        self.s = like.new_zeros(batch * size, n)  # row r, slot k at r * size + k
        self.y = like.new_zeros(batch * size, n)
        self.count = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.head = torch.zeros(batch, dtype=torch.long, device=like.device)  # next slot to write

    def push(self, rows: torch.Tensor, s: torch.Tensor, y: torch.Tensor, accept: torch.Tensor) -> None:
        """Store (s, y) for `rows` where `accept` (curvature condition held)."""
        slot = self.head[rows]
        flat = rows * self.size + slot
        keep = accept[:, None]
        self.s.index_copy_(0, flat, torch.where(keep, s, self.s.index_select(0, flat)))
        self.y.index_copy_(0, flat, torch.where(keep, y, self.y.index_select(0, flat)))
        step = accept.long()
        self.head[rows] = (slot + step) % self.size
        self.count[rows] = torch.clamp(self.count[rows] + step, max=self.size)

    def direction(self, rows: torch.Tensor, g: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """-H g on the free variables by the two-loop recursion, pairs restricted to the free set.

        With q kept on the free set, (F s)·q = s·q, so only y needs masking (F y); the update of r
        uses F s so that r stays on the free set too.
        """
        m = self.size
        ages = torch.arange(m, device=g.device)
        base = rows * m
        slots = (self.head[rows, None] - 1 - ages) % m  # newest first
        fs, fy, sy, yy = [], [], [], []
        for j in range(m):
            flat = base + slots[:, j]
            s_j = self.s.index_select(0, flat)
            fy_j = self.y.index_select(0, flat).mul_(free)
            sy.append(torch.linalg.vecdot(s_j, fy_j))
            yy.append(torch.linalg.vecdot(fy_j, fy_j))
            fs.append(s_j.mul_(free))
            fy.append(fy_j)
        sy_t, yy_t = torch.stack(sy, 1), torch.stack(yy, 1)
        ok = (ages < self.count[rows, None]) & (sy_t > 1e-10 * yy_t) & (yy_t > 0)
        rho = torch.where(ok, 1.0 / torch.where(ok, sy_t, torch.ones_like(sy_t)), torch.zeros_like(sy_t))
        newest = ok.float().argmax(1, keepdim=True)  # scale H0 by the newest usable pair
        gamma = torch.where(
            ok.any(1), (sy_t / torch.where(ok, yy_t, torch.ones_like(yy_t))).gather(1, newest).squeeze(1), 1.0
        )
        q = g * free
        alpha = []
        for j in range(m):
            a = rho[:, j] * torch.linalg.vecdot(fs[j], q)
            q.addcmul_(a[:, None], fy[j], value=-1.0)
            alpha.append(a)
        r = q.mul_(gamma[:, None])
        for j in reversed(range(m)):
            beta = rho[:, j] * torch.linalg.vecdot(fy[j], r)
            r.addcmul_((alpha[j] - beta)[:, None], fs[j])
        return r.neg_()


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
    max_line_search: int = 20,
    armijo: float = 1e-4,
    cancel: CancelCheck = never_cancel,
    on_iteration: IterationHook | None = None,
) -> SolverResult:
    """Minimise B independent box-constrained problems; x0 is (B, n) and is projected into the box first."""
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (B, n), got {tuple(x0.shape)}")
    batch, n = x0.shape
    device, dtype = x0.device, x0.dtype
    lower = torch.as_tensor(lower, dtype=dtype, device=device).expand(batch, n)
    upper = torch.as_tensor(upper, dtype=dtype, device=device).expand(batch, n)
    x = torch.minimum(torch.maximum(x0.detach().clone(), lower), upper)
    all_rows = torch.arange(batch, device=device)
    f, g = fun(x, all_rows)
    f, g = f.detach().clone(), g.detach().clone()
    hist = _History(batch, n, history, x)
    iterations = torch.zeros(batch, dtype=torch.long, device=device)
    converged = projected_gradient(x, g, lower, upper).abs().amax(1) <= pgtol
    running = ~converged

    for it in range(max_iter):
        if cancel():
            raise Cancelled("optimisation cancelled")
        if not bool(running.any()):
            break
        rows = running.nonzero().squeeze(1)
        xr, gr, fr = x[rows], g[rows], f[rows]
        lo, hi = lower[rows], upper[rows]
        free = free_variables(xr, gr, lo, hi)
        d = hist.direction(rows, gr, free)
        descent = (gr * d).sum(1)
        steepest = -(gr * free)
        fallback = ~(descent < -1e-12 * (gr * gr).sum(1).sqrt() * d.norm(dim=1))
        d = torch.where(fallback[:, None], steepest, d)
        fresh = (hist.count[rows] == 0) | fallback
        # first step of a fresh direction: unit length in the max norm (as scipy's first iteration)
        step = torch.where(fresh, 1.0 / d.abs().amax(1).clamp_min(1e-12), torch.ones_like(fr))
        step = torch.where(fresh, torch.clamp(step, max=1.0), step)

        x_new, f_new, g_new, ok = _line_search(fun, rows, xr, fr, gr, d, step, lo, hi, max_line_search, armijo)
        s = x_new - xr
        y = g_new - gr
        sy = (s * y).sum(1)
        hist.push(rows, s, y, ok & (sy > 2.2e-16 * (y * y).sum(1)))
        reduction = (fr - f_new) / torch.maximum(torch.maximum(fr.abs(), f_new.abs()), torch.ones_like(fr))
        x[rows] = torch.where(ok[:, None], x_new, xr)
        f[rows] = torch.where(ok, f_new, fr)
        g[rows] = torch.where(ok[:, None], g_new, gr)
        iterations[rows] += 1
        pg_small = projected_gradient(x[rows], g[rows], lo, hi).abs().amax(1) <= pgtol
        done = ~ok | pg_small | (ok & (reduction <= ftol))
        converged[rows] = done
        running[rows] = ~done
        if on_iteration is not None:
            on_iteration(it, rows, f[rows])
    return SolverResult(x=x, f=f, iterations=iterations, converged=converged)


def _line_search(
    fun: Objective,
    rows: torch.Tensor,
    x: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    d: torch.Tensor,
    step: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_trials: int,
    armijo: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backtracking Armijo search along P(x + t d), each row with its own t; only rows still
    searching are evaluated again. Returns the new points, values, gradients and a success flag.

    A row whose predicted decrease is below the objective's rounding error stops at once (it has
    converged as far as the arithmetic can tell): backtracking there only spends evaluations.
    """
    noise = 8 * torch.finfo(f.dtype).eps * torch.maximum(f.abs(), torch.ones_like(f))
    slope0 = (g * d).sum(1)
    x_new = torch.minimum(torch.maximum(x + step[:, None] * d, lower), upper)
    f_new, g_new = f.clone(), g.clone()
    searching = -slope0 * step > noise
    if bool(searching.any()):
        idx = searching.nonzero().squeeze(1)
        ft, gt = fun(x_new[idx], rows[idx])
        f_new[idx], g_new[idx] = ft.detach(), gt.detach()
        searching[idx] = ~_armijo_ok(f[idx], g[idx], x[idx], x_new[idx], f_new[idx], armijo)
    tried = (-slope0 * step > noise).clone()
    for _ in range(max_trials):
        if not bool(searching.any()):
            break
        idx = searching.nonzero().squeeze(1)
        # quadratic interpolation on the projected path, safeguarded to [0.1, 0.5] of the step
        t = step[idx]
        slope = (g[idx] * (x_new[idx] - x[idx])).sum(1) / t.clamp_min(1e-30)
        curv = (f_new[idx] - f[idx] - slope * t) / (t * t).clamp_min(1e-30)
        t_quad = torch.where(curv > 0, -slope / (2 * curv).clamp_min(1e-30), 0.5 * t)
        t = torch.clamp(t_quad, 0.1 * t, 0.5 * t)
        step[idx] = t
        hopeless = -slope0[idx] * t <= noise[idx]
        xt = torch.minimum(torch.maximum(x[idx] + t[:, None] * d[idx], lower[idx]), upper[idx])
        ft, gt = fun(xt, rows[idx])
        x_new[idx], f_new[idx], g_new[idx] = xt, ft.detach(), gt.detach()
        searching[idx] = ~_armijo_ok(f[idx], g[idx], x[idx], xt, f_new[idx], armijo) & ~hopeless
    ok = tried & ~searching & torch.isfinite(f_new) & (f_new <= f)
    return x_new, f_new, g_new, ok


def _armijo_ok(
    f: torch.Tensor, g: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, f_new: torch.Tensor, armijo: float
) -> torch.Tensor:
    decrease = (g * (x_new - x)).sum(1)
    return torch.isfinite(f_new) & (f_new <= f + armijo * decrease) & ((x_new - x).abs().amax(1) > 0)
