"""Workbench: bounds screen."""

from __future__ import annotations

from textual.widgets import DataTable

from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_bounds_table_spectrum_and_cancel(tmp_path, models_folder):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await settle(pilot, app)
        screen = app.screen
        table = screen.query_one("#table", DataTable)
        assert table.row_count == 3
        assert "fc1" in text_of(app, "#spectrum-title")
        await pilot.press("down")
        await pilot.pause()
        assert "fc2" in text_of(app, "#spectrum-title") and "100 singular values" in text_of(app, "#spectrum-title")
        await pilot.press("a", "x")  # AlexNet takes half a minute: cancel stops it between layers
        await settle(pilot, app)
        assert not screen.busy() and "cancelled" in text_of(app, "#status")
        # cancelled after a layer has finished: that layer stays on screen
        await pilot.press("r")
        for _ in range(600):
            await pilot.pause(0.05)
            if "1/8" in text_of(app, "#status"):
                break
        await pilot.press("x")
        await settle(pilot, app)
        kept = table.row_count
        assert kept >= 1 and f"cancelled after {kept} layers" in text_of(app, "#bar")
        assert "features.0" in str(table.get_row_at(0)[0])
