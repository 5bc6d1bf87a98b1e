"""The Textual workbench, driven with the Pilot: keys, workers, cancel, errors; and 80×24 snapshots.

Images are forced to half-block, models come from a fixed folder (softmax1, n100-100-10), and
engine jobs are shrunk so that the whole file runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from textual.widgets import DataTable, Input, Static

from blindspot.app import BlindspotApp, Settings
from engines.core.data import sample_data_dir
from engines.core.events import Progress
from screens.attack import AttackScreen
from screens.bounds import BoundsScreen
from screens.gallery import GalleryScreen
from screens.image_view import GridView, ImageView
from screens.jobs import Job, JobProgress
from screens.models import ModelsScreen
from screens.transfer import TransferScreen
from screens.widgets import ImageGrid

SHIPPED = sample_data_dir() / "models"
FIXED_MODELS = ("softmax1", "n100-100-10")
SIZE = (80, 24)


@pytest.fixture
def models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder with a fixed set of shipped checkpoints (the zoo grows; snapshots must not)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for mid in FIXED_MODELS:
        for suffix in (".safetensors", ".json"):
            shutil.copy(SHIPPED / f"{mid}{suffix}", folder / f"{mid}{suffix}")
    monkeypatch.setenv("BLINDSPOT_MODELS", str(folder))
    return folder


def run_async(fn):
    """Run an async test body in its own event loop (no asyncio plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def make_app(tmp_path: Path, **changes) -> BlindspotApp:
    settings = Settings(
        device="cpu",
        runs_dir=tmp_path / "runs",
        attack={"n": 8, "c_steps": 2, "max_iter": 10},
        units_random=200,
    )
    for key, value in changes.items():
        setattr(settings, key, value)
    return BlindspotApp(settings, graphics_mode="halfblock")


async def settle(pilot, app: BlindspotApp, rounds: int = 3) -> None:
    """Let workers finish and their messages be handled."""
    for _ in range(rounds):
        await pilot.pause()
        await app.workers.wait_for_complete()
    await pilot.pause()


def text_of(app: BlindspotApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transfer matrix (two sources, two targets, one noise row), computed once."""
    from engines.attack.problems import AttackConfig
    from engines.attack.transfer import compute_transfer

    out = tmp_path_factory.mktemp("transfer") / "matrix"
    mp = pytest.MonkeyPatch()
    mp.setenv("BLINDSPOT_CACHE", str(out.parent / "cache"))
    try:
        compute_transfer(
            ["softmax1", "n100-100-10"],
            ["softmax1", "n100-100-10"],
            "test",
            8,
            out,
            noise=[0.1],
            config=AttackConfig(c_steps=2, max_iter=10),
        )
    finally:
        mp.undo()
    return out


# --------------------------------------------------------------------------- plumbing


def test_progress_is_throttled_and_merged():
    posted = []

    class Owner:
        def post_message(self, message):
            posted.append(message)

    job = Job(Owner(), "demo", interval=10.0)
    for i in range(1000):
        job.progress(Progress("demo", i, 1000))
    job.progress(Progress("demo", 1000, 1000))
    assert len(posted) == 2  # the first, then the final one; everything between was dropped
    assert posted[0].can_replace(posted[1]) and posted[1].can_replace(posted[0])
    other = JobProgress(Job(Owner(), "other"), Progress("other", 1, 2))
    assert not other.can_replace(posted[0])


# --------------------------------------------------------------------------- navigation


@run_async
async def test_keys_switch_screens_palette_and_quit(tmp_path, models_folder):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert isinstance(app.screen, ModelsScreen)
        for key, cls in (("3", AttackScreen), ("5", BoundsScreen), ("4", TransferScreen), ("2", GalleryScreen)):
            await pilot.press(key)
            await settle(pilot, app)
            assert isinstance(app.screen, cls)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Attack screen (3)" in titles and "Next (n)" in titles and "Cancel (x)" in titles
        await pilot.press("1")
        await pilot.resize_terminal(200, 50)
        await settle(pilot, app)
        assert isinstance(app.screen, ModelsScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


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


# --------------------------------------------------------------------------- attack


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


# --------------------------------------------------------------------------- gallery, transfer, bounds


@run_async
async def test_gallery_pages_and_enlarges(tmp_path, models_folder):
    app = make_app(tmp_path, units_images=500)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        screen = app.screen
        units, rand = screen.query_one("#units", ImageGrid), screen.query_one("#random", ImageGrid)
        assert len(units.items) > 10 and len(rand.items) >= len(units.items)
        assert "purity" in units.items[0].title
        assert "verdict" in text_of(app, "#verdict")
        first = units.top_line
        await pilot.press("n")
        await pilot.pause()
        assert units.top_line > first and rand.top_line > first
        await pilot.press("right", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ImageView) and "rank 2" in str(app.screen.caption)
        await pilot.press("escape", "tab")
        await pilot.pause()
        assert rand.has_focus


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


@pytest.mark.parametrize("mode", ["sixel", "tgp", "unicode", "auto"])
@run_async
async def test_enlarged_image_in_every_graphics_mode(tmp_path, models_folder, mode):
    import numpy as np
    import textual_image.widget as widgets

    from screens import graphics

    app = make_app(tmp_path)
    try:
        graphics.configure(mode)
        async with app.run_test(size=SIZE) as pilot:
            digit = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
            app.push_screen(ImageView([digit, 255 - digit], "a test image", names=["one", "two"]))
            await pilot.pause()
            await pilot.press("right")
            await pilot.pause()
            big = app.screen.query_one("#big")
            assert isinstance(big, widgets.Image if mode == "auto" else graphics.large_image_widget())
            assert app.screen.index == 1 and "two" in app.screen.query_one("#frame").border_title
    finally:
        graphics.configure("halfblock")


@pytest.mark.gpu
@run_async
async def test_attack_on_cuda(tmp_path, models_folder):
    app = make_app(tmp_path, device="cuda")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "s")
        await settle(pilot, app)
        assert "on cuda" in text_of(app, "#stats")
    assert torch.cuda.is_available()


# --------------------------------------------------------------------------- snapshots (80×24, half-block)


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

    assert snap_compare(make_app(tmp_path, matrix=matrix_dir), terminal_size=SIZE, run_before=run_before)


def test_snapshot_transfer_cell(snap_compare, tmp_path, models_folder, matrix_dir, monkeypatch):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(matrix_dir.parent / "cache"))

    async def run_before(pilot):
        await pilot.press("4")
        await settle(pilot, pilot.app)
        await pilot.press("enter")
        await settle(pilot, pilot.app)

    assert snap_compare(make_app(tmp_path, matrix=matrix_dir), terminal_size=SIZE, run_before=run_before)


def test_snapshot_enlarged_image(snap_compare, tmp_path, models_folder):
    async def run_before(pilot):
        await pilot.press("2")
        await settle(pilot, pilot.app)
        await pilot.press("enter")
        await pilot.pause()

    assert snap_compare(make_app(tmp_path, units_images=1000), terminal_size=SIZE, run_before=run_before)
