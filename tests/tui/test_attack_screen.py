"""Workbench: attack screen. It calls `run_attack` like the CLI and draws the events it is sent."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from textual.widgets import Input

from engines.core.events import ChunkDone, SolverStep
from engines.report.figures import to_uint8
from screens.attack import AttackScreen
from screens.image_view import ImageView
from screens.widgets import ImageGrid
from tests.tui.conftest import SIZE, make_app, run_async, text_of, wait_for


def record_events(screen: AttackScreen) -> list:
    """Every event the screen is handed, with what the screen showed right after handling it."""
    seen: list = []
    original = screen.show_event

    def spy(event):
        original(event)
        grid = screen.query_one("#triplets", ImageGrid)
        seen.append((event, len(grid.items), screen.busy("attack")))

    screen.show_event = spy
    return seen


@run_async
async def test_attack_runs_in_a_worker_and_streams_results(tmp_path, models_folder, monkeypatch):
    import engines.attack.operation

    threads = []
    real = engines.attack.operation.run_attack

    def spy(request, ctx):
        threads.append((threading.current_thread(), request, ctx))
        return real(request, ctx)

    monkeypatch.setattr(engines.attack.operation, "run_attack", spy)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        seen = record_events(screen)
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.run_dir is not None, what="the run to start")
        assert f"run folder {screen.run_dir}" in " ".join(text_of(app, "#status").split())  # named before it runs
        await wait_for(pilot, lambda: screen.result is not None, what="the attack to finish")
        thread, request, ctx = threads[0]
        assert thread is not threading.main_thread()  # the engine ran in a worker thread
        assert (request.n, request.config.c_steps, request.config.max_iter) == (8, 2, 10)
        assert ctx.out == screen.run_dir and ctx.device == "cpu"
        assert "done" in text_of(app, "#stats") and "success" in text_of(app, "#stats")
        await pilot.press("1", "3")  # leaving and coming back keeps the results on screen
        await pilot.pause()
        assert "done" in text_of(app, "#stats")
        grid = screen.query_one("#triplets", ImageGrid)
        assert grid.items and len(grid.items[0].images) == 3
        run = screen.run_dir
        assert screen.result.run == str(run) and screen.result.n == 8
        assert json.loads((run / "summary.json").read_text())["n_success"] == screen.result.n_success
        assert (run / "samples.safetensors").is_file()
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        steps = [e for e, *_ in seen if isinstance(e, SolverStep)]
        assert steps and all(e.c_steps == 2 and 1 <= e.c_step <= 2 and e.images_total == 8 for e in steps)
        assert steps[-1].success_rate is not None and 0 <= steps[-1].success_rate <= 1
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ImageView)
        await pilot.press("right", "escape")
        await pilot.pause()
        assert isinstance(app.screen, AttackScreen)


@run_async
async def test_finished_examples_come_from_chunk_events_while_the_run_goes_on(tmp_path, models_folder):
    app = make_app(tmp_path, attack={"n": 16, "c_steps": 2, "max_iter": 10})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        seen = record_events(screen)
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.result is not None, what="the attack to finish")
        chunks = [(e, shown, busy) for e, shown, busy in seen if isinstance(e, ChunkDone)]
        assert [(e.start, e.stop) for e, *_ in chunks] == [(0, 8), (8, 16)]  # two chunks of eight images
        found = [int(e.results["success"].sum()) for e, *_ in chunks]
        # the first chunk's examples are on screen while the second is still being attacked
        assert chunks[0][2] and chunks[0][1] == found[0] > 0
        assert chunks[1][1] == sum(found) == screen.result.n_success
        grid = screen.query_one("#triplets", ImageGrid)
        assert len(grid.items) == sum(found)
        # in image order; each tile is drawn from the event's own arrays
        last = chunks[-1][0]
        i = int(last.results["success"].nonzero().flatten()[-1])
        item = grid.items[-1]
        assert item.title.startswith(f"#{int(last.index[i])} {int(last.label[i])}→{int(last.results['target'][i])}")
        assert np.array_equal(item.images[0], to_uint8(last.x[i]))
        assert np.array_equal(item.images[2], to_uint8(last.results["x_adv"][i]))


@run_async
async def test_cancelling_an_attack_keeps_finished_chunks(tmp_path, models_folder):
    app = make_app(tmp_path, attack={"n": 4000, "c_steps": 9, "max_iter": 100})  # still running at the `x`
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        seen = record_events(screen)
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.chunks_done >= 1, what="a finished chunk")
        await pilot.press("x")
        await wait_for(pilot, lambda: not screen.busy(), what="the attack to stop")
        await pilot.pause()
        assert f"cancelled: {screen.chunks_done} finished chunk(s) kept" in text_of(app, "#stats")
        assert f"--resume {screen.run_dir}" in " ".join(text_of(app, "#status").split())
        run = json.loads((screen.run_dir / "run.json").read_text())
        chunks = sorted((screen.run_dir / "chunks").glob("*.safetensors"))
        covered = sum(int(p.stem.split("-")[1]) - int(p.stem.split("-")[0]) for p in chunks)
        assert run["status"] == "interrupted" and len(chunks) >= 1 and covered < 4000
        assert len(chunks) == screen.chunks_done  # every saved chunk was announced, none after the cancel
        found = sum(int(e.results["success"].sum()) for e, *_ in seen if isinstance(e, ChunkDone))
        assert found and len(screen.query_one("#triplets", ImageGrid).items) == found  # shown
        assert found == sum(int(load_file(str(p))["success"].sum()) for p in chunks)


@run_async
async def test_bad_attack_settings_are_reported(tmp_path, models_folder):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#n", Input).value = "0"
        await pilot.press("s")
        await pilot.pause()
        assert "N images must be a whole number ≥ 1, got '0'" in text_of(app, "#status")  # the field's label
        assert app.screen.run_dir is None and not (tmp_path / "runs").exists()  # nothing started


def _comparable(folder):
    summary = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("seconds", "run", "device")}


def test_the_cli_and_the_screen_produce_the_same_run(tmp_path, models_folder, cli):
    settings = {"n": 8, "c_steps": 2, "max_iter": 10}
    cli_dir = tmp_path / "cli"
    rc, _, err = cli(
        "attack",
        "--model",
        "n100-100-10",
        "--n",
        "8",
        "--target",
        "random",
        "--seed",
        "0",
        "--c-steps",
        "2",
        "--max-iter",
        "10",
        "--device",
        "cpu",
        "--out",
        cli_dir,
        "--json",
    )
    assert rc == 0, err

    async def through_the_screen():
        app = make_app(tmp_path, attack=settings)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("3", "s")
            screen = app.screen
            await wait_for(pilot, lambda: screen.result is not None, what="the attack to finish")
            return screen.run_dir

    tui_dir = asyncio.run(through_the_screen())
    assert tui_dir.parent == tmp_path / "runs" and tui_dir != cli_dir
    a, b = _comparable(cli_dir), _comparable(tui_dir)
    assert a == b and a["n"] == 8 and a["model"] == "n100-100-10"
    sa, sb = load_file(str(cli_dir / "samples.safetensors")), load_file(str(tui_dir / "samples.safetensors"))
    assert torch.equal(sa["x"], sb["x"]) and torch.equal(sa["target"], sb["target"])
    assert torch.equal(sa["success"], sb["success"])
    assert torch.allclose(sa["x_adv"], sb["x_adv"], atol=1e-6)


@pytest.mark.gpu
@run_async
async def test_attack_on_cuda(tmp_path, models_folder):
    app = make_app(tmp_path, device="cuda")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "s")
        screen = app.screen
        await wait_for(pilot, lambda: not screen.busy() and screen.run_dir is not None, what="the attack to end")
        assert screen.result is not None, text_of(app, "#status")
        assert screen.result.device.startswith("cuda") and "on cuda" in text_of(app, "#stats")
        summary = json.loads((screen.run_dir / "summary.json").read_text())
        assert summary["device"].startswith("cuda") and summary["n"] == 8
        samples = load_file(str(screen.run_dir / "samples.safetensors"))
        ok = samples["success"].bool()
        assert ok.any() and float(samples["x_adv"].min()) >= 0 and float(samples["x_adv"].max()) <= 1
        assert len(screen.query_one("#triplets", ImageGrid).items) == int(ok.sum())


@run_async
async def test_every_example_of_a_run_can_be_paged_not_only_the_newest_24(tmp_path, models_folder):
    app = make_app(tmp_path, attack={"n": 60, "c_steps": 2, "max_iter": 10})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, AttackScreen), what="the attack screen")
        screen = app.screen
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.result is not None, timeout=120, what="the attack")
        grid = screen.query_one("#triplets", ImageGrid)
        found = screen.result.n_success
        assert found > 24 and len(grid.items) == found
        indices = [item.payload["index"] for item in grid.items]
        assert indices == sorted(indices)  # in image order
        grid.focus()
        for _ in range(found):  # one screenful may hold a single example (tiles are never shrunk below legible)
            await pilot.press("pagedown")
        assert grid.cursor[0] == found - 1 and grid.position_text().endswith(f"of {found}")
