"""certify's figure: per image the bracket [certified lower bound, attack's distortion], sorted, and the
histogram of upper / lower (Pillow, as the project's other figures)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from engines.report.figures import BG, INK, save_png

LOWER, UPPER, EXACT, BAR, GRID = (40, 90, 200), (200, 50, 40), (20, 140, 60), (120, 120, 120), (225, 225, 225)
PANEL_W, PANEL_H, MARGIN = 460, 300, 44


def certify_figure(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Left: brackets sorted by their upper end (rms); right: histogram of upper / lower. None if no image
    has both ends."""
    both = [r for r in rows if _pos(r.get("upper")) and _pos(r.get("lower"))]
    if not both:
        return None
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (2 * PANEL_W + 3 * MARGIN, PANEL_H + 2 * MARGIN + 16), BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, 6), title, fill=INK, font=font)
    _brackets(draw, font, sorted(both, key=lambda r: r["upper"]), MARGIN, MARGIN + 10)
    _histogram(draw, font, [r["upper"] / r["lower"] for r in both], 2 * MARGIN + PANEL_W, MARGIN + 10)
    return save_png(canvas, path)


def _pos(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _axes(draw: ImageDraw.ImageDraw, font: Any, left: int, top: int, x_label: str, y_label: str) -> None:
    draw.rectangle([left, top, left + PANEL_W, top + PANEL_H], outline=INK)
    draw.text((left + PANEL_W // 2 - 3 * len(x_label), top + PANEL_H + 18), x_label, fill=INK, font=font)
    draw.text((left + 4, top + 4), y_label, fill=INK, font=font)


def _brackets(draw: ImageDraw.ImageDraw, font: Any, rows: list[dict[str, Any]], left: int, top: int) -> None:
    hi = max(r["upper"] for r in rows) * 1.05
    _axes(draw, font, left, top, f"images sorted by attack distortion ({len(rows)})", "rms distortion")
    for k in range(1, 5):  # grid lines with their values
        y = top + PANEL_H - k * PANEL_H // 5
        draw.line([left + 1, y, left + PANEL_W - 1, y], fill=GRID)
        draw.text((left - 40, y - 6), f"{k * hi / 5:.3f}", fill=INK, font=font)
    step = PANEL_W / max(len(rows), 1)

    def y_of(v: float) -> float:
        return top + PANEL_H - PANEL_H * v / hi

    tick = max(1.0, min(3.0, step / 2))
    for i, r in enumerate(rows):
        x = left + (i + 0.5) * step
        draw.line([x, y_of(r["lower"]), x, y_of(r["upper"])], fill=BAR)
        for key, colour in (("upper", UPPER), ("lower", LOWER), ("exact", EXACT)):
            if _pos(r.get(key)):
                draw.line([x - tick, y_of(r[key]), x + tick, y_of(r[key])], fill=colour, width=2)
    legend = [("attack (upper)", UPPER), ("certified (lower)", LOWER)]
    if any(_pos(r.get("exact")) for r in rows):
        legend.append(("exact minimum", EXACT))
    for k, (name, colour) in enumerate(legend):
        draw.rectangle([left + 10, top + 20 + 12 * k, left + 16, top + 26 + 12 * k], fill=colour)
        draw.text((left + 20, top + 17 + 12 * k), name, fill=INK, font=font)


def _histogram(draw: ImageDraw.ImageDraw, font: Any, ratios: list[float], left: int, top: int, bins: int = 24) -> None:
    lo, hi = 1.0, max(max(ratios), 1.0 + 1e-9)
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in ratios:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    top_count = max(counts)
    _axes(draw, font, left, top, f"upper / lower (1 to {hi:.2f})", f"images (max {top_count})")
    bar_w = PANEL_W / bins
    for k, c in enumerate(counts):
        h = PANEL_H * c / top_count * 0.9
        x0 = left + k * bar_w
        draw.rectangle([x0 + 1, top + PANEL_H - h, x0 + bar_w - 1, top + PANEL_H], fill=LOWER)
    ratios = sorted(ratios)
    median = ratios[len(ratios) // 2]
    xm = left + PANEL_W * (median - lo) / (hi - lo)
    draw.line([xm, top, xm, top + PANEL_H], fill=UPPER)
    draw.text((xm + 4, top + 18), f"median {median:.2f}", fill=UPPER, font=font)
