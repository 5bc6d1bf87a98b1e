"""Workbench: models screen."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from textual.widgets import DataTable, Input

from screens.attack import AttackScreen
from tests.tui.conftest import SHIPPED, SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_pick_model_and_bad_checkpoint_shows_error(tmp_path, models_folder):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    (tmp_path / "broken.json").write_text(json.dumps({"spec": {"kind": "mlp", "hidden": [], "classes": 10}}))
    good = tmp_path / "mine.pt"  # a weights-only PyTorch state dict without a sidecar: architecture inferred
    torch.save(load_file(str(SHIPPED / "n100-100-10.safetensors")), good)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        table = app.screen.query_one("#models", DataTable)
        assert table.row_count == 2
        table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause()
        assert app.active_model == "softmax1"
        await pilot.press("l")
        app.screen.query_one("#path", Input).value = str(bad)
        await pilot.press("enter")
        await settle(pilot, app)
        status = text_of(app, "#status")
        assert "cannot load" in status and "not a valid safetensors file" in status
        app.screen.query_one("#path", Input).value = str(tmp_path / "missing.pt")
        app.screen.query_one("#path", Input).focus()
        await pilot.press("enter")
        await settle(pilot, app)
        assert "checkpoint not found" in text_of(app, "#status")
        assert app.active_model == "softmax1"  # unchanged, and the app is alive
        app.screen.query_one("#path", Input).value = str(good)
        app.screen.query_one("#path", Input).focus()
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.active_model == str(good) and "loaded mine.pt" in text_of(app, "#status")
        assert table.row_count == 3 and "file" in str(table.get_row_at(2))
        await pilot.press("escape", "3")
        await settle(pilot, app)
        assert isinstance(app.screen, AttackScreen)


@run_async
async def test_train_a_zoo_model_with_progress(tmp_path, models_folder, tiny_mnist):
    app = make_app(tmp_path, data_dir=str(tiny_mnist), train_max_iter=20, models_folder=models_folder)
    seen = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        screen = app.screen
        original = screen.train_progress
        screen.train_progress = lambda event: (seen.append(event), original(event))
        screen.query_one("#models", DataTable).move_cursor(row=0)
        await pilot.press("t")
        await settle(pilot, app)
        assert "trained softmax1" in text_of(app, "#status")
    assert seen and all(e.task == "train softmax1" for e in seen)
    meta = json.loads((models_folder / "softmax1.json").read_text())
    assert meta["training"]["iterations"] <= 20
