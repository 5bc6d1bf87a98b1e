"""Workbench: the Runs screen lists every run folder, reopens each in its screen, resumes an interrupted attack
in the app, and follows an attack that another process is writing (read-only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from textual.widgets import DataTable

from engines.attack.chunks import load_samples
from engines.core.io import read_json
from screens.attack import AttackScreen
from screens.bounds import BoundsScreen
from screens.runs import RunsScreen
from screens.transfer import TransferScreen
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for

REPO = Path(__file__).resolve().parents[2]


async def open_row(pilot, app, folder: Path) -> None:
    """Highlight the run of `folder` on the Runs screen and press Enter."""
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    row = next(i for i, e in enumerate(screen.entries) if e.path == folder)
    screen.query_one("#runs", DataTable).move_cursor(row=row)
    await pilot.press("enter")
    await settle(pilot, app)


async def to_runs(pilot, app) -> RunsScreen:
    await pilot.press("6")
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.entries, what="the run list")
    return app.screen


@run_async
async def test_every_run_is_listed_newest_first_and_opens_in_its_own_screen(tmp_path, runs_root):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await to_runs(pilot, app)
        listed = [(e.path.name, e.kind, e.status) for e in screen.entries]
        assert (
            listed
            == [
                ("attack-softmax1-20261129-090000", "attack", "interrupted"),
                ("attack-softmax1-20261129-080000", "attack", "finished"),
                ("bounds-n100-100-10-20261129-070000", "bounds", "finished"),
                ("transfer-matrix-20261129-060000", "transfer", "finished"),
                ("attack-broken-20261129-050000", "attack", "damaged"),
            ][: len(listed)]
            and len(listed) == 5
        ), listed
        before = sorted(p.name for p in runs_root["root"].iterdir())
        await pilot.press("3", "question_mark")  # a window left open on Attack (help) ...
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen", what="the help window")
        await app.switch_mode("runs")  # ... (the palette switches screens under it) is closed, not crashed into
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs screen")

        await open_row(pilot, app, runs_root["done"])  # every example of the finished run, from its files
        attack = app.screen
        assert isinstance(attack, AttackScreen)
        await wait_for(pilot, lambda: attack.result is not None, what="the reopened run")
        samples = load_samples(runs_root["done"])
        assert [t["index"] for t in attack.triplets] == samples["index"][samples["success"].bool()].tolist()
        assert attack.run_dir == runs_root["done"] and "done" in text_of(app, "#stats")

        await to_runs(pilot, app)
        await open_row(pilot, app, runs_root["bounds"])  # Table 5 from bounds.json, not recomputed
        bounds = app.screen
        assert isinstance(bounds, BoundsScreen)
        await wait_for(pilot, lambda: bounds.result is not None, what="the saved bounds")
        assert bounds.result.run == str(runs_root["bounds"]) and bounds.query_one("#table", DataTable).row_count == 3
        saved = read_json(runs_root["bounds"] / "bounds.json")
        assert [layer.upper for layer in bounds.result.layers] == [d["upper"] for d in saved["layers"]]

        await to_runs(pilot, app)
        await open_row(pilot, app, runs_root["matrix"])
        transfer = app.screen
        assert isinstance(transfer, TransferScreen)
        await wait_for(pilot, lambda: transfer.matrix is not None, what="the matrix")
        assert Path(transfer.matrix.folder) == runs_root["matrix"]

        await to_runs(pilot, app)
        await open_row(pilot, app, runs_root["root"] / "attack-broken-20261129-050000")
        assert isinstance(app.screen, RunsScreen) and "damaged" in text_of(app, "#status")
        await settle(pilot, app)
        assert sorted(p.name for p in runs_root["root"].iterdir()) == before  # reopening wrote no new run


@run_async
async def test_R_resumes_an_interrupted_attack_in_the_app_and_shows_every_example(tmp_path, runs_root):
    reference = load_samples(runs_root["done"])  # the same request, never interrupted
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await to_runs(pilot, app)
        row = next(i for i, e in enumerate(screen.entries) if e.path == runs_root["stopped"])
        screen.query_one("#runs", DataTable).move_cursor(row=row)
        assert screen.entries[row].done == 4 and screen.entries[row].total == 16
        await pilot.press("R")
        attack = app.screen
        assert isinstance(attack, AttackScreen)
        await wait_for(pilot, lambda: attack.result is not None, timeout=120, what="the resumed run to finish")
        assert attack.result.run == str(runs_root["stopped"])
        resumed = load_samples(runs_root["stopped"])
        assert torch.equal(resumed["x_adv"], reference["x_adv"])
        wanted = reference["index"][reference["success"].bool()].tolist()
        assert [t["index"] for t in attack.triplets] == wanted  # the chunk finished before the stop is shown too
        screen = await to_runs(pilot, app)
        await wait_for(
            pilot,
            lambda: any(e.path == runs_root["stopped"] and e.status == "finished" for e in screen.entries),
            what="the list to say finished",
        )


@run_async
async def test_a_cli_attack_in_another_process_is_watched_live_and_read_only(tmp_path, models_folder, monkeypatch):
    """The CLI process is held after its first chunk (tests.gated_model) until the app has watched it live."""
    runs = tmp_path / "runs"
    out, go = runs / "attack-gated-cli", tmp_path / "go"
    monkeypatch.syspath_prepend(str(REPO))  # the watcher builds the same factory model (it never runs it)
    cli = subprocess.Popen(
        [sys.executable, "-m", "blindspot", "attack", "--model-factory", "tests.gated_model:gated", "--n", "16",
         "--c-steps", "2", "--max-iter", "10", "--batch-size", "4", "--device", "cpu", "--threads", "1",
         "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "GATED_RUN": str(out), "GATED_GO": str(go), "GATED_AFTER": "1"},
    )  # fmt: skip
    try:
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            await wait_for(
                pilot,
                lambda: (
                    isinstance(app.screen, RunsScreen)
                    and any(e.status == "running" and e.done for e in app.screen.entries)
                ),
                timeout=120,
                what="the CLI run to be listed as running with finished images",
            )
            entry = app.screen.entries[0]
            assert entry.path == out and 0 < entry.done < entry.total == 16
            await pilot.press("enter")
            attack = app.screen
            assert isinstance(attack, AttackScreen)
            await wait_for(
                pilot,
                lambda: attack.chunks_done >= 1 and attack.live_ticks > 0,
                timeout=120,
                what="the held run's first chunk and a live tick",
            )
            assert attack.result is None and attack.watching
            go.touch()  # the writer goes on; the rest streams in
            await wait_for(pilot, lambda: attack.result is not None, timeout=240, what="the watched run to end")
            assert attack.watching and attack.chunks_done >= 2  # chunks streamed in as the other process wrote them
            assert attack.live_ticks > 0  # followed while it ran, not replayed after it had finished
    finally:
        go.touch()
        try:
            cli.wait(timeout=240)
        except subprocess.TimeoutExpired:
            cli.kill()  # never leave the CLI run behind the test
            cli.wait()
            raise
    assert cli.returncode == 0, cli.stderr.read() if cli.stderr else ""
    samples = load_samples(out)
    assert [t["index"] for t in attack.triplets] == samples["index"][samples["success"].bool()].tolist()
    assert not (out / ".lock").exists() and read_json(out / "run.json")["status"] == "done"
