"""Workbench: the shared widgets (image grid: legible tiles, paging, resize, zoom in both renderers; the enlarged
image view; the difference colour map)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from textual.app import App, ComposeResult
from textual.geometry import Region

from screens.grid_layout import plan
from screens.image_view import ImageView
from screens.pictures import diverging, scaled
from screens.widgets import GridItem, ImageGrid
from tests.tui.conftest import SIZE, run_async, wait_for
from tests.tui.terminal import decode_sixel, sixel_images


def items(n: int, side: int = 12) -> list[GridItem]:
    digit = np.zeros((side, side), np.uint8)
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
        per_line = grid.geometry().per_line
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


# ------------------------------------------------------------------ legible tiles, both renderers
def test_half_block_tiles_are_never_below_half_resolution_and_native_where_they_fit():
    for width in range(14, 400, 7):
        for height in (8, 12, 30):
            lay = plan((28, 28), 8, width, height, 1, (1, 2), pixels=False)
            assert lay.tile_cols >= 14 and lay.tile_rows >= 7, (width, height, lay)
            assert lay.shown * lay.tile_cols + (lay.shown - 1) <= width
    wide = plan((28, 28), 8, 300, 30, 1, (1, 2), pixels=False)
    assert (wide.tile_cols, wide.tile_rows, wide.shown, wide.image_px) == (28, 14, 8, (28, 28))  # native
    narrow = plan((28, 28), 8, 58, 30, 1, (1, 2), pixels=False)
    assert (narrow.tile_cols, narrow.tile_rows, narrow.shown) == (14, 7, 3)  # fewer tiles, not smaller ones
    big = plan((224, 224), 3, 78, 40, 1, (1, 2), pixels=False)  # an ImageNet image: downscaled to fit
    assert big.tile_cols <= 78 and big.tile_rows + 1 <= 40 and big.shown == 1 and big.scale < 0.5


def test_pixel_tiles_are_whole_upscales_of_at_least_56_pixels():
    lay = plan((28, 28), 8, 76, 40, 1, (10, 20), pixels=True)
    assert (lay.scale, lay.image_px, lay.tile_cols, lay.tile_rows, lay.shown) == (2, (56, 56), 6, 3, 8)
    wide = plan((28, 28), 3, 200, 40, 1, (10, 20), pixels=True)
    assert wide.scale == 4 and wide.image_px == (112, 112)  # more where the cells allow
    assert plan((32, 32), 3, 200, 40, 1, (8, 16), pixels=True).scale >= 2
    assert plan((224, 224), 3, 200, 40, 1, (10, 20), pixels=True).scale == 1


def test_zoom_gives_fewer_larger_tiles():
    for pixels, cell in ((False, (1, 2)), (True, (10, 20))):
        sizes = [plan((28, 28), 8, 76, 40, 1, cell, pixels, zoom=z) for z in range(4)]
        assert all(b.tile_cols > a.tile_cols and b.shown <= a.shown for a, b in zip(sizes, sizes[1:], strict=False))


def halfblock_cells(grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    """The grid's drawn cells as (top, bottom) RGB arrays, read from the '▀' cells' colours."""
    lines = grid.render_lines(Region(0, 0, grid.outer_size.width, grid.outer_size.height))
    top = np.zeros((len(lines), grid.outer_size.width, 3), np.int32) - 1
    bottom = top.copy()
    for y, strip in enumerate(lines):
        x = 0
        for seg in strip:
            for ch in seg.text:
                if ch == "▀" and seg.style and seg.style.color and seg.style.bgcolor:
                    top[y, x] = seg.style.color.get_truecolor()
                    bottom[y, x] = seg.style.bgcolor.get_truecolor()
                x += 1
    return top, bottom


def digits(n: int, side: int = 28) -> list[GridItem]:
    rng = np.random.default_rng(0)
    return [
        GridItem(f"item {i}", [(rng.random((side, side)) * 255).astype(np.uint8) for _ in range(3)]) for i in range(n)
    ]


class DigitsApp(App):
    def __init__(self, items: list[GridItem]) -> None:
        super().__init__()
        self.items = items

    def compose(self) -> ComposeResult:
        yield ImageGrid(self.items, id="grid")

    def on_mount(self) -> None:
        self.query_one(ImageGrid).focus()


def first_tile_halfblock(grid: ImageGrid) -> np.ndarray:
    """The first tile as drawn: half-block pixels (2 per cell, top then bottom) at its box."""
    lay = grid.geometry()
    top, bottom = halfblock_cells(grid)
    x0, y0 = 1 + 1, 1 + 1  # border, margin / border, title line
    cells_t = top[y0 : y0 + lay.tile_rows, x0 : x0 + lay.tile_cols]
    cells_b = bottom[y0 : y0 + lay.tile_rows, x0 : x0 + lay.tile_cols]
    return np.stack([cells_t, cells_b], axis=1).reshape(2 * lay.tile_rows, lay.tile_cols, 3)


@run_async
async def test_half_block_grid_draws_each_tile_at_its_size_and_pages_and_resizes():
    items = digits(30)
    app = DigitsApp(items)
    async with app.run_test(size=(120, 40)) as pilot:
        grid = app.query_one(ImageGrid)
        await pilot.pause()
        lay = grid.geometry()
        assert lay.tile_cols >= 14 and lay.tile_rows >= 7
        expected = np.asarray(scaled(items[0].images[0], *lay.image_px).convert("RGB"))
        assert np.array_equal(first_tile_halfblock(grid)[: lay.image_px[1], : lay.image_px[0]], expected)
        per_screen = grid.visible_lines() * lay.per_line
        await pilot.press("pagedown")
        await pilot.pause()
        first = grid.top_line * lay.per_line
        assert first == per_screen
        expected = np.asarray(scaled(items[first].images[0], *lay.image_px).convert("RGB"))
        assert np.array_equal(first_tile_halfblock(grid)[: lay.image_px[1], : lay.image_px[0]], expected)
        await pilot.resize_terminal(60, 30)
        await pilot.pause()
        small = grid.geometry()
        assert 14 <= small.tile_cols < lay.tile_cols and small.shown * small.per_line <= lay.shown * lay.per_line
        assert grid.cursor[0] // small.per_line in range(grid.top_line, grid.top_line + grid.visible_lines())
        expected = np.asarray(scaled(items[grid.top_line * small.per_line].images[0], *small.image_px).convert("RGB"))
        assert np.array_equal(first_tile_halfblock(grid)[: small.image_px[1], : small.image_px[0]], expected)
        before = grid.geometry()
        grid.set_zoom(1)
        await pilot.pause()
        assert grid.geometry().tile_cols > before.tile_cols


def sixels_of(grid: ImageGrid) -> list[tuple[int, int, np.ndarray]]:
    """(column, row, pixels) of every sixel tile the grid writes when fully repainted (screen cells, 0-based)."""
    lines = grid.render_lines(Region(0, 0, grid.outer_size.width, grid.outer_size.height))
    text = "".join(seg.text for line in lines for seg in line)
    return [(im.col - 1, im.row - 1, decode_sixel(im.data)) for im in sixel_images(text.encode())]


@run_async
async def test_sixel_grid_writes_one_image_per_tile_and_follows_paging_resize_zoom_and_windows():
    from screens import graphics

    items = digits(40)
    graphics.configure("sixel")
    try:
        app = DigitsApp(items)
        async with app.run_test(size=(160, 48)) as pilot:
            grid = app.query_one(ImageGrid)
            await pilot.pause()
            lay = grid.geometry()
            tiles = sixels_of(grid)
            shown = min(grid.visible_lines() * lay.per_line, len(items)) * lay.shown
            s = int(lay.scale)
            assert s >= 2 and lay.image_px == (28 * s, 28 * s) and len(tiles) == shown >= 16
            region = grid.content_region
            for col, row, px in tiles:
                cw, ch = graphics.cell_size()
                assert px.shape[:2] == (lay.tile_rows * ch, lay.tile_cols * cw)  # the tile's box of cells
                assert region.x <= col and col + lay.tile_cols <= region.right  # nothing outside the grid
                assert region.y <= row and row + lay.tile_rows <= region.bottom
            col, row, px = min(tiles, key=lambda t: (t[1], t[0]))
            side = 28 * s
            oy, ox = (px.shape[0] - side) // 2, (px.shape[1] - side) // 2
            ref = np.kron(items[0].images[0], np.ones((s, s))).astype(float)
            assert np.corrcoef(px[oy : oy + side, ox : ox + side].mean(axis=2).ravel(), ref.ravel())[0, 1] > 0.99

            await pilot.press("pagedown")
            await pilot.pause()
            first = grid.top_line * lay.per_line
            assert first > 0
            col, row, px = min(sixels_of(grid), key=lambda t: (t[1], t[0]))
            ref = np.kron(items[first].images[0], np.ones((s, s))).astype(float)
            assert np.corrcoef(px[oy : oy + side, ox : ox + side].mean(axis=2).ravel(), ref.ravel())[0, 1] > 0.99

            await pilot.resize_terminal(80, 30)
            await pilot.pause()
            small = grid.geometry()
            tiles = sixels_of(grid)
            assert len(tiles) == min(grid.visible_lines() * small.per_line, len(items) - first) * small.shown
            assert all(c + small.tile_cols <= grid.content_region.right for c, _, _ in tiles)

            grid.set_zoom(1)
            await pilot.pause()
            zoomed = grid.geometry()
            assert {t[2].shape[1] for t in sixels_of(grid)} == {zoomed.tile_cols * graphics.cell_size()[0]}
            assert zoomed.image_px[0] > small.image_px[0] and zoomed.scale == int(zoomed.scale)

            app.push_screen(ImageView([items[0].images[0]], "on top"))
            await pilot.pause()
            await pilot.pause()
            assert sixels_of(grid) == []  # no pixels over a window
    finally:
        graphics.configure("halfblock")


def test_the_difference_map_is_white_at_zero_red_above_blue_below_and_scaled_per_image():
    r = np.zeros((10, 10))
    r[0, :5], r[1, :5] = 0.2, -0.1
    rgb, scale = diverging(r)
    assert scale == pytest.approx(np.percentile(np.abs(r), 99))
    assert tuple(rgb[5, 5]) == (255, 255, 255)
    assert tuple(rgb[0, 0]) == (178, 24, 43)  # at +scale: full red
    assert rgb[1, 0, 2] > rgb[1, 0, 0]  # negative: blue
    rgb2, scale2 = diverging(r * 1e-3)  # a tiny difference is as visible as a large one
    assert scale2 == pytest.approx(scale * 1e-3) and np.array_equal(rgb, rgb2)
    few = np.zeros((20, 20))
    few[3, 3] = -0.05  # fewer than 1% of the pixels changed: scaled to the largest
    rgb3, scale3 = diverging(few)
    assert scale3 == pytest.approx(0.05) and tuple(rgb3[3, 3]) == (33, 102, 172)


@run_async
async def test_zoom_is_remembered_with_the_other_settings(tmp_path, models_folder):
    from blindspot.app import create_app
    from screens.state import remembered_settings
    from tests.tui.conftest import make_app

    store = tmp_path / "workbench.json"
    app = create_app(make_app(tmp_path).state.settings, graphics_mode="halfblock", store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        grid = app.screen.query_one("#triplets", ImageGrid)
        await pilot.press("z", "z", "Z")
        await pilot.pause()
        assert grid.zoom == 1
    settings, _ = remembered_settings(store)
    assert settings.zoom == {"attack": 1}
    again = create_app(settings, graphics_mode="halfblock", store=store)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        assert again.screen.query_one("#triplets", ImageGrid).zoom == 1


@run_async
async def test_kitty_grid_sends_one_image_per_line_of_tiles_and_draws_its_placeholder_cells(monkeypatch):
    """The kitty protocol: each line of tiles is one image at the cells' pixel size, shown by placeholder cells."""
    import base64
    import io

    import textual_image.renderable.tgp as tgp
    from PIL import Image

    from screens import graphics

    sent: list[dict] = []
    monkeypatch.setattr(tgp, "_send_tgp_message", lambda payload=None, **kw: sent.append({**kw, "payload": payload}))
    items = digits(10)
    graphics.configure("tgp")
    try:
        app = DigitsApp(items)
        async with app.run_test(size=(160, 48)) as pilot:
            grid = app.query_one(ImageGrid)
            await pilot.pause()
            lay = grid.geometry()
            lines = grid.render_lines(Region(0, 0, grid.outer_size.width, grid.outer_size.height))
            placeholder_rows = [y for y, strip in enumerate(lines) if any(chr(0x10EEEE) in s.text for s in strip)]
            bands = math.ceil(len(items) / lay.per_line)
            assert len(placeholder_rows) == min(bands, grid.visible_lines()) * lay.tile_rows
            images = {}
            for message in sent:
                if message.get("f") == 100:
                    images[message["i"]] = images.get(message["i"], "") + message["payload"]
            assert images and all(
                Image.open(io.BytesIO(base64.b64decode(data))).height == lay.tile_rows * graphics.cell_size()[1]
                for data in images.values()
            )
    finally:
        graphics.configure("halfblock")
