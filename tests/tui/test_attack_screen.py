"""Workbench: attack screen."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch
from textual.widgets import Input

from screens.attack import AttackScreen
from screens.image_view import ImageView
from screens.widgets import ImageGrid
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_attack_runs_in_a_worker_and_streams_results(tmp_path, models_folder, monkeypatch):
    import engines.attack.run

    threads = []
    real = engines.attack.run.start_attack

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(engines.attack.run, "start_attack", spy)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot, app)
        screen = app.screen
        updates = []
        original = screen.show_progress
        screen.show_progress = lambda event: (updates.append(event), original(event))
        await pilot.press("s")
        await settle(pilot, app)
        assert threads and threads[0] is not threading.main_thread()  # the engine ran in a worker thread
        assert "done" in text_of(app, "#stats") and "success" in text_of(app, "#stats")
        await pilot.press("1", "3")  # leaving and coming back keeps the results on screen
        await pilot.pause()
        assert "done" in text_of(app, "#stats")
        grid = screen.query_one("#triplets", ImageGrid)
        assert grid.items and len(grid.items[0].images) == 3
        run = screen.run_dir
        assert (run / "summary.json").is_file() and (run / "samples.safetensors").is_file()
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        assert updates and {"c_step", "iteration", "objective", "success_rate"} <= set(updates[-1].info)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ImageView)
        await pilot.press("right", "escape")
        await pilot.pause()
        assert isinstance(app.screen, AttackScreen)


@run_async
async def test_cancelling_an_attack_keeps_finished_chunks(tmp_path, models_folder):
    app = make_app(tmp_path, attack={"n": 64, "c_steps": 9, "max_iter": 100})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "s")
        screen = app.screen
        deadline = time.monotonic() + 60
        while not list((screen.run_dir / "chunks").glob("*.safetensors")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await pilot.press("x")
        await settle(pilot, app)
        assert not screen.busy()
        assert "cancelled" in text_of(app, "#stats")
        assert "--resume" in text_of(app, "#status")
        run = json.loads((screen.run_dir / "run.json").read_text())
        chunks = list((screen.run_dir / "chunks").glob("*.safetensors"))
        assert run["status"] == "interrupted" and 1 <= len(chunks) < 8
        assert screen.query_one("#triplets", ImageGrid).items  # what finished is shown


@run_async
async def test_bad_attack_settings_are_reported(tmp_path, models_folder):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#n", Input).value = "0"
        await pilot.press("s")
        await pilot.pause()
        assert "N must be a whole number" in text_of(app, "#status")


@pytest.mark.gpu
@run_async
async def test_attack_on_cuda(tmp_path, models_folder):
    app = make_app(tmp_path, device="cuda")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "s")
        await settle(pilot, app)
        assert "on cuda" in text_of(app, "#stats")
    assert torch.cuda.is_available()
