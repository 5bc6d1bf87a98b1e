"""Modal views: one image enlarged (sixel / TGP when the terminal has them), or a grid of examples."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from screens import graphics
from screens.pictures import tile_picture
from screens.widgets import GridItem, ImageGrid

ENLARGE_PX = 280  # the enlarged image is upscaled with nearest neighbours: crisp pixels in sixel / TGP
BACK_RGB = (0, 0, 0)


def enlarged(arr: np.ndarray, size: int = ENLARGE_PX) -> Image.Image:
    """A uint8 image scaled up without smoothing (so every pixel of the 28×28 digit stays visible)."""
    img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    scale = max(1, size // max(img.width, img.height))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def framed(arr: np.ndarray, box_px: tuple[int, int]) -> Image.Image:
    """The image at the largest whole upscale that fits `box_px` (shrunk to fit if it is larger), centred on a
    canvas of exactly `box_px`: the image widget then draws it pixel for pixel, never resampled."""
    h, w = arr.shape[:2]
    scale = min(box_px[0] / w, box_px[1] / h)
    scale = float(int(scale)) if scale >= 1 else scale
    return tile_picture(arr, (max(1, int(w * scale)), max(1, int(h * scale))), box_px, BACK_RGB)


class ImageView(ModalScreen):
    """One image as large as the terminal allows; ←/→ step through its siblings (e.g. a triplet).

    `captions` holds one caption per image (the caption follows the image as ←/→ step), or one
    caption for all of them."""

    DEFAULT_CSS = """
    ImageView { align: center middle; }
    ImageView #frame { width: auto; height: auto; border: round $accent; padding: 0 1; background: $surface; }
    ImageView #big { width: 40; height: 20; }
    ImageView #caption { height: auto; }
    """
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("left", "step(-1)", "Previous"),
        Binding("right", "step(1)", "Next"),
    ]

    def __init__(
        self, images: list[np.ndarray], captions: str | list[str], start: int = 0, names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.images, self.index = images, start
        self.captions = [captions] * len(images) if isinstance(captions, str) else list(captions)
        if len(self.captions) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.captions)} captions")
        self.names = names or [f"image {i + 1}" for i in range(len(images))]

    @property
    def caption(self) -> str:
        """The caption of the image on show."""
        return self.captions[self.index]

    def compose(self) -> ComposeResult:
        widget_cls = graphics.large_image_widget()
        with Vertical(id="frame") as frame:
            frame.border_title = f"{self.names[self.index]} ({graphics.mode()})"
            yield widget_cls(enlarged(self.images[self.index]), id="big")
            yield Static(self.caption, id="caption")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.fit()

    def on_resize(self) -> None:
        self.fit()

    def fit(self) -> None:
        """As large as the screen allows, square on screen (a cell is about twice as tall as wide)."""
        rows = max(4, min(self.size.height - 7, (self.size.width - 6) // 2))
        big = self.query_one("#big")
        big.styles.width, big.styles.height = 2 * rows, rows
        self.query_one("#caption", Static).styles.width = 2 * rows
        self.draw()

    def box_px(self) -> tuple[int, int]:
        """The image widget's size in the pixels its renderer draws (terminal pixels, or half-blocks)."""
        styles = self.query_one("#big").styles
        assert styles.width is not None and styles.height is not None  # set by `fit` and the CSS
        cols, rows = int(styles.width.value), int(styles.height.value)
        cw, ch = graphics.cell_size() if graphics.pixels() else (1, 2)
        return cols * cw, rows * ch

    def draw(self) -> None:
        big: Any = self.query_one("#big")  # the image widget class of the graphics mode, chosen at run time
        big.image = framed(self.images[self.index], self.box_px())

    def action_step(self, delta: int) -> None:
        if len(self.images) < 2:
            return
        self.index = (self.index + delta) % len(self.images)
        self.draw()
        self.query_one("#frame").border_title = f"{self.names[self.index]} ({graphics.mode()})"
        self.query_one("#caption", Static).update(self.caption)


class GridView(ModalScreen):
    """A titled grid of examples (e.g. a transfer cell); Enter enlarges one, Escape closes."""

    DEFAULT_CSS = """
    GridView { align: center middle; }
    GridView #frame { width: 100%; height: 100%; border: round $accent; background: $surface; }
    GridView #note { height: auto; max-height: 3; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "dismiss", "Close")]

    def __init__(self, title: str, items: list[GridItem], note: str = "", names: list[str] | None = None) -> None:
        super().__init__()
        self.title_text, self.items, self.note, self.names = title, items, note, names

    def compose(self) -> ComposeResult:
        with Vertical(id="frame") as frame:
            frame.border_title = self.title_text
            yield Static(self.note, id="note")
            yield ImageGrid(self.items, id="cell-grid", empty="no examples")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#cell-grid", ImageGrid).focus()

    def on_image_grid_opened(self, event: ImageGrid.Opened) -> None:
        event.stop()
        item = self.items[event.item]
        names = self.names or [f"image {i + 1}" for i in range(len(item.images))]
        captions = [f"{names[j]} · {item.title}" for j in range(len(item.images))]
        self.app.push_screen(ImageView(item.images, captions, event.index, names))
