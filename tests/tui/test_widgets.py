"""Workbench: the shared widgets (image grid paging, the enlarged-image view)."""

from __future__ import annotations

import math

import numpy as np
from textual.app import App, ComposeResult

from screens.image_view import ImageView
from screens.widgets import GridItem, ImageGrid
from tests.tui.conftest import SIZE, run_async, wait_for


def items(n: int) -> list[GridItem]:
    digit = np.zeros((28, 28), np.uint8)
    return [GridItem(f"item {i}", [digit + i, 255 - digit]) for i in range(n)]


class GridApp(App):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def compose(self) -> ComposeResult:
        yield ImageGrid(items(self.n), id="grid")

    def on_mount(self) -> None:
        self.query_one(ImageGrid).focus()


@run_async
async def test_paging_past_the_end_stops_at_the_last_screenful():
    """Page Down ×40 on 100 items used to scroll to an empty grid while the counter read '98–100 of 100'."""
    app = GridApp(100)
    async with app.run_test(size=SIZE) as pilot:
        grid = app.query_one(ImageGrid)
        await pilot.pause()
        _, _, per_line, _ = grid.geometry()
        vis = grid.visible_lines()
        last_top = math.ceil(100 / per_line) - vis
        assert last_top > 2  # the test needs several screens
        for _ in range(40):
            await pilot.press("pagedown")
        await pilot.pause()
        assert grid.top_line == last_top and grid.cursor[0] == 99
        first = last_top * per_line
        assert grid.position_text() == f"{first + 1}–100 of 100" and 100 - first > (vis - 1) * per_line
        for _ in range(40):
            await pilot.press("pageup")
        await pilot.pause()
        assert grid.top_line == 0 and grid.cursor[0] == 0


@run_async
async def test_the_enlarged_caption_follows_the_image():
    digit = np.zeros((28, 28), np.uint8)
    app = App()
    async with app.run_test(size=SIZE) as pilot:
        view = ImageView([digit, digit + 1, digit + 2], ["first · a", "second · b", "third · c"], start=1)
        app.push_screen(view)
        await wait_for(pilot, lambda: app.screen is view, what="the view")
        assert view.caption == "second · b"
        await pilot.press("right")
        assert view.caption == "third · c" and "third · c" in str(view.query_one("#caption").render())
        await pilot.press("right", "right")
        assert view.caption == "second · b"
