"""Workbench: gallery screen."""

from __future__ import annotations

from screens.image_view import ImageView
from screens.widgets import ImageGrid
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_gallery_pages_and_enlarges(tmp_path, models_folder):
    app = make_app(tmp_path, units_images=500)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        screen = app.screen
        units, rand = screen.query_one("#units", ImageGrid), screen.query_one("#random", ImageGrid)
        assert len(units.items) > 10 and len(rand.items) >= len(units.items)
        assert "purity" in units.items[0].title
        assert "verdict" in text_of(app, "#verdict")
        first = units.top_line
        await pilot.press("n")
        await pilot.pause()
        assert units.top_line > first and rand.top_line > first
        await pilot.press("right", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ImageView) and "rank 2" in str(app.screen.caption)
        await pilot.press("escape", "tab")
        await pilot.pause()
        assert rand.has_focus
