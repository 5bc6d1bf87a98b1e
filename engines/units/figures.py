"""The units experiment's figures (the paper's Figures 1–4): one row per direction, its top-k images left to right.

Each row is captioned with what was measured (label purity, the majority label, the pairwise cosine),
so the reader's eye can be checked against the numbers. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.report.figures import save_png
from engines.report.grids import captioned_grid, side_by_side
from engines.units.directions import UnitsComparison
from engines.units.scores import DirectionScores, label_scores


def row_caption(d: DirectionScores, row: int) -> str:
    """e.g. 'unit 17  purity 0.88 (7)  cos 0.61', or 'rand 3 ...' for a random direction."""
    name = f"unit {int(d.ids[row])}" if d.kind == "unit" else f"rand {int(d.ids[row])}"
    parts = [name]
    if np.isfinite(d.purity[row]):
        parts.append(f"purity {d.purity[row]:.2f} ({int(d.majority[row])})")
    if np.isfinite(d.cosine[row]):
        parts.append(f"cos {d.cosine[row]:.2f}")
    return "  ".join(parts)


def _bottom_caption(d: DirectionScores, row: int, labels: np.ndarray | None) -> str:
    name = f"unit {int(d.ids[row])}" if d.kind == "unit" else f"rand {int(d.ids[row])}"
    if labels is None or d.bottom is None:
        return name
    purity, _entropy, majority = label_scores(labels[d.bottom[row]][None, :], int(labels.max()) + 1)
    return f"{name}  purity {purity[0]:.2f} ({int(majority[0])})"


def panel(
    d: DirectionScores,
    rows: np.ndarray,
    images: torch.Tensor | np.ndarray,
    title: str,
    *,
    bottom: bool = False,
    labels: torch.Tensor | np.ndarray | None = None,
    scale: int = 2,
) -> Image.Image:
    """The top-k (or bottom-k) images of the chosen rows of `d` as one captioned grid.

    Bottom-k rows are captioned with the purity of the bottom-k labels when `labels` are given.
    """
    pics = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    pics = pics.reshape(pics.shape[0], -1, pics.shape[-2], pics.shape[-1])
    pics = np.transpose(pics[:, :3], (0, 2, 3, 1)) if pics.shape[1] == 3 else pics[:, 0]
    which = d.bottom if bottom else d.top
    if which is None:
        raise ValueError("these directions were scored without their bottom-k")
    rows = np.asarray(rows, dtype=np.int64)
    grid = pics[which[rows]] if len(rows) else np.zeros((0, which.shape[1], *pics.shape[1:]), np.float32)
    if bottom:
        lab = None if labels is None else np.asarray(labels, dtype=np.int64)
        captions = [_bottom_caption(d, int(r), lab) for r in rows]
    else:
        captions = [row_caption(d, int(r)) for r in rows]
    return captioned_grid(grid, captions, title, scale=scale)


def save_unit_figures(
    res: UnitsComparison,
    images: torch.Tensor | np.ndarray,
    out_dir: str | Path,
    *,
    labels: torch.Tensor | np.ndarray | None = None,
    scale: int = 2,
) -> dict[str, Path]:
    """Write units_top.png, random_top.png and units_vs_random.png (+ *_bottom.png when scored)."""
    out_dir = Path(out_dir)
    what = f"{res.layer}, top-{res.k}"
    left = panel(res.units, res.shown_units, images, f"natural basis e_i ({what})", scale=scale)
    right = panel(res.random, res.shown_random, images, f"random directions v ({what})", scale=scale)
    files = {
        "units_top": save_png(left, out_dir / "units_top.png"),
        "random_top": save_png(right, out_dir / "random_top.png"),
        "units_vs_random": save_png(side_by_side(left, right), out_dir / "units_vs_random.png"),
    }
    if res.units.bottom is not None and res.random.bottom is not None:
        what = f"{res.layer}, bottom-{res.k}"
        files["units_bottom"] = save_png(
            panel(
                res.units,
                res.shown_units,
                images,
                f"natural basis e_i ({what})",
                bottom=True,
                labels=labels,
                scale=scale,
            ),
            out_dir / "units_bottom.png",
        )
        files["random_bottom"] = save_png(
            panel(
                res.random,
                res.shown_random,
                images,
                f"random directions v ({what})",
                bottom=True,
                labels=labels,
                scale=scale,
            ),
            out_dir / "random_bottom.png",
        )
    return files
