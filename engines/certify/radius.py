"""The certified radius per image: the largest ε at which the bound proves every margin positive.

CROWN's bound at a radius ε is a linear function of the input, valid for every smaller radius too, so each
bound evaluated gives a certified radius directly (`concretize.certified_radius`, a closed form). The search,
batched over images, keeps a bracket [certified, failed] and probes inside it: first just above the best radius
certified so far, then halving. IBP gets a plain bisection. Every reported radius is one the bound certified.
"""

from __future__ import annotations

import torch

from engines.certify.concretize import certified_radius
from engines.certify.crown import linear_bounds, margin_lower
from engines.certify.network import Network
from engines.core.events import CancelCheck, never_cancel


def crown_radius(
    net: Network,
    x: torch.Tensor,
    spec: torch.Tensor,
    top: torch.Tensor,
    probes: int = 7,
    cancelled: CancelCheck = never_cancel,
) -> torch.Tensor:
    """Per image (B,), a radius (L2, pixel units) inside which CROWN proves every row of spec·logits positive;
    `top` (B,) bounds the search from above (the attack's distance, say).

    Each probe at a radius ε runs CROWN there and reads off, in closed form, the radius r(ε) ≤ ε its linear
    bound certifies. The search keeps a bracket [lo, hi] (certified at lo, not at hi) and probes next at the
    secant root of r(ε) − ε over the bracket (halving when the secant stalls)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    hi = top.to(torch.float64).clamp(min=1e-12)
    best = torch.zeros_like(hi)
    lo, f_lo = torch.zeros_like(hi), torch.full_like(hi, torch.nan)
    f_hi = torch.full_like(hi, torch.nan)
    eps = hi.clone()
    for k in range(probes):
        if k and cancelled():
            break
        a, bias, _ = linear_bounds(net, x, eps, spec)
        r = certified_radius(a, bias, x, eps)
        best = torch.maximum(best, r)
        ok = r >= eps * (1 - 1e-9)
        lo, f_lo = torch.where(ok, eps, lo), torch.where(ok, 0.0, f_lo)
        hi, f_hi = torch.where(ok, hi, eps), torch.where(ok, f_hi, r - eps)
        lo = torch.maximum(lo, best)
        if net.affine:
            break
        eps = _next_probe(lo, hi, best, f_hi, k)
    return best


def _next_probe(lo: torch.Tensor, hi: torch.Tensor, best: torch.Tensor, f_hi: torch.Tensor, k: int) -> torch.Tensor:
    """The next radius to try, in the bracket [lo, hi] (certified at lo, not at hi). Nothing certified yet (a
    ReLU network's bound often certifies nothing beyond a failing radius): a quarter of hi. After the first
    failure with something certified: a quarter of the way up from it (the relaxations are tighter there, so
    it usually passes). Then halve, geometrically while the bracket spans more than a factor 2."""
    width = hi - lo
    if k == 0:
        step = torch.where(best > 0, best + 0.25 * width, hi / 4)
    else:
        step = torch.where(lo <= 0, hi / 4, torch.where(hi > 2 * lo, (lo * hi).sqrt(), lo + 0.5 * width))
    return torch.where(width > 1e-4 * hi, step, lo)


def bisect_radius(
    net: Network,
    x: torch.Tensor,
    spec: torch.Tensor,
    top: torch.Tensor,
    method: str = "ibp",
    steps: int = 20,
    cancelled: CancelCheck = never_cancel,
) -> torch.Tensor:
    """Plain bisection on [0, top] for a bound without a linear form (IBP): the largest radius tried that it
    certified (0 if none)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    lo = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    hi = top.to(torch.float64).clone()
    ok = margin_lower(net, x, hi, spec, method).amin(-1) > 0
    lo = torch.where(ok, hi, lo)
    for _ in range(steps):
        if cancelled():
            break
        mid = (lo + hi) / 2
        ok = margin_lower(net, x, mid, spec, method).amin(-1) > 0
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo
