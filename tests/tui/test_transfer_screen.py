"""Workbench: transfer screen (open, cursor, examples, sort, export, compute; same matrix as the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from textual.widgets import DataTable, Input

from engines.core.io import read_json
from engines.core.models import ModelRef
from engines.transfer.request import TransferRequest
from engines.transfer.store import load_matrix
from screens.image_view import GridView
from tests.tui.conftest import FIXED_MODELS, SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


@run_async
async def test_transfer_table_cursor_cell_view_sort_export(tmp_path, models_folder, matrix_dir, monkeypatch):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(matrix_dir.parent / "cache"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4", "l")
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
        m = screen.matrix
        cell = text_of(app, "#cell")
        assert f"{int(m.errors[0, 0])} misclassified = {m.values[0, 0]:.1f}%" in cell
        lo, hi = m.intervals[0, 0]
        assert f"(95% CI {lo:.1f}–{hi:.1f})" in cell
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, GridView)
        assert app.screen.items and len(app.screen.items[0].images) == 3
        assert len(app.screen.items) == min(12, int(m.errors[0, 0]))
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("right", "o")
        await pilot.pause()
        names = [screen.matrix.rows[i].name for i in screen.order if i is not None]
        values = [screen.matrix.values[i, 1] for i in screen.order[:2]]
        assert values == sorted(values, reverse=True) and names[-1].startswith("Gaussian")
        from screens.export_dialog import ExportDialog

        await pilot.press("e")  # the export window suggests a file in the matrix's folder; Esc writes nothing
        await wait_for(pilot, lambda: isinstance(app.screen, ExportDialog), what="the export window")
        assert app.screen.query_one("#where", Input).value == str(matrix_dir / "matrix-export.csv")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="the window to close")
        assert not (matrix_dir / "matrix-export.csv").exists()
        target = tmp_path / "exports" / "mine.csv"
        target.parent.mkdir()
        target.write_text("old")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportDialog), what="the export window")
        app.screen.query_one("#where", Input).value = str(target)
        await pilot.press("enter")  # an existing file: the first Enter only warns
        await pilot.pause()
        assert isinstance(app.screen, ExportDialog) and target.read_text() == "old"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "wrote" in text_of(app, "#status"), what="the export")
        exported = target.read_text().splitlines()
        assert exported[0] == "row,kind,softmax1,n100-100-10,distortion,n"
        assert exported[1].split(",")[2] == f"{m.values[0, 0]:.2f}"
        await pilot.press("l")
        app.screen.query_one("#path", Input).value = str(tmp_path / "nothing-here")
        await pilot.press("enter")
        await settle(pilot, app)
        assert "no transfer matrix" in text_of(app, "#status")
        screen.query_one("#sources", Input).value = "softmax1"
        screen.query_one("#n", Input).value = "0"
        await pilot.press("escape", "s")  # refused by the field's declared bounds, named by its label (CLI: --n)
        assert "N must be a whole number ≥ 1, got '0'" in text_of(app, "#status")
        screen.query_one("#n", Input).value = "4"
        await pilot.press("s")  # compute a new one (adversarial sets come from the cache)
        await settle(pilot, app)
        assert screen.matrix.n == 4 and [r.kind for r in screen.matrix.rows] == ["adversarial", "noise"]
        (folder,) = (tmp_path / "runs").glob("transfer-matrix-*")  # named by the operation
        assert screen.matrix.folder == folder and read_json(folder / "run.json")["status"] == "done"


def _results(folder: Path) -> dict:
    """A matrix.json without what differs between two runs of the same request (cache folders, timing)."""
    data = json.loads((folder / "matrix.json").read_text())
    for info in data["settings"]["sources"].values():
        for key in ("cache", "cached"):
            info.pop(key)
        for key in ("seconds", "device", "run"):
            info["summary"].pop(key)
    return data


@run_async
async def test_cli_and_screen_compute_the_same_matrix(cli, tmp_path, models_folder, monkeypatch):
    """One request, two front ends: the run folders hold the same matrix (sets computed apart, no shared cache)."""
    monkeypatch.setenv("BLINDSPOT_CACHE", str(tmp_path / "cache-cli"))
    sources = ",".join(FIXED_MODELS)
    rc, _, err = cli(
        "transfer",
        *("--sources", sources, "--targets", sources, "--n", "8", "--noise", "0.1"),  # the split: both defaults
        *("--c-steps", "2", "--max-iter", "10", "--device", "cpu", "--out", tmp_path / "cli"),
    )
    assert rc == 0, err
    monkeypatch.setenv("BLINDSPOT_CACHE", str(tmp_path / "cache-tui"))
    shutil.copytree(tmp_path / "cli", tmp_path / "runs" / "older")  # the newest matrix under runs/ so far
    app = make_app(tmp_path, attack={"n": 8, "c_steps": 2, "max_iter": 10})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot, app)
        screen = app.screen
        # opened at once (it used to open on a blank screen with the path only pre-filled)
        assert screen.matrix is not None and screen.matrix.folder == tmp_path / "runs" / "older"
        assert screen.query_one("#matrix", DataTable).row_count > 0
        screen.query_one("#sources", Input).value = sources
        screen.query_one("#targets", Input).value = sources
        screen.query_one("#n", Input).value = "8"
        screen.query_one("#noise", Input).value = "0.1"
        said: list[str] = []
        say = screen.say
        monkeypatch.setattr(screen, "say", lambda text, error=False: (said.append(text), say(text, error)))
        during: list[tuple[bool, int]] = []  # while it computes, the old matrix must not pass for the new one
        show_event = screen.show_event
        monkeypatch.setattr(
            screen,
            "show_event",
            lambda e: (during.append((screen.matrix is None, screen.query_one("#matrix", DataTable).row_count)),
                       show_event(e)),
        )  # fmt: skip
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.matrix is not None, timeout=120, what="the matrix")
        (tui,) = (tmp_path / "runs").glob("transfer-matrix-*")
        assert screen.query_one("#path", Input).value == str(tui)  # o reopens the new one
        assert during and set(during) == {(True, 0)}
    # the screen rendered the operation's events: each set as it became ready (computed, not cached)
    assert [t for t in said if t.startswith("adversarial sets: ") and "set of" in t] == [
        "adversarial sets: 1/2 · set of softmax1 computed · x cancels",
        "adversarial sets: 2/2 · set of n100-100-10 computed · x cancels",
    ]
    assert any((tmp_path / "cache-tui").rglob("summary.json"))
    (tui,) = (tmp_path / "runs").glob("transfer-matrix-*")
    assert read_json(tui / "run.json")["request"] == read_json(tmp_path / "cli" / "run.json")["request"]
    assert read_json(tui / "run.json")["request"]["split"] == TransferRequest.split  # one default, declared once
    a, b = _results(tmp_path / "cli"), _results(tui)
    assert a["errors"] == b["errors"] and a["values"] == b["values"] and a["intervals"] == b["intervals"]
    assert np.allclose(np.array(a["distortions"], float), np.array(b["distortions"], float), equal_nan=True)
    assert a == b
    for row in a["rows"]:
        x_cli = (tmp_path / "cli" / row["set_file"]).read_bytes()
        assert x_cli == (tui / row["set_file"]).read_bytes(), row["name"]


@run_async
async def test_the_screen_takes_per_model_weights_as_name_equals_file(tmp_path, models_folder, matrix_dir, monkeypatch):
    """NAME=FILE in the sources or targets field gives that model its weights, for sources and targets alike,
    parsed by the engine as `--weights NAME=FILE` is; two files for one model are refused with one line."""
    import engines.transfer.operation as operation

    asked: list[TransferRequest] = []

    def fake_run(request: TransferRequest, ctx) -> object:  # the request is what matters: no attack on resnet18
        asked.append(request)
        return load_matrix(matrix_dir)

    monkeypatch.setattr(operation, "run_transfer", fake_run)
    factory_weights = tmp_path / "cnn.safetensors"
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot, app)
        screen = app.screen
        screen.query_one("#sources", Input).value = "resnet18=~/w/r18.pth, softmax1"
        screen.query_one("#targets", Input).value = f"softmax1, resnet18, pkg.nets:cnn={factory_weights}"
        screen.query_one("#n", Input).value = "4"
        await pilot.press("escape", "s")
        await wait_for(pilot, lambda: bool(asked), what="the request")
        await settle(pilot, app)
        (request,) = asked
        r18 = ModelRef("resnet18", weights=str(Path("~/w/r18.pth").expanduser()))
        assert request.sources == (r18, ModelRef("softmax1"))
        assert request.targets == (
            ModelRef("softmax1"),
            r18,
            ModelRef(factory="pkg.nets:cnn", weights=str(factory_weights)),
        )
        assert request.n == 4 and request.split == TransferRequest.split
        screen.query_one("#targets", Input).value = "resnet18=~/other.pth"
        await pilot.press("s")
        await pilot.pause()
        assert "weights (NAME=FILE) is given twice for resnet18" in text_of(app, "#status")
        assert len(asked) == 1  # refused before any job


@run_async
async def test_the_screen_refuses_bad_fields_in_its_own_words_before_any_job(tmp_path, models_folder, monkeypatch):
    """Empty sources and noise, or NAME=FILE on a zoo model (it carries its weights), are refused at once with
    one line that names the screen's fields, never a command-line flag; no job starts."""
    import engines.transfer.operation as operation

    asked: list[TransferRequest] = []
    monkeypatch.setattr(operation, "run_transfer", lambda request, ctx: asked.append(request))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot, app)
        screen = app.screen
        screen.query_one("#sources", Input).value = ""
        screen.query_one("#noise", Input).value = ""
        await pilot.press("escape", "s")
        await pilot.pause()
        status = text_of(app, "#status")
        assert "nothing to evaluate: give sources and/or noise" in status and "--" not in status
        screen.query_one("#sources", Input).value = "softmax1=x.pt"
        screen.query_one("#noise", Input).value = "0.1"
        await pilot.press("s")
        await pilot.pause()
        status = text_of(app, "#status")
        assert "softmax1 is a zoo model or checkpoint file with its own weights" in status, status
        assert "weights (NAME=FILE) applies to torchvision names and factories" in status and "--" not in status
        assert not asked and "transfer" not in screen.jobs
