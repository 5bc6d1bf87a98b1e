"""Captioned image grids in the style of the paper's Figures 1–4: one row per caption, its images left to right.

Grey images are drawn dark on white (ink on paper) as the paper shows digits; colour images as they are,
small ones enlarged and large ones shrunk so that a grid of many rows stays readable. Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def captioned_grid(
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
    """Two panels next to each other, top-aligned."""
    mode = "RGB" if "RGB" in (left.mode, right.mode) else "L"
    canvas = Image.new(
        mode, (left.width + gap + right.width, max(left.height, right.height)), BG if mode == "L" else (BG,) * 3
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas
