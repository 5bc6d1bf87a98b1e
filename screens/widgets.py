"""Reusable widgets: the navigation bar, log-scale range bars, heat colours (the image grid: `image_grid`)."""

from __future__ import annotations

import math
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from screens.image_grid import GridItem, ImageGrid

__all__ = ["GridItem", "ImageGrid", "NavBar", "cursor_item", "fmt_num", "heat_style", "log_range_bar"]

NAV = (
    ("models", "1", "Models"),
    ("gallery", "2", "Gallery"),
    ("attack", "3", "Attack"),
    ("transfer", "4", "Transfer"),
    ("bounds", "5", "Bounds"),
    ("runs", "6", "Runs"),
)


class NavBar(Widget):
    """The top line: the six screens with their keys (the current one lit), the active model and device."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; }
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def render(self) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        if self.size.width >= 100:
            line.append(" blindspot ", style="bold")
        for mode, key, label in NAV:
            style = "reverse bold" if mode == self.mode else ""
            line.append(" ")
            line.append(f" {key} {label} ", style=style)
        state = getattr(self.app, "state", None)  # a WorkbenchState when hosted by the workbench
        running = len(state.running_jobs()) if state is not None else 0
        if running:
            line.append(f" ⚙{running} j", style="bold yellow")  # j opens the jobs panel
        if state is not None:
            name = str(state.active_model).rsplit("/", 1)[-1]
            line.append(
                f"  {'model ' if self.size.width >= 100 else ''}{name} · {state.settings.device}", style="italic"
            )
        return line


def log_range_bar(lower: float, upper: float, lo: float, hi: float, width: int) -> Text:
    """A bar from `lower` to `upper` on a log10 axis spanning [lo, hi], `width` cells wide."""
    width = max(4, width)
    if not (lo > 0 and hi > lo):
        return Text("·" * width, style="dim")

    def pos(v: float) -> int:
        v = min(max(v, lo), hi)
        return round((math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (width - 1))

    a = pos(lower) if lower > 0 else 0
    b = pos(upper) if upper > 0 else 0
    text = Text(no_wrap=True)
    text.append("·" * a, style="dim")
    text.append("━" * max(1, b - a + 1), style="bold cyan")
    text.append("·" * max(0, width - b - 1), style="dim")
    return text


def heat_style(value: float, vmin: float = 0.0, vmax: float = 100.0) -> Style:
    """Background from dark blue (low) through red to yellow (high), with readable text."""
    if value is None or not math.isfinite(value):
        return Style(dim=True)
    t = 0.0 if vmax <= vmin else min(1.0, max(0.0, (value - vmin) / (vmax - vmin)))
    stops = [(0.0, (20, 30, 70)), (0.5, (170, 40, 40)), (1.0, (250, 210, 60))]
    for (t0, c0), (t1, c1) in zip(stops, stops[1:], strict=False):
        if t <= t1:
            f = 0 if t1 == t0 else (t - t0) / (t1 - t0)
            r, g, b = (round(a + (c - a) * f) for a, c in zip(c0, c1, strict=True))
            break
    fg = "black" if t > 0.75 else "white"
    return Style(bgcolor=f"rgb({r},{g},{b})", color=fg)


def fmt_num(v: float | None, digits: int = 3) -> str:
    """Short numbers for tables: 3 significant digits, scientific when very small or large."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.{digits}g}"


def cursor_item(table: Any, items: list[Any]) -> Any:
    """The item under a DataTable's cursor (rows added in `items` order), None when there is none."""
    row = table.cursor_row
    return items[row] if items and 0 <= row < len(items) else None
