"""Workbench: bounds screen."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from textual.widgets import DataTable

from engines.core.runs import read_run_record
from tests.test_bounds_cli_and_runs import comparable
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_bounds_table_spectrum_and_cancel(tmp_path, models_folder):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        screen = app.screen
        table = screen.query_one("#table", DataTable)
        await wait_for(pilot, lambda: screen.result is not None, what="the bounds of n100-100-10")
        assert table.row_count == 3
        assert "fc1" in text_of(app, "#spectrum-title")
        await pilot.press("down")
        await wait_for(pilot, lambda: "fc2" in text_of(app, "#spectrum-title"), what="fc2's spectrum")
        assert "100 singular values" in text_of(app, "#spectrum-title")
        # a new computation clears the previous model's table at once (the action is called, not its key "a",
        # so that no event of the new job can be handled before the check)
        screen.action_use("alexnet")
        assert table.row_count == 0 and "computing" in text_of(app, "#bar") and screen.result is None
        # finished layers appear from their events while the job still runs (AlexNet takes half a minute)
        await wait_for(pilot, lambda: table.row_count >= 1, timeout=120, what="AlexNet's first finished layer")
        assert screen.busy() and screen.result is None
        assert "features.0" in str(table.get_row_at(0)[0]) and "3×11×11×64" in str(table.get_row_at(0)[1])
        await pilot.press("x")
        await wait_for(pilot, lambda: not screen.busy(), timeout=120, what="the cancel to take effect")
        await settle(pilot, app)
        kept = table.row_count
        assert 1 <= kept < 8 and f"cancelled after {kept} layers" in text_of(app, "#bar")
        assert "cancelled" in text_of(app, "#status")
        assert "features.0" in str(table.get_row_at(0)[0])
        assert not list((tmp_path / "runs").glob("bounds-alexnet-*"))  # nothing half-written is left


@run_async
async def test_cli_and_tui_write_the_same_bounds(tmp_path, models_folder, cli):
    rc, _, err = cli("bounds", "--model", "n100-100-10", "--out", tmp_path / "cli", "--device", "cpu")
    assert rc == 0, err
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        screen = app.screen
        await wait_for(pilot, lambda: screen.result is not None, what="the bounds of n100-100-10")
        tui = Path(screen.result.run)
    cli_dir = tmp_path / "cli"
    assert tui.parent == tmp_path / "runs" and tui.name.startswith("bounds-n100-100-10-")
    assert read_run_record(tui)["request"] == read_run_record(cli_dir)["request"]
    a = json.loads((cli_dir / "bounds.json").read_text())
    b = json.loads((tui / "bounds.json").read_text())
    assert [x["name"] for x in a["layers"]] == ["fc1", "fc2", "fc3"]
    assert comparable(a) == comparable(b)
    sa, sb = load_file(str(cli_dir / "spectra.safetensors")), load_file(str(tui / "spectra.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
