"""Workbench: transfer screen."""

from __future__ import annotations

from textual.widgets import DataTable, Input

from screens.image_view import GridView
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_transfer_table_cursor_cell_view_sort_export(tmp_path, models_folder, matrix_dir, monkeypatch):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(matrix_dir.parent / "cache"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4", "o")
        app.screen.query_one("#path", Input).value = str(matrix_dir / "matrix.json")
        await pilot.press("enter")
        await settle(pilot, app)
        screen = app.screen
        table = screen.query_one("#matrix", DataTable)
        assert table.row_count == 4  # two adversarial rows, a heading, one noise row
        assert table.cursor_coordinate == (0, 1)
        await pilot.press("right")
        assert table.cursor_coordinate == (0, 2)
        await pilot.press("down", "down")
        assert table.cursor_coordinate.row == 3  # the heading row is stepped over
        await pilot.press("up", "up", "left")
        assert table.cursor_coordinate == (0, 1)
        assert "softmax1" in text_of(app, "#cell") and "misclassified" in text_of(app, "#cell")
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, GridView)
        assert app.screen.items and len(app.screen.items[0].images) == 3
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("right", "s")
        await pilot.pause()
        names = [screen.matrix.rows[i].name for i in screen.order if i is not None]
        values = [screen.matrix.values[i, 1] for i in screen.order[:2]]
        assert values == sorted(values, reverse=True) and names[-1].startswith("Gaussian")
        await pilot.press("e")
        await settle(pilot, app)
        assert (matrix_dir / "matrix-export.csv").read_text().startswith("row,kind,softmax1,n100-100-10")
        await pilot.press("o")
        app.screen.query_one("#path", Input).value = str(tmp_path / "nothing-here")
        await pilot.press("enter")
        await settle(pilot, app)
        assert "no transfer matrix" in text_of(app, "#status")
        screen.query_one("#sources", Input).value = "softmax1"
        screen.query_one("#n", Input).value = "4"
        await pilot.press("escape", "c")  # compute a new one (adversarial sets come from the cache)
        await settle(pilot, app)
        assert screen.matrix.n == 4 and [r.kind for r in screen.matrix.rows] == ["adversarial", "noise"]
        assert list((tmp_path / "runs").glob("transfer-matrix-*/matrix.json"))
