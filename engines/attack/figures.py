"""The attack's figure: the paper's Fig. 5/7 layout (original, difference ×10, adversarial) for the first
successful examples, with a row of Gaussian noise of the same rms to show that size alone does not fool the model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.core.evaluate import predict
from engines.report.figures import image_grid, save_png


def magnified_difference(x: torch.Tensor, x_adv: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    """Fig. 5's centre column: the difference ×10, shifted to mid-grey and clamped."""
    return (0.5 + factor * (x_adv - x)).clamp(0, 1)


def equal_rms_noise(x: torch.Tensor, rms: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """x plus Gaussian noise whose stddev equals each image's distortion, clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen) * rms.view(-1, *([1] * (x.ndim - 1)))
    return (x + noise).clamp(0, 1)


def attack_figure(
    samples: dict[str, torch.Tensor],
    model: nn.Module,
    device: torch.device | str,
    path: str | Path,
    *,
    examples: int = 8,
    seed: int = 0,
) -> Path | None:
    """Fig. 5/7 layout for the first successful examples, plus a row of equal-rms Gaussian noise."""
    ok = samples["success"].bool().nonzero().squeeze(1)[:examples]
    if ok.numel() == 0:
        return None
    x, x_adv, label = samples["x"][ok], samples["x_adv"][ok], samples["label"][ok]
    noisy = equal_rms_noise(x, samples["distortion"][ok], seed)
    pred_adv, pred_noise = predict(model, x_adv, device), predict(model, noisy, device)
    rows = [list(x), list(magnified_difference(x, x_adv)), list(x_adv), list(noisy)]
    captions = [
        [f"label {int(v)}" for v in label],
        [f"d={float(d):.3f}" for d in samples["distortion"][ok]],
        [f"pred {int(v)}" for v in pred_adv],
        [f"pred {int(v)}" for v in pred_noise],
    ]
    titles = ["original", "diff x10", "adversarial", "noise, same rms"]
    return save_png(image_grid(rows, captions, titles), path)
