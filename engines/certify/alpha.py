"""α-CROWN (Xu et al. 2021, "Fast and Complete"): CROWN with the free parts of the relaxations optimised.

CROWN fixes one relaxation per neuron; many are equally sound: ReLU's lower slope anywhere in [0, 1] on an
unstable neuron, and sigmoid/tanh's tangent lines at any point of a range (`relax.free_tangents`). α-CROWN
gives each row its own choice and climbs the row's bound by projected gradient steps (Adam, α clipped to
[0, 1] after each). Every α in [0, 1] is a sound relaxation, so every iterate is a valid bound. The
intermediate bounds are optimised first, layer by layer (each neuron's two rows, its lower and its upper
bound, with their own slopes; CROWN's where that would take more than ROW_BUDGET slopes per image), then the
final margins' slopes on those bounds, the best iterate per row kept (CROWN's slopes are the first).

Objectives: for the margins, their exact lower bound over the L2 ball ∩ box, whose gradient in a row's
coefficients a is the minimiser z of the one-variable dual at its best t (envelope theorem); for neurons,
the ball-only bound at the first activation's input, λ·c − ε·√(λ·G·λ) with G = P·Pᵀ of the affine map P
before it (sound and cheap: no input-sized rows; `_Score`), the chosen rows then concretised as CROWN's are.
`radius.crown_radius` probes α-CROWN only above CROWN's certified radius, so its radius is never smaller.
"""

from __future__ import annotations

import math

import torch

from engines.certify.concretize import BallBox, cheap_bounds, cheap_lower
from engines.certify.crown import Bounds, back_substitute, layer_bounds, linear_bounds
from engines.certify.network import DENSE_BUDGET, Activation, Fork, Network
from engines.certify.relax import Relaxation, free_tangents, relax_relu, tangent_line

STEPS = 5  # gradient steps per evaluation (10 or 20 gave the same radii on n100-100-10-adv)
ROW_BUDGET = 2_000_000  # slopes per image for a layer's neurons beyond which they keep CROWN's (a conv layer)
RATE = 0.1  # Adam's step on α (α lives in [0, 1])


class _Slopes:
    """One activation's free α (B, S, *shape) for every spec row, and the relaxation they give."""

    def __init__(self, kind: str, lo: torch.Tensor, hi: torch.Tensor, rows: int) -> None:
        self.kind, self.lo, self.hi = kind, lo[:, None], hi[:, None]
        expand = (lo.shape[0], rows, *lo.shape[1:])
        if kind == "relu":
            base = relax_relu(lo, hi)
            self.free = ((lo < 0) & (hi > 0))[:, None]
            init = [base.lower_slope[:, None].expand(expand)]
        else:
            self.t = free_tangents(kind, lo, hi)
            init = [self.t.low_init[:, None].expand(expand), self.t.up_init[:, None].expand(expand)]
        self.alpha = [a.clone().requires_grad_(True) for a in init]

    def relaxation(self, fixed: Relaxation) -> Relaxation:
        """The relaxation at the current α, CROWN's `fixed` one where nothing is free."""
        if self.kind == "relu":
            slope = torch.where(self.free, self.alpha[0], fixed.lower_slope[:, None])
            return Relaxation(slope, fixed.lower_bias[:, None], fixed.upper_slope[:, None], fixed.upper_bias[:, None])
        t = self.t
        lines = []
        for upper, alpha, free, a, b in (
            (False, self.alpha[0], t.low_free, t.low_a, t.low_b),
            (True, self.alpha[1], t.up_free, t.up_a, t.up_b),
        ):
            a, b = a[:, None], b[:, None]
            d = torch.where(free[:, None], a + alpha * (b - a), a)
            k, off = tangent_line(self.kind, d, self.lo, self.hi, upper)
            own_k, own_b = (fixed.upper_slope, fixed.upper_bias) if upper else (fixed.lower_slope, fixed.lower_bias)
            lines += [torch.where(free[:, None], k, own_k[:, None]), torch.where(free[:, None], off, own_b[:, None])]
        return Relaxation(*lines)


def alpha_linear_bounds(
    net: Network, x: torch.Tensor, eps: torch.Tensor, spec: torch.Tensor, steps: int = STEPS
) -> tuple[torch.Tensor, torch.Tensor, Bounds]:
    """Like `crown.linear_bounds`, with the slopes optimised at radius eps, for the intermediate bounds (each
    neuron's rows their own) and then for each spec row: (A, bias) with spec·logits(z) ≥ A·z + bias on the
    ball ∩ box of radius eps (and every smaller one)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    spec, eps = spec.to(torch.float64), eps.to(torch.float64)
    if net.affine or steps < 1:
        return linear_bounds(net, x, eps, spec)

    def intermediate(net: Network, stop: int, lam: torch.Tensor, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        return optimised_rows(net, stop, lam, bounds, x, eps, steps, tight=False)

    bounds = layer_bounds(net, x, eps, "crown", back=intermediate)
    a, bias = optimised_rows(net, len(net.ops), spec, bounds, x, eps, steps, tight=True)
    return a, bias, bounds


def optimised_rows(
    net: Network,
    stop: int,
    lam: torch.Tensor,
    bounds: Bounds,
    x: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    tight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best linear lower bound (A, bias) of each row of Λ·(output of ops[:stop]) found by `steps` projected
    gradient steps on the slopes before stop, against CROWN's own slopes. Rows are scored by their lower bound
    over the ball ∩ box: exact (`tight`, the final margins) or the cheap one (neurons)."""
    free = [k for k, op in enumerate(net.ops[:stop]) if isinstance(op, Activation)]
    size = lam.shape[1] * sum(int(math.prod(net.ops[k].in_shape)) for k in free)
    if not free or (not tight and size > ROW_BUDGET):
        return back_substitute(net, stop, lam, bounds)
    slopes = {k: _Slopes(net.ops[k].kind, *bounds.interval[k], lam.shape[1]) for k in free}  # type: ignore[attr-defined]
    gram = None if tight else _gram(net, free[0], x)
    score = _Score(net, stop, lam, bounds, x, eps, tight, gram, free[0])
    opt = _Adam([a for s in slopes.values() for a in s.alpha])
    keep = [a.detach().clone() for s in slopes.values() for a in s.alpha]
    best = None
    for step in range(steps + 1):
        with torch.enable_grad():
            value = score(slopes)
            with torch.no_grad():
                if best is None:
                    best = value.detach()
                else:
                    better = value.detach() > best
                    best = torch.maximum(value.detach(), best)
                    for kept, a in zip(keep, (a for s in slopes.values() for a in s.alpha), strict=True):
                        view = better.view(*better.shape, *(1,) * (a.dim() - 2))
                        kept.copy_(torch.where(view, a.detach(), kept))
            if step == steps:
                break
            (-value.sum()).backward()
        opt.step()
    if gram is None:
        return score.best_a, score.best_bias  # type: ignore[return-value]
    with torch.no_grad():  # the rows at the slopes the surrogate liked best (CROWN's first among them)
        for kept, a in zip(keep, (a for s in slopes.values() for a in s.alpha), strict=True):
            a.copy_(kept)
        relaxed = {k: s.relaxation(bounds.relaxation[k]) for k, s in slopes.items()}
        return back_substitute(net, stop, lam, bounds, relaxed)


class _Adam:
    """Adam's ascent on α, projected to [0, 1] after each step (torch.optim's import alone costs seconds)."""

    def __init__(
        self, params: list[torch.Tensor], rate: float = RATE, betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        self.params, self.rate, self.betas, self.t = params, rate, betas, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            step = (m / (1 - b1**self.t)) / ((v / (1 - b2**self.t)).sqrt() + 1e-12)
            p.sub_(self.rate * step).clamp_(0, 1)
            p.grad = None


def _gram(net: Network, first: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For the affine map P before the first activation: (P·x + p (B, N), P·Pᵀ (N, N)), when N is small."""
    n_in, n_out = int(math.prod(net.input_shape)), int(math.prod(net.ops[first].in_shape))
    if n_out * max(n_in, n_out) > DENSE_BUDGET or any(isinstance(op, Fork) for op in net.ops[:first]):
        return None
    p, bias = net.dense_prefix(first)
    return x @ p.T + bias, p @ p.T


class _Score:
    """Rows' lower bounds at the current slopes, differentiable in them. Exact margins (`tight`): the true bound,
    its gradient the dual's point; neurons with a Gram matrix: the ball-only bound λ·c − ε·√(λ·G·λ) at the
    first activation's input (sound, looser than the ball ∩ box, and cheap: no input-sized rows); without:
    the cheap ball ∩ box bound itself. `best_a`/`best_bias` follow the best rows found (exact scores)."""

    def __init__(self, net, stop, lam, bounds, x, eps, tight, gram, first) -> None:  # noqa: ANN001
        self.net, self.stop, self.lam, self.bounds, self.x, self.eps = net, stop, lam, bounds, x, eps
        self.tight, self.gram, self.first = tight, gram, first
        self.best_a: torch.Tensor | None = None
        self.best_bias: torch.Tensor | None = None
        self.best: torch.Tensor | None = None
        self.last: tuple[torch.Tensor, ...] = ()

    def __call__(self, slopes: dict[int, _Slopes]) -> torch.Tensor:
        relaxed = {k: s.relaxation(self.bounds.relaxation[k]) for k, s in slopes.items()}
        if self.gram is not None:
            centre, g = self.gram
            lam, bias = back_substitute(self.net, self.stop, self.lam, self.bounds, relaxed, start=self.first)
            spread = torch.einsum("bsi,ij,bsj->bs", lam, g, lam).clamp(min=1e-30).sqrt()  # no NaN gradient at 0
            return torch.einsum("bsi,bi->bs", lam, centre) + bias - self.eps[:, None] * spread
        a, bias = back_substitute(self.net, self.stop, self.lam, self.bounds, relaxed)
        if self.tight:
            box = BallBox(a.detach(), self.x)
            value = torch.maximum(box.lower(self.eps), cheap_lower(a.detach(), self.x, self.eps)) + bias.detach()
            point = (self.x[:, None, :] - a.detach() * box.t_at(self.eps)[..., None]).clamp(0, 1)
            objective = (a * point).sum(-1) + bias
        else:
            objective = cheap_bounds(a, bias, self.x, self.eps)[0]
            value = objective.detach()
        if self.best is None or self.best_a is None or self.best_bias is None:
            self.best_a, self.best_bias, self.best = a.detach(), bias.detach(), value
        else:
            better = value > self.best
            self.best_a = torch.where(better[..., None], a.detach(), self.best_a)
            self.best_bias = torch.where(better, bias.detach(), self.best_bias)
            self.best = torch.maximum(value, self.best)
        return objective - objective.detach() + value  # the exact value, the surrogate's gradient
