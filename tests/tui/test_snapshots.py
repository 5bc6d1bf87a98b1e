"""Workbench: snapshots."""

from __future__ import annotations

import time

import pytest

from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@pytest.mark.parametrize(
    ("screen", "key", "changes"),
    [("models", None, {}), ("gallery", "2", {"units_images": 1000}), ("attack", "3", {}), ("bounds", "5", {})],
    ids=["models", "gallery", "attack", "bounds"],
)
def test_snapshot(snap_compare, tmp_path, models_folder, screen, key, changes):
    async def run_before(pilot):
        if key:
            await pilot.press(key)
        await settle(pilot, pilot.app)

    assert snap_compare(make_app(tmp_path, **changes), terminal_size=SIZE, run_before=run_before)


def test_snapshot_transfer(snap_compare, tmp_path, models_folder, matrix_dir):
    async def run_before(pilot):
        await pilot.press("4")
        await settle(pilot, pilot.app)

    assert snap_compare(make_app(tmp_path, matrix_path=matrix_dir), terminal_size=SIZE, run_before=run_before)


def test_snapshot_transfer_cell(snap_compare, tmp_path, models_folder, matrix_dir, monkeypatch):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(matrix_dir.parent / "cache"))

    async def run_before(pilot):
        await pilot.press("4")
        await settle(pilot, pilot.app)
        await pilot.press("enter")
        await settle(pilot, pilot.app)

    assert snap_compare(make_app(tmp_path, matrix_path=matrix_dir), terminal_size=SIZE, run_before=run_before)


def test_snapshot_enlarged_image(snap_compare, tmp_path, models_folder):
    async def run_before(pilot):
        await pilot.press("2")
        await settle(pilot, pilot.app)
        await pilot.press("enter")
        await pilot.pause()

    assert snap_compare(make_app(tmp_path, units_images=1000), terminal_size=SIZE, run_before=run_before)


LARGE = (160, 48)


@pytest.mark.parametrize(
    ("key", "changes"),
    [("1", {}), ("2", {"units_images": 1000}), ("3", {}), ("4", None), ("5", {})],
    ids=["models", "gallery", "attack", "transfer", "bounds"],
)
def test_snapshot_160x48(snap_compare, tmp_path, models_folder, matrix_dir, key, changes):
    """Every screen at 160×48 as well as at 80×24: wide layouts (the bounds table's power and method columns)."""

    async def run_before(pilot):
        await pilot.press(key)
        await settle(pilot, pilot.app)

    app = make_app(tmp_path, **(changes if changes is not None else {"matrix_path": matrix_dir}))
    assert snap_compare(app, terminal_size=LARGE, run_before=run_before)


@pytest.mark.parametrize("size", [SIZE, LARGE], ids=["80x24", "160x48"])
def test_snapshot_runs(snap_compare, tmp_path, runs_root, size, monkeypatch):
    """The Runs screen over a fixed set of runs (finished, interrupted, damaged; attack, bounds, matrix)."""
    monkeypatch.setenv("TZ", "UTC")  # start times are shown in local time
    time.tzset()

    async def run_before(pilot):
        await pilot.press("6")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "entries", None), what="the run list")
        await settle(pilot, pilot.app)

    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=run_before)
