"""Linear bound propagation (CROWN, Zhang et al. 2018) and interval bounds (IBP) over the L2 ball ∩ box.

`margin_lower(net, x, eps, spec, method)` gives, per image, a lower bound of each row of spec·logits(z) over
every z with ‖z − x‖₂ ≤ ε and z in [0, 1]ⁿ. The specification matrix (rows e_y − e_j) is pulled back
through the network as a whole, which is tighter than bounding the logits one by one.

The bounds of each activation's input come first, layer by layer: for the first layer the exact affine map
(built once per model), for later ones CROWN's back-substitution of ±identity rows to the input, each
concretised with the cheap ball ∩ box rule and intersected with the interval (IBP) bounds. The final
margins are concretised exactly over the ball ∩ box (`concretize.tight_lower`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engines.certify.concretize import RowBounds, row_bounds, tight_lower
from engines.certify.network import Activation, Add, Fork, MaxPool, Network, interval_through
from engines.certify.relax import Relaxation, relax

METHODS = ("crown", "ibp")


class Bounds:
    """Per nonlinear op: the interval of its input (shape (B, *op.in_shape)), its relaxation, and the linear
    rows (concretised, `RowBounds`) its interval came from where there were some."""

    def __init__(self, eps: torch.Tensor) -> None:
        self.eps = eps
        self.interval: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.relaxation: dict[int, Relaxation] = {}
        self.pool: dict[int, tuple[torch.Tensor, ...]] = {}
        self.rows: dict[int, RowBounds] = {}


def input_box(x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ box holding the L2 ball, cut to [0, 1] (x flat (B, n))."""
    e = eps[:, None]
    return (x - e).clamp(0, 1), (x + e).clamp(0, 1)


BackFn = Callable[[Network, int, torch.Tensor, Bounds], tuple[torch.Tensor, torch.Tensor]]


def layer_bounds(
    net: Network, x: torch.Tensor, eps: torch.Tensor, method: str = "crown", back: BackFn | None = None
) -> Bounds:
    """Bounds of every activation's input over the ball ∩ box of radius eps, in forward order. `back` pulls
    the intermediate rows back to the input (default `back_substitute`; α-CROWN passes its optimiser)."""
    b = x.shape[0]
    out = Bounds(eps)
    lo, hi = (t.view(b, *net.input_shape) for t in input_box(x, eps))
    saved: list = []  # open residual blocks' input intervals
    for k, op in enumerate(net.ops):
        if not op.affine:
            rows = _rows(net, k, x, method, out, back or back_substitute)
            if rows is not None:
                out.rows[k] = rows
                low, up = rows.at(eps)
                lo, hi = torch.maximum(lo, low.view_as(lo)), torch.minimum(hi, up.view_as(hi))
            out.interval[k] = (lo, hi)
            if isinstance(op, Activation):
                out.relaxation[k] = relax(op.kind, lo, hi)
            elif isinstance(op, MaxPool):
                out.pool[k] = _pool_relaxation(op, lo, hi)
        lo, hi = interval_through(op, lo, hi, saved)
    return out


def _rows(net: Network, k: int, x: torch.Tensor, method: str, bounds: Bounds, back: BackFn) -> RowBounds | None:
    """Linear bounds of op k's input in terms of the input image, concretised (None: IBP's interval only)."""
    ops = net.ops
    if k == 0 or not ops[k - 1].affine:
        return None
    if all(op.affine for op in ops[:k]):
        a, bias = net.dense_prefix(k)
        return row_bounds(a, bias, x)
    if method != "crown":
        return None
    shape = ops[k].in_shape
    n = int(math.prod(shape))
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    lam = torch.cat([eye, -eye]).view(1, 2 * n, *shape).expand(x.shape[0], -1, *shape)
    a, bias = back(net, k, lam, bounds)
    return row_bounds(a, bias, x).split_signed(n)


