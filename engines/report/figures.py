"""PNG figures with Pillow (no plotting library): captioned image grids, heat-coloured tables, atomic PNG writing.

Generic drawing only: each experiment draws its own figures (`engines.attack.figures`, `engines.units.figures`)
with these pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from engines.core.io import atomic_write

BG = (255, 255, 255)
INK = (0, 0, 0)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    a = img.detach().cpu().float().clamp(0, 1).numpy()
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    return (a * 255 + 0.5).astype(np.uint8)


def image_grid(
    rows: list[list[torch.Tensor]],
    captions: list[list[str]] | None = None,
    row_titles: list[str] | None = None,
    scale: int | None = None,
    pad: int = 4,
) -> Image.Image:
    """A grid of equally sized images with an optional caption under each and a title per row.

    `scale` None: MNIST-sized images are enlarged ×3, ImageNet-sized ones shown at their own size."""
    font = ImageFont.load_default()
    h, w = to_uint8(rows[0][0]).shape[:2]
    scale = scale if scale is not None else max(1, round(84 / max(h, w)))
    cell_w, cell_h = w * scale, h * scale
    cap_h = 12 if captions else 0
    title_w = 90 if row_titles else 0
    ncols = max(len(r) for r in rows)
    width = title_w + ncols * (cell_w + pad) + pad
    height = len(rows) * (cell_h + cap_h + pad) + pad
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        top = pad + i * (cell_h + cap_h + pad)
        if row_titles:
            draw.text((4, top + cell_h // 2 - 6), row_titles[i], fill=INK, font=font)
        for j, img in enumerate(row):
            tile = Image.fromarray(to_uint8(img)).convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
            left = title_w + pad + j * (cell_w + pad)
            canvas.paste(tile, (left, top))
            if captions:
                draw.text((left, top + cell_h + 1), captions[i][j], fill=INK, font=font)
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    return atomic_write(Path(path), lambda p: image.save(p, format="PNG"))


def _heat(value: float) -> tuple[int, int, int]:
    """0 % white -> 100 % deep red."""
    t = 0.0 if not np.isfinite(value) else min(max(value / 100.0, 0.0), 1.0)
    return (255 - int(55 * t), int(255 * (1 - t) ** 1.2), int(255 * (1 - t) ** 1.2))


def heatmap_png(
    values: np.ndarray,
    row_names: list[str],
    col_names: list[str],
    path: str | Path,
    *,
    extra: list[str] | None = None,
    extra_title: str = "",
    title: str = "",
) -> Path:
    """A heat-coloured table of percentages, one cell per (row, column), with an optional extra column."""
    font = ImageFont.load_default()
    cell_w, cell_h = 84, 22
    label_w = max(120, 7 * max(len(r) for r in row_names) + 10)
    ncols = len(col_names) + (1 if extra else 0)
    top = 22 + (18 if title else 0)
    canvas = Image.new("RGB", (label_w + ncols * cell_w + 8, top + len(row_names) * cell_h + 8), BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 4), title, fill=INK, font=font)
    heads = list(col_names) + ([extra_title] if extra else [])
    for j, name in enumerate(heads):
        draw.text((label_w + j * cell_w + 4, top - 18), name[:13], fill=INK, font=font)
    for i, name in enumerate(row_names):
        y0 = top + i * cell_h
        draw.text((6, y0 + 5), name, fill=INK, font=font)
        for j in range(len(col_names)):
            x0 = label_w + j * cell_w
            draw.rectangle([x0, y0, x0 + cell_w - 2, y0 + cell_h - 2], fill=_heat(float(values[i, j])))
            ink = BG if float(values[i, j]) > 60 else INK  # light text on the darkest reds
            draw.text((x0 + 6, y0 + 5), f"{values[i, j]:.1f}%", fill=ink, font=font)
        if extra:
            draw.text((label_w + len(col_names) * cell_w + 6, y0 + 5), extra[i], fill=INK, font=font)
    return save_png(canvas, path)
