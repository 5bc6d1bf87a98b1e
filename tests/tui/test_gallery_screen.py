"""Workbench: gallery screen, and the units operation run from the CLI and from the screen alike."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from screens.gallery import GalleryScreen
from screens.image_view import ImageView
from screens.widgets import ImageGrid
from tests.tui.conftest import SIZE, make_app, run_async, text_of, wait_for

# what differs between two runs of the same request: where, when, on which device, from the cache or not
RUN_SPECIFIC = ("seconds", "files", "run", "device", "checkpoint", "activations_cached")


async def _gallery_result(pilot, app) -> GalleryScreen:
    await pilot.press("2")
    await wait_for(pilot, lambda: isinstance(app.screen, GalleryScreen), what="the gallery screen")
    screen = app.screen
    await wait_for(pilot, lambda: screen.result is not None, timeout=120, what="the units result")
    return screen


@run_async
async def test_gallery_pages_and_enlarges(tmp_path, models_folder):
    app = make_app(tmp_path, units_images=500)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _gallery_result(pilot, app)
        res = screen.result
        units, rand = screen.query_one("#units", ImageGrid), screen.query_one("#random", ImageGrid)
        await wait_for(pilot, lambda: len(units.items) > 10, what="the unit rows")
        assert (res.layer, res.n_images, len(res.random)) == ("act1", 500, 200)
        assert len(units.items) == int((~res.units.degenerate).sum()) and len(rand.items) >= len(units.items)
        first_id, first_top = int(res.units.ids[0]), [int(i) for i in res.units.top[0]]
        assert units.items[0].title == f"unit {first_id} · purity {res.units.purity[0]:.2f}"
        shown = units.geometry()[1]  # at 80 columns fewer than the 8 top images fit: the title lists only those
        labels = "".join(str(int(screen.labels[i])) for i in first_top[:shown])
        assert shown < 8 and units.items[0].shown_title(shown) == f"{units.items[0].title} · {labels}"
        assert units.items[0].payload == ("unit", 0, first_top)
        assert text_of(app, "#verdict") == f"verdict {res.brief()}"
        assert text_of(app, "#status") == (
            f"{len(units.items)} units and {len(rand.items)} random directions shown · n/p page · Enter enlarges"
        )
        assert len(list((tmp_path / "runs").glob("units-*/units.json"))) == 1  # the run the screen shows
        first = units.top_line
        await pilot.press("n")
        await wait_for(pilot, lambda: units.top_line > first and rand.top_line > first, what="the next page")
        await pilot.press("right", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageView), what="the enlarged image")
        view, (_, row, top) = app.screen, units.items[units.cursor[0]].payload
        assert view.caption.startswith("rank 2") and f"#{top[1]} · label {int(screen.labels[top[1]])}" in view.caption
        await pilot.press("right")  # the caption follows the image (it used to keep the first image's data)
        assert view.caption.startswith("rank 3") and f"#{top[2]} · label {int(screen.labels[top[2]])}" in view.caption
        value = float(res.units.top_values[row][2])
        assert f"⟨φ(x), v⟩ = {value:.4g}" in view.caption
        await pilot.press("escape", "tab")
        await wait_for(pilot, lambda: rand.has_focus, what="the random grid to take focus")


@run_async
async def test_units_from_the_cli_and_the_gallery_write_the_same_results(cli, tmp_path, models_folder, tiny_mnist):
    cli_out = tmp_path / "cli-run"
    rc, _out, err = cli(
        "units", "--model", "n100-100-10", "--layer", "act1", "--stat-random", "200", "--data", tiny_mnist,
        "--device", "cpu", "--out", cli_out,
    )  # fmt: skip
    assert rc == 0, err
    app = make_app(tmp_path, data_dir=str(tiny_mnist), units_random=200)
    async with app.run_test(size=SIZE) as pilot:
        await _gallery_result(pilot, app)
        (tui_out,) = (tmp_path / "runs").glob("units-*")  # the one run the screen made
    assert tui_out.name.startswith("units-n100-100-10-")
    cli_run, tui_run = (json.loads((d / "run.json").read_text()) for d in (cli_out, tui_out))
    assert cli_run["request"] == tui_run["request"] and cli_run["status"] == tui_run["status"] == "done"
    cli_doc, tui_doc = (json.loads((d / "units.json").read_text()) for d in (cli_out, tui_out))
    assert cli_doc["n_images"] == 100 and cli_doc["random_scored"] == 200
    assert cli_doc["all"]["units"]["top"] == tui_doc["all"]["units"]["top"]
    assert cli_doc["all"]["random"]["top"] == tui_doc["all"]["random"]["top"]
    assert {k: v for k, v in cli_doc.items() if k not in RUN_SPECIFIC} == {
        k: v for k, v in tui_doc.items() if k not in RUN_SPECIFIC
    }
    figures = sorted(p.name for p in cli_out.glob("*.png"))
    assert figures == sorted(p.name for p in tui_out.glob("*.png")) and len(figures) == 3
    for name in figures:
        with Image.open(cli_out / name) as a, Image.open(tui_out / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), name


@run_async
async def test_a_failed_model_leaves_no_stale_grids_and_is_retried(tmp_path, models_folder):
    """A failing model used to leave the previous model's grids and layers under its name, with no retry."""
    app = make_app(tmp_path, units_images=200)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _gallery_result(pilot, app)
        units = screen.query_one("#units", ImageGrid)
        assert units.items and text_of(app, "#verdict")
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(b"not a checkpoint")
        await pilot.press("1")
        app.state.set_active_model(str(broken))
        await pilot.press("2")
        await wait_for(pilot, lambda: "error" in screen.query_one("#status").classes, what="the failure")
        assert units.items == [] and screen.query_one("#random", ImageGrid).items == []
        assert text_of(app, "#verdict") == "" and text_of(app, "#info") == "" and screen.result is None
        assert "job failed" in units.empty
        (models_folder / "n100-100-10.safetensors").replace(broken)  # fixed on disk: a return retries
        (models_folder / "n100-100-10.json").replace(broken.with_suffix(".json"))
        await pilot.press("1", "2")
        await wait_for(pilot, lambda: screen.result is not None, timeout=120, what="the retried result")
        assert units.items and screen.result.layer == "act1"


@run_async
async def test_at_120x40_in_half_blocks_every_gallery_tile_is_at_least_14_by_7_cells(tmp_path, models_folder):
    from screens.pictures import scaled
    from tests.tui.test_widgets import first_tile_halfblock

    app = make_app(tmp_path, units_images=300)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _gallery_result(pilot, app)
        for gid in ("#units", "#random"):
            grid = screen.query_one(gid, ImageGrid)
            lay = grid.geometry()
            assert lay.tile_cols >= 14 and lay.tile_rows >= 7 and grid.visible_lines() >= 2, (gid, lay)
            drawn = first_tile_halfblock(grid)[: lay.image_px[1], : lay.image_px[0]]
            source = grid.items[grid.top_line * lay.per_line].images[0]
            assert np.array_equal(drawn, np.asarray(scaled(source, *lay.image_px).convert("RGB")))  # what is drawn
        await pilot.press("z")  # larger tiles: fewer per line, remembered for the screen
        await pilot.pause()
        assert screen.query_one("#units", ImageGrid).geometry().tile_cols > lay.tile_cols
        assert app.state.settings.zoom == {"gallery": 1}
