"""Reusable widgets: a cursor-driven image grid in half-block cells, log-scale range bars, heat colours."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Group
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from screens import graphics

GAP, ITEM_GAP, MARGIN = 1, 3, 1
CURSOR_RGB, CURSOR_DIM_RGB, BACK_RGB = (255, 200, 0), (110, 110, 110), (0, 0, 0)


@dataclass
class GridItem:
    """One titled row of same-sized images (top-k of a direction, or one attack triplet)."""

    title: str
    images: list[np.ndarray]  # uint8, (H, W) or (H, W, 3)
    captions: list[str] | None = None
    tags: list[str] | None = None  # one short tag per image (a label): the title lists those of the images shown
    payload: Any = None  # handed back when an image is opened
    style: str = ""

    def shown_title(self, shown: int) -> str:
        """The title with the tags of the first `shown` images (a narrow grid shows fewer than it has)."""
        if not self.tags:
            return self.title
        tags = self.tags[:shown]
        return f"{self.title} · {('' if all(len(t) == 1 for t in tags) else ',').join(tags)}"


class ImageGrid(Widget, can_focus=True):
    """Items of small images laid out to the widget's width; arrows move a cursor, Enter opens the image.

    Tiles are drawn as one half-block picture per visual line (cheap, no flicker); only the lines
    that fit are drawn, and the view follows the cursor.
    """

    DEFAULT_CSS = """
    ImageGrid { height: 1fr; border: round $panel-lighten-2; padding: 0 0; }
    ImageGrid:focus { border: round $accent; }
    """
    BINDINGS = [
        Binding("up", "move(0, -1)", "Up", show=False),
        Binding("down", "move(0, 1)", "Down", show=False),
        Binding("left", "move(-1, 0)", "Left", show=False),
        Binding("right", "move(1, 0)", "Right", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("enter", "open", "Enlarge", show=False),
    ]

    cursor: reactive[tuple[int, int]] = reactive((0, 0))

    class Opened(Message):
        """Enter on an image: which item and which of its images."""

        def __init__(self, grid: ImageGrid, item: int, index: int) -> None:
            super().__init__()
            self.grid, self.item, self.index = grid, item, index

        @property
        def control(self) -> ImageGrid:
            return self.grid

    def __init__(
        self,
        items: list[GridItem] | None = None,
        *,
        max_tile: int = 16,
        min_tile: int = 6,
        empty: str = "nothing to show yet",
        label: str = "",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.items: list[GridItem] = list(items or [])
        self.max_tile, self.min_tile, self.empty, self.label = max_tile, min_tile, empty, label
        self.top_line = 0
        self._tiles: dict[tuple[int, int, int], Image.Image] = {}
        self.border_title = label

    # ----------------------------------------------------------------- data
    def set_items(self, items: list[GridItem], keep_cursor: bool = False) -> None:
        """Replace the items (cursor kept where it still fits, else back to the start)."""
        self.items = list(items)
        self._tiles.clear()
        item, index = self.cursor if keep_cursor else (0, 0)
        if not keep_cursor:
            self.top_line = 0
        self.cursor = self._clamp(item, index)
        self.refresh()

    def _clamp(self, item: int, index: int) -> tuple[int, int]:
        if not self.items:
            return (0, 0)
        item = max(0, min(item, len(self.items) - 1))
        return item, max(0, min(index, len(self.items[item].images) - 1))

    # --------------------------------------------------------------- layout
    def geometry(self, width: int | None = None) -> tuple[int, int, int, int]:
        """(tile size, images shown per item, items per line, text lines per item) for a width in cells."""
        width = max(1, (self.content_size.width if width is None else width) - 2 * MARGIN)
        n = max((len(it.images) for it in self.items), default=1) or 1
        tile = (width - GAP * (n - 1)) // n
        tile = max(self.min_tile, min(self.max_tile, tile - tile % 2))
        shown = max(1, min(n, (width + GAP) // (tile + GAP)))
        item_w = shown * tile + GAP * (shown - 1)
        per_line = max(1, (width + ITEM_GAP) // (item_w + ITEM_GAP))
        text_lines = 1 + (1 if any(it.captions for it in self.items) else 0)
        return tile, shown, per_line, text_lines

    def line_height(self) -> int:
        tile, _, _, text_lines = self.geometry()
        return tile // 2 + text_lines

    def visible_lines(self) -> int:
        return max(1, self.content_size.height // max(1, self.line_height()))

    def _follow_cursor(self) -> None:
        _, _, per_line, _ = self.geometry()
        line = self.cursor[0] // per_line
        vis = self.visible_lines()
        if line < self.top_line:
            self.top_line = line
        elif line >= self.top_line + vis:
            self.top_line = line - vis + 1
        total = math.ceil(len(self.items) / per_line) if self.items else 0
        self.top_line = max(0, min(self.top_line, max(0, total - vis)))

    def position_text(self) -> str:
        """'5–8 of 100': the items on screen, for titles."""
        if not self.items:
            return ""
        _, _, per_line, _ = self.geometry()
        first = self.top_line * per_line
        last = min(len(self.items), first + self.visible_lines() * per_line)
        return f"{first + 1}–{last} of {len(self.items)}"

    # -------------------------------------------------------------- actions
    def action_move(self, dx: int, dy: int) -> None:
        if not self.items:
            return
        item, index = self.cursor
        _, shown, per_line, _ = self.geometry()
        if dy:
            item += dy * per_line
            if not 0 <= item < len(self.items):
                return
        elif dx:
            index += dx
            if index >= min(shown, len(self.items[item].images)):
                if item + 1 >= len(self.items):
                    return
                item, index = item + 1, 0
            elif index < 0:
                if item == 0:
                    return
                item, index = item - 1, min(shown, len(self.items[item - 1].images)) - 1
        self.cursor = self._clamp(item, index)

    def action_page(self, delta: int) -> None:
        """Move a screenful of items forward or back."""
        if not self.items:
            return
        _, _, per_line, _ = self.geometry()
        vis = self.visible_lines()
        last_top = max(0, math.ceil(len(self.items) / per_line) - vis)  # the last full screen, never past the end
        self.top_line = max(0, min(last_top, self.top_line + delta * vis))
        item = max(0, min(len(self.items) - 1, self.cursor[0] + delta * per_line * vis))
        self.cursor = self._clamp(item, self.cursor[1])
        self._follow_cursor()  # also when the cursor did not move (it was already on the last item)
        self.border_subtitle = self.position_text()
        self.refresh()

    def action_open(self) -> None:
        if self.items:
            self.post_message(self.Opened(self, *self.cursor))

    def watch_cursor(self) -> None:
        self._follow_cursor()
        self.border_subtitle = self.position_text()
        self.refresh()

    def on_resize(self) -> None:
        self._tiles.clear()
        self._follow_cursor()
        self.border_subtitle = self.position_text()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ------------------------------------------------------------ rendering
    def _tile(self, item: int, index: int, size: int) -> Image.Image:
        key = (item, index, size)
        if key not in self._tiles:
            arr = self.items[item].images[index]
            img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
            self._tiles[key] = img.resize((size, size), Image.Resampling.BOX if img.width > size else Image.NEAREST)
        return self._tiles[key]

    def _line_picture(self, members: list[int], tile: int, shown: int, item_w: int) -> Image.Image:
        """One visual line of tiles; the cursor is a pair of bars in the gaps beside its tile."""
        width = MARGIN + len(members) * item_w + ITEM_GAP * (len(members) - 1) + MARGIN
        canvas = Image.new("RGB", (width, tile), BACK_RGB)
        draw = ImageDraw.Draw(canvas)
        for slot, item in enumerate(members):
            x0 = MARGIN + slot * (item_w + ITEM_GAP)
            for j in range(min(shown, len(self.items[item].images))):
                x = x0 + j * (tile + GAP)
                canvas.paste(self._tile(item, j, tile), (x, 0))
                if (item, j) == self.cursor:
                    colour = CURSOR_RGB if self.has_focus else CURSOR_DIM_RGB
                    draw.line((x - 1, 0, x - 1, tile - 1), fill=colour)
                    draw.line((x + tile, 0, x + tile, tile - 1), fill=colour)
        return canvas

    def _text_line(self, members: list[int], item_w: int, texts: list[str], styles: list[str]) -> Text:
        line = Text(" " * MARGIN, no_wrap=True, overflow="crop")
        for slot, (text, style) in enumerate(zip(texts, styles, strict=True)):
            if slot:
                line.append(" " * ITEM_GAP)
            line.append(text[:item_w].ljust(item_w), style=style)
        return line

    def render(self) -> Any:
        if not self.items:
            return Text(self.empty, style="dim")
        tile, shown, per_line, _ = self.geometry()
        item_w = shown * tile + GAP * (shown - 1)
        renderable = graphics.grid_renderable()
        parts: list[Any] = []
        has_captions = any(it.captions for it in self.items)
        for line in range(self.top_line, self.top_line + self.visible_lines()):
            members = list(range(line * per_line, min(len(self.items), (line + 1) * per_line)))
            if not members:
                break
            titles = [self.items[i].shown_title(shown) for i in members]
            styles = [self.items[i].style or ("bold" if i == self.cursor[0] else "") for i in members]
            parts.append(self._text_line(members, item_w, titles, styles))
            picture = self._line_picture(members, tile, shown, item_w)
            parts.append(renderable(picture, width=picture.width, height=tile // 2))
            if has_captions:
                caps = []
                for i in members:
                    c = (self.items[i].captions or [])[:shown]
                    caps.append(" ".join(s[:tile].ljust(tile) for s in c))
                parts.append(self._text_line(members, item_w, caps, ["dim"] * len(members)))
        return Group(*parts)


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
