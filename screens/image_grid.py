"""A cursor-driven grid of small images, drawn in pixels (sixel, kitty) or in half-block cells.

Tiles are sized for legibility (`screens.grid_layout.plan`): when not all of an item's images fit a
line, fewer are shown (the enlarged view steps through all of them); `zoom` asks for larger, fewer tiles.

In sixel mode each tile is one sixel image, appended (cursor move + image) to the last row of its line
of tiles, so that it is sent again whenever Textual repaints that row, right after the blank cells under
it; a cursor move repaints only the two lines it leaves and enters, and the cursor itself is text in the
gaps. With the kitty protocol each line of tiles is one image (placeholder cells, no cursor moves).
Under a modal window (whose screen is not active) tiles are drawn in half-blocks, so that no pixels
land on top of the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Group
from rich.control import Control
from rich.segment import ControlType, Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from screens import graphics
from screens.grid_layout import GAP, ITEM_GAP, MARGIN, MAX_ZOOM, Layout, plan
from screens.pictures import tile_picture

CURSOR_RGB, CURSOR_DIM_RGB, BACK_RGB = (255, 200, 0), (110, 110, 110), (0, 0, 0)
_CONTROL = ((ControlType.CURSOR_FORWARD, 0),)  # marks injected escape sequences as zero-width controls


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
    """Items of small images laid out to the widget's size; arrows move a cursor, Enter opens the image.

    Only the lines that fit are drawn, and the view follows the cursor."""

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

    cursor: reactive[tuple[int, int]] = reactive((0, 0), repaint=False)  # watch_cursor repaints what changed

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
        empty: str = "nothing to show yet",
        label: str = "",
        zoom: int = 0,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.items: list[GridItem] = list(items or [])
        self.empty, self.label = empty, label
        self.zoom = max(0, min(MAX_ZOOM, zoom))
        self.top_line = 0
        self.border_title = label
        self._sixels: dict[tuple[Any, ...], str] = {}
        self._tgp: dict[tuple[Any, ...], Any] = {}
        self._boxes: list[tuple[int, int, int, int]] = []  # (item, index, x, y) of the tiles drawn, content coords
        self._drawn_pixels: bool | None = None  # whether the last render placed sixel tiles

    # ----------------------------------------------------------------- data
    def set_items(self, items: list[GridItem], keep_cursor: bool = False) -> None:
        """Replace the items (cursor kept where it still fits, else back to the start)."""
        self.items = list(items)
        self._forget_pictures()
        item, index = self.cursor if keep_cursor else (0, 0)
        if not keep_cursor:
            self.top_line = 0
        self.cursor = self._clamp(item, index)
        self._follow_cursor()
        self.border_subtitle = self.position_text()
        self.refresh()

    def set_zoom(self, zoom: int) -> int:
        """Larger, fewer tiles (0: the legible minimum); returns the zoom kept (0 … MAX_ZOOM)."""
        self.zoom = max(0, min(MAX_ZOOM, zoom))
        self._forget_pictures()
        self._follow_cursor()
        self.border_subtitle = self.position_text()
        self.refresh()
        return self.zoom

    def _forget_pictures(self) -> None:
        self._sixels.clear()
        for renderable in self._tgp.values():
            renderable.cleanup()
        self._tgp.clear()

    def _clamp(self, item: int, index: int) -> tuple[int, int]:
        if not self.items:
            return (0, 0)
        item = max(0, min(item, len(self.items) - 1))
        return item, max(0, min(index, len(self.items[item].images) - 1))

    # --------------------------------------------------------------- layout
    def geometry(self, width: int | None = None, height: int | None = None) -> Layout:
        """The layout for the widget's content size (or the one given, in cells)."""
        width = max(1, (self.content_size.width if width is None else width) - 2 * MARGIN)
        height = self.content_size.height if height is None else height
        first = self.items[0].images[0] if self.items and self.items[0].images else np.zeros((28, 28), np.uint8)
        native = (int(first.shape[1]), int(first.shape[0]))
        n = max((len(it.images) for it in self.items), default=1) or 1
        text_lines = 1 + (1 if any(it.captions for it in self.items) else 0)
        pixels = graphics.pixels()
        cell = graphics.cell_size() if pixels else (1, 2)
        return plan(native, n, width, height, text_lines, cell, pixels, self.zoom)

    def line_height(self) -> int:
        return self.geometry().line_height

    def visible_lines(self) -> int:
        return max(1, self.content_size.height // max(1, self.line_height()))

    def _follow_cursor(self) -> None:
        per_line = self.geometry().per_line
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
        per_line = self.geometry().per_line
        first = self.top_line * per_line
        last = min(len(self.items), first + self.visible_lines() * per_line)
        return f"{first + 1}–{last} of {len(self.items)}"

    # -------------------------------------------------------------- actions
    def action_move(self, dx: int, dy: int) -> None:
        if not self.items:
            return
        item, index = self.cursor
        lay = self.geometry()
        shown, per_line = lay.shown, lay.per_line
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
        per_line = self.geometry().per_line
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

    def watch_cursor(self, old: tuple[int, int], new: tuple[int, int]) -> None:
        top = self.top_line
        self._follow_cursor()
        position = self.position_text()
        if position != str(self.border_subtitle):
            self.border_subtitle = position
        if self.top_line == top and self._drawn_pixels and self.items:
            self.refresh(*self._line_regions({old[0], new[0]}))  # only the lines the cursor left and entered
        else:
            self.refresh()

    def _line_regions(self, items: set[int]) -> list[Region]:
        """The regions of the visual lines holding `items`, when on screen, border to border (`refresh` takes
        content coordinates; Textual writes only the columns asked for, and the images ride at a line's end)."""
        lay = self.geometry()
        left = self.styles.gutter.left
        out = []
        for item in items:
            k = item // lay.per_line - self.top_line
            if 0 <= k < self.visible_lines():
                out.append(Region(-left, k * lay.line_height, self.outer_size.width, lay.line_height))
        return out

    def on_resize(self) -> None:
        self._forget_pictures()
        self._follow_cursor()
        self.border_subtitle = self.position_text()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ------------------------------------------------------------ rendering
    def _pixels_now(self) -> bool:
        """Whether tiles are drawn in pixels now (sixel or kitty, and no window on top of this screen)."""
        try:
            return graphics.pixels() and self.screen.is_active
        except Exception:  # not mounted on a screen
            return False

    def _background(self) -> tuple[int, int, int]:
        colour = self.background_colors[1]
        return (colour.r, colour.g, colour.b)

    def _band_picture(self, members: list[int], lay: Layout, cell: tuple[int, int], back: Any) -> Image.Image:
        """One line of tiles as one picture at `cell` pixels per cell; the cursor as bars in the gaps beside it."""
        cw, ch = cell
        item_cols = lay.item_cols
        cols = MARGIN + len(members) * item_cols + ITEM_GAP * (len(members) - 1) + MARGIN
        canvas = Image.new("RGB", (cols * cw, lay.tile_rows * ch), back)
        draw = ImageDraw.Draw(canvas)
        box = (lay.tile_cols * cw, lay.tile_rows * ch)
        factor = min(1.0, box[0] / lay.image_px[0], box[1] / lay.image_px[1])  # a preview smaller than planned
        image_px = (max(1, int(lay.image_px[0] * factor)), max(1, int(lay.image_px[1] * factor)))
        for slot, item in enumerate(members):
            x0 = MARGIN + slot * (item_cols + ITEM_GAP)
            for j in range(min(lay.shown, len(self.items[item].images))):
                x = (x0 + j * (lay.tile_cols + GAP)) * cw
                canvas.paste(tile_picture(self.items[item].images[j], image_px, box, back), (x, 0))
                if (item, j) == self.cursor:
                    colour = CURSOR_RGB if self.has_focus else CURSOR_DIM_RGB
                    bar = max(1, cw // 4)
                    for cx in (x - cw + cw // 2, x + box[0] + cw // 2):  # the middle of the gap on either side
                        draw.rectangle((cx - (bar - 1) // 2, 0, cx + bar // 2, box[1] - 1), fill=colour)
        return canvas

    def _band_text(self, members: list[int], lay: Layout) -> Text:
        """A line of tiles as text for sixel mode: blank tile boxes (the images go on top), cursor bars in gaps."""
        colour = "rgb({},{},{})".format(*(CURSOR_RGB if self.has_focus else CURSOR_DIM_RGB))
        row = Text(" " * MARGIN, no_wrap=True, overflow="crop")
        for slot in range(len(members)):
            if slot:
                row.append(" " * ITEM_GAP)
            for j in range(lay.shown):
                if j:
                    row.append(" " * GAP)
                row.append(" " * lay.tile_cols)
        plain = row.plain
        bars: list[int] = []
        for slot, item in enumerate(members):
            x0 = MARGIN + slot * (lay.item_cols + ITEM_GAP)
            if item == self.cursor[0]:
                x = x0 + self.cursor[1] * (lay.tile_cols + GAP)
                bars += [x - 1, x + lay.tile_cols]
        line = Text(no_wrap=True, overflow="crop")
        for i, char in enumerate(plain):
            line.append("▐" if i in bars[:1] else "▌" if i in bars[1:] else char, style=colour if i in bars else "")
        return Text("\n").join([line] * lay.tile_rows)

    def _text_line(self, item_w: int, texts: list[str], styles: list[str]) -> Text:
        line = Text(" " * MARGIN, no_wrap=True, overflow="crop")
        for slot, (text, style) in enumerate(zip(texts, styles, strict=True)):
            if slot:
                line.append(" " * ITEM_GAP)
            line.append(text[:item_w].ljust(item_w), style=style)
        return line

    def render(self) -> Any:
        self._boxes = []
        pixels_now = self._pixels_now()
        self._drawn_pixels = pixels_now
        sixel_now = pixels_now and graphics.mode() == "sixel"
        if not self.items:
            return Text(self.empty, style="dim")
        lay = self.geometry()
        parts: list[Any] = []
        has_captions = any(it.captions for it in self.items)
        tgp_used: dict[tuple[Any, ...], Any] = {}
        y = 0
        for line in range(self.top_line, self.top_line + self.visible_lines()):
            members = list(range(line * lay.per_line, min(len(self.items), (line + 1) * lay.per_line)))
            if not members:
                break
            titles = [self.items[i].shown_title(lay.shown) for i in members]
            styles = [self.items[i].style or ("bold" if i == self.cursor[0] else "") for i in members]
            parts.append(self._text_line(lay.item_cols, titles, styles))
            y += 1
            if sixel_now:
                parts.append(self._band_text(members, lay))
                for slot, item in enumerate(members):
                    x0 = MARGIN + slot * (lay.item_cols + ITEM_GAP)
                    for j in range(min(lay.shown, len(self.items[item].images))):
                        self._boxes.append((item, j, x0 + j * (lay.tile_cols + GAP), y))
            elif pixels_now:
                here = self.cursor if self.cursor[0] in members else None  # other lines keep their image
                key = (tuple(members), here, here is not None and self.has_focus, lay)
                renderable = self._tgp.pop(key, None)
                if renderable is None:
                    from textual_image.renderable.tgp import Image as TGP

                    picture = self._band_picture(members, lay, graphics.cell_size(), BACK_RGB)
                    renderable = TGP(picture, width=picture.width // graphics.cell_size()[0], height=lay.tile_rows)
                tgp_used[key] = renderable
                parts.append(renderable)
            else:
                cells = self._cells_layout(lay)
                picture = self._band_picture(members, cells, (1, 2), BACK_RGB)
                parts.append(graphics.grid_renderable()(picture, width=picture.width, height=cells.tile_rows))
            y += lay.tile_rows
            if has_captions:
                caps = []
                for i in members:
                    c = (self.items[i].captions or [])[: lay.shown]
                    caps.append(" ".join(s[: lay.tile_cols].ljust(lay.tile_cols) for s in c))
                parts.append(self._text_line(lay.item_cols, caps, ["dim"] * len(members)))
                y += 1
        for stale in self._tgp.values():
            stale.cleanup()
        self._tgp = tgp_used
        return Group(*parts)

    def _cells_layout(self, lay: Layout) -> Layout:
        """The layout drawn in half-blocks: itself in cell modes; in pixel modes the same boxes (a preview
        under a window)."""
        if not graphics.pixels():
            return lay
        return lay._replace(image_px=(lay.tile_cols, 2 * lay.tile_rows))

    def render_lines(self, crop: Region) -> list[Strip]:
        """The text lines, with each line of tiles' sixel images appended to the last row of its band.

        Textual writes only the rows it was asked to repaint (a cursor move repaints two lines of tiles),
        top to bottom, so a band's images go out right after its blank rows, whenever those are written."""
        if self._drawn_pixels is not None and self._drawn_pixels != self._pixels_now():
            self.refresh()  # a window opened or closed on top: draw again in the right renderer
        lines = super().render_lines(crop)
        if not (lines and self._boxes and self._drawn_pixels and self._pixels_now()):
            return lines
        lay = self.geometry()
        top = self.styles.gutter.top
        for band_y in sorted({y for _, _, _, y in self._boxes}):
            row = top + band_y + lay.tile_rows - 1  # the band's last row, in widget coordinates
            if crop.y <= row < crop.bottom:
                sequences = self._sixel_sequences(lay, band_y, row)
                line = lines[row - crop.y]
                lines[row - crop.y] = Strip([*line, *sequences], line.cell_length)
        return lines

    def _sixel_sequences(self, lay: Layout, band_y: int, row: int) -> list[Segment]:
        """Cursor moves and one sixel image per tile of the band at content row `band_y`, then the cursor back
        at the end of widget row `row`."""
        cell = graphics.cell_size()
        box_px = (lay.tile_cols * cell[0], lay.tile_rows * cell[1])
        back = self._background()
        gutter = self.styles.gutter
        region = self.region
        out: list[Segment] = []
        for item, j, x, y in self._boxes:
            if y != band_y or item >= len(self.items):
                continue
            key = (item, j, box_px, lay.image_px, back)
            data = self._sixels.get(key)
            if data is None:
                from screens.pictures import sixel

                data = sixel(tile_picture(self.items[item].images[j], lay.image_px, box_px, back))
                self._sixels[key] = data
            screen_x, screen_y = region.x + gutter.left + x, region.y + gutter.top + y
            out.append(Segment(Control.move_to(screen_x, screen_y).segment.text, Style(), _CONTROL))
            out.append(Segment(data, Style(), _CONTROL))
        if out:
            out.append(Segment(Control.move_to(region.right, region.y + row).segment.text, Style(), _CONTROL))
        return out


def change_zoom(state: Any, where: str, grids: list[ImageGrid], delta: int) -> int:
    """z / Z on a screen: every grid of `where` one step larger (or smaller), remembered for the next session."""
    zoom = grids[0].zoom + delta
    for grid in grids:
        zoom = grid.set_zoom(zoom)
    state.settings.zoom = {**state.settings.zoom, where: zoom}
    state.remember(zoom=state.settings.zoom)
    return zoom
