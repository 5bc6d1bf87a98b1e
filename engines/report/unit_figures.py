"""PNG grids in the style of the paper's Figures 1–4: one row per direction, its top-k images left to right.

Each row is captioned with what was measured (label purity, the majority label, the pairwise cosine),
so the reader's eye can be checked against the numbers. Digits are drawn dark on white as in the paper.
Pillow only; files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from engines.core.io import atomic_write
from engines.units.directions import UnitsComparison
from engines.units.scores import DirectionScores, label_scores

PAD = 4
BG = 255
INK = 0


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, _top, right, _bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


MAX_TILE = 112  # colour photographs are shrunk to this side so that a grid of 16 × 8 stays readable


def _tile(image: np.ndarray, scale: int, invert: bool) -> Image.Image:
    """(H, W) grey (inverted: ink on paper, as the paper shows digits) or (H, W, 3) colour, as shown."""
    arr = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    colour = arr.ndim == 3
    if invert and not colour:
        arr = 1.0 - arr
    tile = Image.fromarray((arr * 255).round().astype(np.uint8), mode="RGB" if colour else "L")
    w, h = _tile_size(tile.width, tile.height, scale)
    if (w, h) == (tile.width, tile.height):
        return tile
    resample = Image.Resampling.NEAREST if w > tile.width else Image.Resampling.BILINEAR
    return tile.resize((w, h), resample)


def _tile_size(w: int, h: int, scale: int) -> tuple[int, int]:
    """Small images enlarged ×scale; images larger than MAX_TILE shrunk to it; others as they are."""
    side = max(w, h)
    if side > MAX_TILE:
        return max(1, round(w * MAX_TILE / side)), max(1, round(h * MAX_TILE / side))
    factor = scale if side * scale <= MAX_TILE else 1
    return w * factor, h * factor


def direction_grid(
    rows: np.ndarray, captions: list[str], title: str = "", *, scale: int = 2, invert: bool = True
) -> Image.Image:
    """A grid of (n, k, H, W) grey or (n, k, H, W, 3) colour images in [0, 1]: row i is captioned captions[i]."""
    rows = np.asarray(rows)
    if rows.ndim not in (4, 5) or len(captions) != rows.shape[0]:
        raise ValueError(
            f"expected (n, k, H, W[, 3]) images with one caption per row, got {rows.shape} and {len(captions)}"
        )
    n, k, h, w = rows.shape[:4]
    mode = "RGB" if rows.ndim == 5 else "L"
    tile_w, tile_h = _tile_size(w, h, scale)
    font = _font(max(10, 6 * scale))
    title_font = _font(max(12, 7 * scale))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    cap_w = max([_text_width(probe, c, font) for c in captions] + [0]) + 2 * PAD
    title_h = (7 * scale + 3 * PAD) if title else PAD
    cell_w, cell_h = tile_w + PAD, tile_h + PAD
    width = max(cap_w + k * cell_w, _text_width(probe, title, title_font) + 2 * PAD)
    canvas = Image.new(mode, (width, title_h + n * cell_h), BG if mode == "L" else (BG,) * 3)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, fill=INK, font=title_font)
    for i in range(n):
        y = title_h + i * cell_h
        draw.text((PAD, y + tile_h // 2 - 6 * scale // 2), captions[i], fill=INK, font=font)
        for j in range(k):
            canvas.paste(_tile(rows[i, j], scale, invert), (cap_w + j * cell_w, y))
    return canvas


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 24) -> Image.Image:
    """Two panels next to each other (natural basis left, random directions right)."""
    mode = "RGB" if "RGB" in (left.mode, right.mode) else "L"
    canvas = Image.new(
        mode, (left.width + gap + right.width, max(left.height, right.height)), BG if mode == "L" else (BG,) * 3
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


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
    return direction_grid(grid, captions, title, scale=scale)


def _save_png(image: Image.Image, path: Path) -> Path:
    return atomic_write(path, lambda p: image.save(p, format="PNG"))


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
        "units_top": _save_png(left, out_dir / "units_top.png"),
        "random_top": _save_png(right, out_dir / "random_top.png"),
        "units_vs_random": _save_png(side_by_side(left, right), out_dir / "units_vs_random.png"),
    }
    if res.units.bottom is not None and res.random.bottom is not None:
        what = f"{res.layer}, bottom-{res.k}"
        files["units_bottom"] = _save_png(
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
        files["random_bottom"] = _save_png(
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
