"""The certified radius per image: the largest ε at which the bound proves every margin positive.

CROWN's bound at a radius ε is a linear function of the input, valid for every smaller radius too, so each
bound evaluated gives a certified radius directly (`concretize.certified_radius`, a closed form). The search,
batched over images, keeps a bracket [certified, failed] and probes inside it: first just above the best radius
certified so far, then halving. IBP gets a plain bisection. Every reported radius is one the bound certified.
"""

from __future__ import annotations

import torch

from engines.certify.alpha import alpha_linear_bounds
from engines.certify.concretize import certified_radius
from engines.certify.crown import linear_bounds, margin_lower
from engines.certify.network import Network
from engines.core.events import CancelCheck, never_cancel

GROW = 1.15  # α-CROWN's first probe: this factor above CROWN's radius (1.1–1.2 measured best)


def crown_radius(
    net: Network,
    x: torch.Tensor,
    spec: torch.Tensor,
    top: torch.Tensor,
    probes: int = 7,
    cancelled: CancelCheck = never_cancel,
    alpha_steps: int = 0,
    alpha_probes: int = 2,
    alpha_wider: float = 0.0,
) -> torch.Tensor:
    """Per image (B,), a radius (L2, pixel units) inside which CROWN proves every row of spec·logits positive;
    `top` (B,) bounds the search from above (the attack's distance, say). alpha_steps > 0: α-CROWN, the slopes
    optimised by that many gradient steps
    at `alpha_probes` more probes above CROWN's radius (`_alpha_probes`), for the images whose `top` is more
    than `alpha_wider` times CROWN's radius.

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
    if alpha_steps and not net.affine:
        wide = top.to(torch.float64) > alpha_wider * best
        best[wide] = _alpha_probes(
            net, x[wide], spec[wide], top.to(torch.float64)[wide], best[wide], alpha_steps, alpha_probes, cancelled
        )
    return best


def _alpha_probes(
    net: Network,
    x: torch.Tensor,
    spec: torch.Tensor,
    top: torch.Tensor,
    best: torch.Tensor,
    steps: int,
    probes: int,
    cancelled: CancelCheck,
) -> torch.Tensor:
    """α-CROWN's probes above CROWN's radius: first GROW times it; up again by the square root of that factor
    when the probe is certified, else halfway between the best radius certified and the probe."""
    eps = torch.minimum(best * GROW, top)
    for _ in range(probes):
        if cancelled():
            break
        live = eps > best * (1 + 1e-4)
        if not bool(live.any()):
            break
        idx = live.nonzero().squeeze(1)
        a, bias, _ = alpha_linear_bounds(net, x[idx], eps[idx], spec[idx], steps)
        r = certified_radius(a, bias, x[idx], eps[idx])
        passed = r >= eps[idx] * (1 - 1e-9)
        best[idx] = torch.maximum(best[idx], r)
        nxt = torch.where(passed, eps[idx] * GROW**0.5, (best[idx] + eps[idx]) / 2)
        eps[idx] = torch.minimum(nxt, top[idx])
        eps[~live] = best[~live]
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
