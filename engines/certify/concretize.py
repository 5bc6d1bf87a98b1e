"""The smallest value of a linear function a·z over the L2 ball {‖z − x‖₂ ≤ ε} intersected with the box [0, 1]ⁿ.

Two lower bounds, both sound for every input:
- `cheap`: max of the box bound Σ min(aᵢ, 0) and a·x − ε‖a_F‖₂, where a_F keeps only the coordinates that can
  move in the direction lowering a·z (a pixel at 0 cannot darken, one at 1 cannot brighten). One norm per row:
  used for the many intermediate neurons.
- `tight`: the exact minimum through its one-dimensional Lagrange dual. For μ = 1/t > 0,
  g(t) = min_{z ∈ box} a·z + (‖z − x‖² − ε²)/(2t), attained at z = clip(x − t·a, 0, 1), is a lower bound for
  every t (weak duality) and equals the minimum at the t where ‖z(t) − x‖ = ε (strong duality). That t is found
  in closed form after sorting the coordinates by when they meet the box (`BallBox`); the reported value is the
  dual evaluated there, so rounding can only cost tightness, not soundness. Used for the final margins.
Rows `a` come as (B, S, n) per image, or (S, n) shared by every image (a model's first layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SLACK = 1e-12  # relative allowance for float64 rounding, taken off every bound


def movable(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down): 1.0 where a pixel can still grow (x < 1), where it can still shrink (x > 0)."""
    return (x < 1).to(torch.float64), (x > 0).to(torch.float64)


def _dot(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row products (B, S, m): a (B, S, n) or shared (S, n), v (B, n, m)."""
    return torch.einsum("sn,bnm->bsm", a, v) if a.dim() == 2 else torch.bmm(a, v)


@dataclass
class RowBounds:
    """Linear bounds concretised once: at any radius ε, lower = max(low_centre − ε·low_spread, low_box) and
    upper = min(up_centre + ε·up_spread, up_box) (B, S), so one set of rows serves every radius up to the
    one it was built for (the relaxations behind the rows hold there)."""

    low_centre: torch.Tensor
    low_spread: torch.Tensor
    low_box: torch.Tensor
    up_centre: torch.Tensor
    up_spread: torch.Tensor
    up_box: torch.Tensor
    slack: torch.Tensor  # float64 rounding allowance, taken off both sides

    def at(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = eps.to(torch.float64)[:, None]
        low = torch.maximum(self.low_centre - e * self.low_spread, self.low_box)
        high = torch.minimum(self.up_centre + e * self.up_spread, self.up_box)
        return low - self.slack, high + self.slack

    def split_signed(self, n: int) -> RowBounds:
        """Rows [a; −a] (2n of them) as n rows: the lower bounds of the first half, and the upper bounds that the
        lower bounds of the second half give (a·z ≤ −min(−a·z))."""
        first = [t[:, :n] for t in (self.low_centre, self.low_spread, self.low_box)]
        second = [t[:, n:] for t in (self.low_centre, self.low_spread, self.low_box)]
        slack = torch.maximum(self.slack[:, :n], self.slack[:, n:])
        return RowBounds(first[0], first[1], first[2], -second[0], second[1], -second[2], slack)


def row_bounds(a: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> RowBounds:
    """The ball ∩ box bounds of rows a (B, S, n) or shared (S, n) around x (B, n), ready for any radius."""
    up, down = movable(x)
    pos = a.clamp(min=0)
    neg = a - pos
    sides = torch.stack([down, up], -1)  # (B, n, 2)
    p2, n2 = _dot(pos.square(), sides), _dot(neg.square(), sides)
    centre = _dot(a, x[..., None]).squeeze(-1) + bias
    box_low, box_up = neg.sum(-1), pos.sum(-1)
    slack = (SLACK * (1 + box_up - box_low)).expand(centre.shape)
    return RowBounds(
        centre,
        (p2[..., 0] + n2[..., 1]).clamp(min=0).sqrt(),
        box_low.expand(centre.shape) + bias,
        centre,
        (p2[..., 1] + n2[..., 0]).clamp(min=0).sqrt(),
        box_up.expand(centre.shape) + bias,
        slack,
    )


def cheap_bounds(a: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(lower, upper) of a·z + bias over ball ∩ box, rows (B, S, n) or (S, n): sound, one norm per row."""
    return row_bounds(a, bias, x).at(eps)


def cheap_lower(a: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """A lower bound of min a·z over ball ∩ box, per image and row (B, S)."""
    return cheap_bounds(a, torch.zeros((), dtype=torch.float64, device=x.device), x, eps)[0]


class BallBox:
    """min a·z over ball ∩ box as a function of the radius, for rows a (B, S, n) around images x (B, n).

    With t = 1/μ, coordinate i moves by −aᵢt until it meets its side of the box (after t ≥ τᵢ = capᵢ/|aᵢ|,
    capᵢ = xᵢ when aᵢ > 0, else 1 − xᵢ). With the τ sorted, on the k-th piece (the first k coordinates stopped)
    ‖z(t) − x‖² = C_k + t²S_k and a·z(t) = a·x − P_k − t·S_k: the radius for a value, or the value for a radius,
    is found in closed form after one sort."""

    def __init__(self, a: torch.Tensor, x: torch.Tensor) -> None:
        if a.dim() == 2:
            a = a.expand(x.shape[0], *a.shape)
        self.a, self.x = a, x[:, None, :].expand_as(a)
        absa = a.abs()
        cap = torch.where(a > 0, self.x, 1 - self.x)
        tau = torch.where(absa > 0, cap / absa.clamp(min=1e-300), torch.inf)
        self.tau, order = tau.sort(-1)
        a2 = absa.square().gather(-1, order)
        c2 = torch.where(absa > 0, cap.square(), 0.0).gather(-1, order)
        pc = (absa * cap).gather(-1, order)
        zero = a2.new_zeros(*a2.shape[:-1], 1)
        self.c = torch.cat([zero, c2.cumsum(-1)], -1)  # (B, S, n + 1): piece k has the first k stopped
        self.p = torch.cat([zero, pc.cumsum(-1)], -1)
        total = a2.sum(-1, keepdim=True)
        self.s = (total - torch.cat([zero, a2.cumsum(-1)], -1)).clamp(min=0)
        self.ax = (a * self.x).sum(-1, keepdim=True)
        ends = torch.cat([self.tau, torch.full_like(zero, torch.inf)], -1)  # piece k ends at τ_k
        finite = torch.where(torch.isfinite(ends), ends, 0.0)
        self.end_d2 = torch.where(torch.isfinite(ends), self.c + finite.square() * self.s, torch.inf)
        self.end_v = torch.where(torch.isfinite(ends), self.ax - self.p - finite * self.s, self.ax - self.p)

    def t_at(self, eps: torch.Tensor) -> torch.Tensor:
        """The dual's best t for radius eps (B,): (B, S)."""
        e2 = eps.to(torch.float64).square()[:, None, None]
        k = (self.end_d2 < e2).sum(-1, keepdim=True).clamp(max=self.c.shape[-1] - 1)
        c, s = self.c.gather(-1, k), self.s.gather(-1, k)
        t = ((e2 - c).clamp(min=0) / s.clamp(min=1e-300)).sqrt()
        t = torch.where(s > 0, t, 1e30)  # every coordinate stopped: the box bound (μ → 0)
        return t.squeeze(-1).clamp(min=1e-30)

    def lower(self, eps: torch.Tensor) -> torch.Tensor:
        """A sound lower bound (the dual value at the best t, close to the exact minimum) (B, S)."""
        t = self.t_at(eps)
        z = (self.x - self.a * t[..., None]).clamp(0, 1)
        d2 = (z - self.x).square().sum(-1)
        g = (self.a * z).sum(-1) + (d2 - eps.to(torch.float64).square()[:, None]) / (2 * t)
        return g - SLACK * (1 + self.a.abs().sum(-1))

    def radius(self, floor: torch.Tensor) -> torch.Tensor:
        """Per row (B, S), the largest radius at which min a·z is still ≥ floor (inf: the whole box)."""
        f = floor[..., None]
        k = (self.end_v >= f).sum(-1, keepdim=True)  # the crossing lies in piece k
        inside = k <= self.c.shape[-1] - 1
        k = k.clamp(max=self.c.shape[-1] - 1)
        c, s, p = self.c.gather(-1, k), self.s.gather(-1, k), self.p.gather(-1, k)
        t = ((self.ax - p - f) / s.clamp(min=1e-300)).clamp(min=0)
        r = (c + t.square() * s).sqrt()
        r = torch.where(s > 0, r, torch.inf)
        r = torch.where(self.ax < f, 0.0, r)  # not even the centre reaches the floor
        return torch.where(inside, r, torch.inf).squeeze(-1)


def tight_lower(a: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """min a·z over ball ∩ box (B, S), never above the true minimum (the dual at its closed-form best t),
    and never below the cheap bound."""
    return torch.maximum(BallBox(a, x).lower(eps), cheap_lower(a, x, eps))


def certified_radius(a: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """The largest radius ≤ cap (B,) at which every row of a·z + bias stays positive over ball ∩ box, checked
    with the sound dual bound (shrunk until it passes, 0 if it never does)."""
    box = BallBox(a, x)
    r = torch.minimum(box.radius(-bias).amin(-1), cap.to(torch.float64)) * (1 - 1e-9)
    for _ in range(4):
        ok = (box.lower(r) + bias).amin(-1) > 0
        if bool(ok.all()):
            break
        r = torch.where(ok, r, r * (1 - 1e-6))
    ok = (box.lower(r) + bias).amin(-1) > 0
    return torch.where(ok, r, 0.0)