def back_substitute(
    net: Network,
    stop: int,
    lam: torch.Tensor,
    bounds: Bounds,
    relaxed: dict[int, Relaxation] | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull lower bounds of Λ·(output of ops[:stop]) back to the input: (A (B, S, n), bias (B, S)) with
    Λ·y ≥ A·z + bias for every z in the ball ∩ box. `relaxed`: per-row relaxations (B, S, *shape) replacing
    the shared ones of those activations (α-CROWN). start > 0: stop at the output of ops[:start] instead."""
    bias = lam.new_zeros(lam.shape[:2])
    skips: list[torch.Tensor] = []  # Λ of residual shortcuts, waiting for their block's Fork
    for k in reversed(range(start, stop)):
        op = net.ops[k]
        if isinstance(op, Add):  # the main branch goes on unchanged; the shortcut's Λ waits for the Fork
            skip, b = op.back_skip(lam)
            skips.append(skip)
        elif isinstance(op, Fork):
            lam = lam + skips.pop() if skips else lam  # a stop inside the block: no shortcut yet
            continue
        elif op.affine:
            lam, b = op.back(lam)
        elif isinstance(op, Activation):
            lam, b = _back_relaxed(lam, bounds.relaxation[k] if relaxed is None else relaxed[k])
        else:
            lam, b = _back_pool(op, lam, bounds.pool[k])  # type: ignore[arg-type]
        bias = bias + b
    return lam.flatten(2), bias


def _back_relaxed(lam: torch.Tensor, r: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
    """Λ through an activation: the lower line where Λ > 0, the upper where Λ < 0 (shared or per-row lines)."""
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    rows = (lambda t: t) if r.lower_slope.dim() == lam.dim() else (lambda t: t[:, None])
    new = pos * rows(r.lower_slope) + neg * rows(r.upper_slope)
    bias = (pos * rows(r.lower_bias) + neg * rows(r.upper_bias)).flatten(2).sum(-1)
    return new, bias


def _pool_relaxation(op: MaxPool, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Max pooling: y ≥ x_i* (i* the window's largest lower bound); y ≤ x_i* when x_i* surely wins the window,
    else y ≤ the window's largest upper bound. Returns (input position of i*, exact flag, that upper bound, 0)."""
    lw, hw = op.windows(lo), op.windows(hi)  # (B, C, k, L)
    star = lw.argmax(2, keepdim=True)
    lo_star = lw.gather(2, star).squeeze(2)
    others = hw.scatter(2, star, -math.inf).amax(2)
    exact = (lo_star >= others).to(lo.dtype)
    top = hw.amax(2)
    index = op.window_index(lo.device)
    where = index.expand(*lw.shape).gather(2, star).squeeze(2)  # (B, C, L) flat input positions
    return where, exact, top, lo_star


def _back_pool(op: MaxPool, lam: torch.Tensor, relaxed: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    where, exact, top, _ = relaxed
    b, s = lam.shape[:2]
    c, h, w = op.in_shape
    lam = lam.reshape(b, s, c, -1)
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    coef = pos + neg * exact[:, None]
    bias = (neg * (1 - exact[:, None]) * top[:, None]).flatten(2).sum(-1)
    new = lam.new_zeros(b, s, c, h * w).scatter_add_(3, where[:, None].expand(b, s, c, -1), coef)
    return new.view(b, s, c, h, w), bias


def margin_lower(
    net: Network, x: torch.Tensor, eps: torch.Tensor, spec: torch.Tensor, method: str = "crown"
) -> torch.Tensor:
    """Per image and spec row (B, S): a lower bound of spec·logits over the ball ∩ box of radius eps (B,)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    eps = eps.to(torch.float64)
    spec = spec.to(torch.float64)
    if method == "ibp":
        return _ibp_margins(net, x, eps, spec, layer_bounds(net, x, eps, method))
    a, bias, _ = linear_bounds(net, x, eps, spec)
    return tight_lower(a, x, eps) + bias


def linear_bounds(
    net: Network, x: torch.Tensor, eps: torch.Tensor, spec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, Bounds]:
    """CROWN's linear lower bound of spec·logits, (A (B, S, n), bias (B, S)): spec·logits(z) ≥ A·z + bias for
    every z in the ball ∩ box of radius eps, and so for every smaller radius too; with the layer bounds."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    spec = spec.to(torch.float64)
    bounds = layer_bounds(net, x, eps.to(torch.float64), "crown")
    if net.affine:
        a, bias = net.dense_prefix(len(net.ops))
        return torch.einsum("bsk,kn->bsn", spec, a), spec @ bias, bounds
    a, bias = back_substitute(net, len(net.ops), spec, bounds)
    return a, bias, bounds


def _ibp_margins(net: Network, x: torch.Tensor, eps: torch.Tensor, spec: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """IBP up to the last layer's input, then spec·(last affine layer) concretised on that interval."""
    b = x.shape[0]
    lo, hi = (t.view(b, *net.input_shape) for t in input_box(x, eps))
    last = len(net.ops) - 1
    saved: list = []
    for k, op in enumerate(net.ops[:last]):
        if k in bounds.interval:
            lo, hi = bounds.interval[k]
        lo, hi = interval_through(op, lo, hi, saved)
    if last in bounds.interval:
        lo, hi = bounds.interval[last]
    if not net.ops[last].affine:
        lo, hi = net.ops[last].interval(lo, hi)
        return (spec.clamp(min=0) @ lo[..., None] + spec.clamp(max=0) @ hi[..., None]).squeeze(-1)
    a, bias = net.ops[last].back(spec)
    a = a.flatten(2)
    flo, fhi = lo.flatten(1)[:, :, None], hi.flatten(1)[:, :, None]
    return (a.clamp(min=0) @ flo + a.clamp(max=0) @ fhi).squeeze(-1) + bias


def margin_spec(labels: torch.Tensor, classes: int, target: torch.Tensor | None = None) -> torch.Tensor:
    """Rows e_y − e_j for every j ≠ y (B, classes − 1, classes), or per image the one row e_y − e_target
    (B, 1, classes): a lower bound on the distance to the target's region (it must at least beat y)."""
    eye = torch.eye(classes, dtype=torch.float64)
    own = eye[labels.long()]
    if target is not None:
        return (own - eye[target.long()])[:, None, :]
    others = torch.stack([torch.tensor([j for j in range(classes) if j != int(y)]) for y in labels])
    return own[:, None, :] - eye[others]


def work_per_image(net: Network, spec_rows: int, method: str = "crown") -> int:
    """Floats one image's bounds hold at their largest (for batch sizes)."""
    sizes = [int(math.prod(op.in_shape)) for op in net.ops] + [int(math.prod(net.input_shape))]
    widest = max(sizes)
    rows = spec_rows
    if method == "crown":
        for k, op in enumerate(net.ops):
            if not op.affine and k > 0 and net.ops[k - 1].affine and not all(o.affine for o in net.ops[:k]):
                rows = max(rows, 2 * int(math.prod(op.in_shape)))
    return rows * widest
