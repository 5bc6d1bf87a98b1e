"""Perturbations of a set at a given rms: Gaussian noise and amplified adversarial directions.

Both stay inside [0, 1] (images are clipped), and clipping shrinks a perturbation: on MNIST's
black background half of any noise is cut away. So the scale of each image's perturbation is
solved for (per image, by bisection) such that the rms of the CLIPPED perturbation,
sqrt(Σ(x′ − x)² / n), equals the requested value. The rms is the paper's distortion measure, so
noise rows and amplified rows are comparable with the adversarial rows' distortion column.
"""

from __future__ import annotations

import torch

from engines.attack.search import paper_distortion


def scale_to_rms(x: torch.Tensor, direction: torch.Tensor, rms: float, iters: int = 60) -> torch.Tensor:
    """clip(x + s·direction) with s per image chosen so that the clipped perturbation has `rms`.

    Images whose direction cannot reach `rms` even at a large scale (zero direction, everything
    saturated) get the largest reachable perturbation.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    base = paper_distortion(x, x + direction).clamp_min(1e-12)
    hi = torch.full((x.shape[0],), rms, dtype=x.dtype) / base * 64.0
    lo = torch.zeros_like(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        r = paper_distortion(x, (x + mid.view(shape) * direction).clamp(0, 1))
        too_big = r > rms
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    return (x + lo.view(shape) * direction).clamp(0, 1)


def _standard_normal(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def gaussian_noise(x: torch.Tensor, rms: float, seed: int = 0) -> torch.Tensor:
    """x plus seeded Gaussian noise, clipped to [0, 1], whose clipped rms is `rms` per image."""
    return scale_to_rms(x, _standard_normal(x, seed), rms)


def unclipped_noise(x: torch.Tensor, stddev: float, seed: int = 0) -> torch.Tensor:
    """x + N(0, stddev²), left outside [0, 1] where it falls there.

    Not an image any more, but most likely what the paper's noise rows measured: its Table 2 errors
    under stddev 0.3 match this reading and are far below those of clipped noise of the same rms.
    """
    return x + stddev * _standard_normal(x, seed)


def amplify(x: torch.Tensor, x_adv: torch.Tensor, rms: float) -> torch.Tensor:
    """Table 4's magnified examples: x + s·(x′ − x) with rms `rms` (the paper's stated intent).

    The paper writes x + 0.1·(x′ − x)/‖x′ − x‖₂, which would give an rms of 0.1/√784 ≈ 0.0036, yet
    says the distortion grows "from stddev 0.06 to 0.1"; we implement the stddev.
    """
    return scale_to_rms(x, x_adv - x, rms)
