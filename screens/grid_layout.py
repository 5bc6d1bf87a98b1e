"""How an image grid is laid out: the tile size (legible, a whole upscale in pixels) and how many fit.

In cells, a tile gets at least half the image's own resolution (14 columns × 7 rows for a 28×28 image)
and its native size where it fits; in pixels (sixel, kitty) a whole upscale, ×2 or more for a 28×28
image. Fewer tiles per line rather than smaller ones; `zoom` raises both bounds a step at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

GAP, ITEM_GAP, MARGIN = 1, 3, 1
CELL_SCALES = (1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1, 3 / 2, 2, 3, 4)
PIXEL_SCALES = (1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
MIN_TILE_PX, MAX_TILE_PX = 56, 112  # pixel mode: a small image is enlarged to at least / by default at most this
MAX_ZOOM = 6


class Layout(NamedTuple):
    """How a grid is laid out: a tile's box in cells, how many tiles and items a line holds."""

    tile_cols: int
    shown: int  # images of an item shown on its line
    per_line: int  # items per visual line
    text_lines: int  # title (and caption) lines per visual line
    tile_rows: int
    image_px: tuple[int, int]  # the scaled image in pixels (terminal pixels, or half-block pixels: 1×2 per cell)
    scale: float  # pixels per image pixel

    @property
    def item_cols(self) -> int:
        return self.shown * self.tile_cols + GAP * (self.shown - 1)

    @property
    def line_height(self) -> int:
        return self.tile_rows + self.text_lines


def scale_levels(pixels: bool, native: tuple[int, int]) -> tuple[tuple[float, ...], float, float]:
    """(the scales a tile may take, the legible minimum, the default maximum) for an image of `native` size."""
    side = max(native)
    if not pixels:
        return CELL_SCALES, 1 / 2, 1.0
    floor = float(max(1, math.ceil(MIN_TILE_PX / side))) if side < MIN_TILE_PX else 1.0
    cap = max(floor, float(max(1, MAX_TILE_PX // side)))
    return PIXEL_SCALES, floor, cap


def plan(
    native: tuple[int, int],
    n: int,
    width: int,
    height: int,
    text_lines: int,
    cell_px: tuple[int, int],
    pixels: bool,
    zoom: int = 0,
) -> Layout:
    """The layout of items of `n` images of `native` (width, height) pixels in `width`×`height` cells.

    The largest scale between the legible minimum (raised by `zoom` steps) and the default maximum at
    which all `n` images fit a line; if none, the minimum, with fewer images shown; if a single tile
    does not fit at the minimum (a 224-pixel image in 80 columns), the largest scale that fits."""
    levels, floor, cap = scale_levels(pixels, native)
    step = max(0, zoom)  # each zoom step raises both bounds one level
    floor = levels[min(len(levels) - 1, levels.index(floor) + step)]
    cap = max(floor, levels[min(len(levels) - 1, levels.index(cap) + step)])

    def box(s: float) -> tuple[int, int, int, int]:
        iw, ih = max(1, round(native[0] * s)), max(1, round(native[1] * s))
        return math.ceil(iw / cell_px[0]), math.ceil(ih / cell_px[1]), iw, ih

    def fits(s: float, count: int) -> bool:
        cols, rows, _, _ = box(s)
        return count * cols + GAP * (count - 1) <= width and rows + text_lines <= max(height, 1)

    chosen = next((s for s in reversed(levels) if floor <= s <= cap and fits(s, n)), None)
    if chosen is None:
        chosen = floor
        if not fits(floor, 1):
            chosen = next((s for s in reversed(levels) if s < floor and fits(s, 1)), levels[0])
    cols, rows, iw, ih = box(chosen)
    shown = max(1, min(n, (width + GAP) // (cols + GAP)))
    item_cols = shown * cols + GAP * (shown - 1)
    per_line = max(1, (width + ITEM_GAP) // (item_cols + ITEM_GAP))
    return Layout(cols, shown, per_line, text_lines, rows, (iw, ih), chosen)
