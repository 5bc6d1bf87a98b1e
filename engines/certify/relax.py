"""Linear relaxations of activations on an interval [l, u] (Zhang et al. 2018, CROWN):
αL·x + βL ≤ f(x) ≤ αU·x + βU for every x in [l, u], elementwise.

ReLU: the chord above; below, slope 1 when u > −l, else 0 (or a given slope α in [0, 1], α-CROWN).
Sigmoid and tanh are convex on (−∞, 0] and concave on [0, ∞):
- u ≤ 0: chord above, tangent at the midpoint below; l ≥ 0: tangent at the midpoint above, chord below;
- l < 0 < u: above, the chord when f′(u) ≥ its slope, else the tangent at d ∈ [0, u] through (l, f(l));
  below, symmetrically the chord or the tangent at d ∈ [l, 0] through (u, f(u)). The tangent point is found by
  bisection and taken at the end of the bracket where the line still clears the far endpoint, so the line is
  sound whatever the bisection's accuracy. Every offset is widened by a float64 rounding allowance.

α-CROWN (`FreeTangents`): where a bound is a tangent, any tangent point in a range keeps it sound: below, any
d in [l, u] on a convex interval, any d in [l, d*] on a mixed one (d* the point above: f − line is ≥ 0 on the
convex side, and concave on [0, u] with both ends ≥ 0); above, symmetrically. The optimiser moves d in there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = 1e-12


@dataclass
class Relaxation:
    lower_slope: torch.Tensor
    lower_bias: torch.Tensor
    upper_slope: torch.Tensor
    upper_bias: torch.Tensor


def _sigmoid_grad(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _tanh_grad(x: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh(x).square()


SMOOTH = {"sigmoid": (torch.sigmoid, _sigmoid_grad), "tanh": (torch.tanh, _tanh_grad)}


def relax(kind: str, lo: torch.Tensor, hi: torch.Tensor, alpha: torch.Tensor | None = None) -> Relaxation:
    """The relaxation of activation `kind` on [lo, hi] (same shapes); `alpha`: ReLU's lower slopes."""
    if kind == "relu":
        return relax_relu(lo, hi, alpha)
    return relax_s_shaped(*SMOOTH[kind], lo, hi)


def relax_relu(lo: torch.Tensor, hi: torch.Tensor, alpha: torch.Tensor | None = None) -> Relaxation:
    on, off = lo >= 0, hi <= 0
    unstable = ~(on | off)
    width = (hi - lo).clamp(min=1e-300)
    up_slope = torch.where(on, 1.0, torch.where(off, 0.0, hi / width))
    up_bias = torch.where(unstable, -up_slope * lo, 0.0)
    low = (hi > -lo).to(lo.dtype) if alpha is None else alpha.clamp(0, 1)
    low_slope = torch.where(on, 1.0, torch.where(off, 0.0, low))
    zero = torch.zeros_like(lo)
    return Relaxation(low_slope, zero, up_slope, up_bias + PAD * unstable)


def _tangent(f, df, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = df(d)
    return k, f(d) - k * d


def relax_s_shaped(f, df, lo: torch.Tensor, hi: torch.Tensor, iters: int = 40) -> Relaxation:
    narrow = hi - lo < 1e-8
    mid = (lo + hi) / 2
    width = torch.where(narrow, torch.ones_like(lo), hi - lo)
    flo, fhi = f(lo), f(hi)
    chord = (fhi - flo) / width
    chord_bias = flo - chord * lo
    tan_k, tan_b = _tangent(f, df, mid)

    # mixed-sign intervals: tangent through the far endpoint, by bisection on the tangent point
    up_d = _tangent_point(f, df, lo, torch.zeros_like(lo), hi.clamp(min=0), iters, upper=True)
    low_d = _tangent_point(f, df, hi, lo.clamp(max=0), torch.zeros_like(lo), iters, upper=False)
    up_tk, up_tb = _tangent(f, df, up_d)
    low_tk, low_tb = _tangent(f, df, low_d)
    use_chord_up = df(hi) >= chord
    use_chord_low = df(lo) >= chord

    convex, concave = hi <= 0, lo >= 0
    up_slope = torch.where(convex, chord, torch.where(concave, tan_k, torch.where(use_chord_up, chord, up_tk)))
    up_bias = torch.where(convex, chord_bias, torch.where(concave, tan_b, torch.where(use_chord_up, chord_bias, up_tb)))
    low_slope = torch.where(concave, chord, torch.where(convex, tan_k, torch.where(use_chord_low, chord, low_tk)))
    low_bias = torch.where(
        concave, chord_bias, torch.where(convex, tan_b, torch.where(use_chord_low, chord_bias, low_tb))
    )
    # narrow intervals: one slope, offsets spanning both endpoints (curvature over 1e-8 is below PAD)
    k = df(mid)
    ends = torch.stack([flo - k * lo, fhi - k * hi])
    up_slope, low_slope = torch.where(narrow, k, up_slope), torch.where(narrow, k, low_slope)
    up_bias = torch.where(narrow, ends.amax(0), up_bias)
    low_bias = torch.where(narrow, ends.amin(0), low_bias)
    pad_up = PAD * (1 + up_bias.abs() + (up_slope * lo).abs() + (up_slope * hi).abs())
    pad_low = PAD * (1 + low_bias.abs() + (low_slope * lo).abs() + (low_slope * hi).abs())
    return Relaxation(low_slope, low_bias - pad_low, up_slope, up_bias + pad_up)


@dataclass
class FreeTangents:
    """Where a sigmoid/tanh line may be any tangent at d = a + α·(b − a), α in [0, 1], and CROWN's own α."""

    low_free: torch.Tensor
    low_a: torch.Tensor
    low_b: torch.Tensor
    low_init: torch.Tensor
    up_free: torch.Tensor
    up_a: torch.Tensor
    up_b: torch.Tensor
    up_init: torch.Tensor


def free_tangents(kind: str, lo: torch.Tensor, hi: torch.Tensor, iters: int = 40) -> FreeTangents:
    """The ranges of sound tangent points on [lo, hi] for sigmoid or tanh (narrow intervals and chords stay)."""
    f, df = SMOOTH[kind]
    wide = hi - lo >= 1e-8
    convex, concave = hi <= 0, lo >= 0
    mixed = ~(convex | concave)
    chord = (f(hi) - f(lo)) / torch.where(wide, hi - lo, torch.ones_like(lo))
    up_d = _tangent_point(f, df, lo, torch.zeros_like(lo), hi.clamp(min=0), iters, upper=True)
    low_d = _tangent_point(f, df, hi, lo.clamp(max=0), torch.zeros_like(lo), iters, upper=False)
    low_mixed = mixed & (df(lo) < chord)
    up_mixed = mixed & (df(hi) < chord)
    half = torch.full_like(lo, 0.5)
    return FreeTangents(
        wide & (convex | low_mixed),
        lo,
        torch.where(low_mixed, low_d, hi),
        torch.where(low_mixed, 1.0, half),
        wide & (concave | up_mixed),
        torch.where(up_mixed, up_d, lo),
        hi,
        torch.where(up_mixed, 0.0, half),
    )


def tangent_line(
    kind: str, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, upper: bool
) -> tuple[torch.Tensor, ...]:
    """The tangent at d as (slope, offset), the offset widened by the rounding allowance (outward)."""
    y = SMOOTH[kind][0](d)
    k = y * (1 - y) if kind == "sigmoid" else 1 - y.square()
    b = y - k * d
    pad = PAD * (1 + b.abs() + (k * lo).abs() + (k * hi).abs())
    return k, b + pad if upper else b - pad


def _tangent_point(f, df, far: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iters: int, upper: bool) -> torch.Tensor:
    """The tangent point d in [a, b] whose tangent passes through (far, f(far)).

    upper: d on the concave side, tangent above f(far) at the end returned (h(d) ≥ 0, h increasing in d);
    lower: d on the convex side, tangent below f(far) at the end returned."""
    ffar = f(far)
    lo, hi = a.clone(), b.clone()
    for _ in range(iters):
        d = (lo + hi) / 2
        h = f(d) + df(d) * (far - d) - ffar
        if upper:  # h grows with d; keep h(hi) ≥ 0
            ok = h >= 0
            hi, lo = torch.where(ok, d, hi), torch.where(ok, lo, d)
        else:  # h grows with d (toward 0 it clears f(far)); keep h(lo) ≤ 0
            ok = h <= 0
            lo, hi = torch.where(ok, d, lo), torch.where(ok, hi, d)
    return hi if upper else lo
