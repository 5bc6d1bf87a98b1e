"""Shared set-up of the workbench tests: a fixed models folder, the app factory, bounded waits.

Images are forced to half-block, models come from a fixed folder (softmax1, n100-100-10), and
engine jobs are shrunk so that each test runs in seconds on one CPU thread.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Static

from blindspot.app import BlindspotApp, create_app
from engines.attack.operation import AttackRequest, run_attack
from engines.attack.search import AttackConfig
from engines.bounds.operation import BoundsRequest, run_bounds
from engines.core.context import RunContext
from engines.core.data import sample_data_dir
from engines.core.errors import Cancelled
from engines.core.events import ChunkDone
from engines.core.io import read_json, write_json_atomic
from screens.state import Settings

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
    return create_app(settings, graphics_mode="halfblock")


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
    """A tiny transfer matrix (two sources, two targets, one noise row), computed once through the operation."""
    from engines.attack.search import AttackConfig
    from engines.core.context import RunContext
    from engines.transfer.operation import run_transfer
    from engines.transfer.request import TransferRequest

    out = tmp_path_factory.mktemp("transfer") / "matrix"
    mp = pytest.MonkeyPatch()
    mp.setenv("BLINDSPOT_CACHE", str(out.parent / "cache"))
    try:
        request = TransferRequest(
            sources=FIXED_MODELS, split="test", n=8, noise=(0.1,), config=AttackConfig(c_steps=2, max_iter=10)
        )
        run_transfer(request, RunContext(device="cpu", out=out))
    finally:
        mp.undo()
    return out


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 60.0, what: str = "the condition") -> None:
    """Let the app handle messages until `condition()` holds; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.02)


# ------------------------------------------------------------- run folders for the Runs screen
REQUEST = AttackRequest(model="softmax1", n=16, config=AttackConfig(c_steps=2, max_iter=10), chunk_images=4)


def finished_attack(runs: Path, name: str = "attack-softmax1-20261129-080000") -> Path:
    return Path(run_attack(REQUEST, RunContext(device="cpu", out=runs / name)).run)


def interrupted_attack(runs: Path, name: str = "attack-softmax1-20261129-090000") -> Path:
    """A run cancelled after its first chunk (as `x` or Ctrl-C leave it)."""
    seen: list[ChunkDone] = []
    ctx = RunContext(
        device="cpu", out=runs / name, on_event=lambda e: seen.append(e) if isinstance(e, ChunkDone) else None
    )
    ctx = RunContext(device="cpu", out=runs / name, on_event=ctx.on_event, cancelled=lambda: bool(seen))
    with pytest.raises(Cancelled):
        run_attack(REQUEST, ctx)
    return runs / name


def pin_times(folder: Path, started: float) -> None:
    """Fixed start and duration (outside the checksummed request), so that listings and snapshots are stable."""
    record = read_json(folder / "run.json")
    record.update(started=started, seconds=1.0)
    write_json_atomic(folder / "run.json", record)


@pytest.fixture
def runs_root(tmp_path, models_folder, matrix_dir):
    runs = tmp_path / "runs"
    done, stopped = finished_attack(runs), interrupted_attack(runs)
    bounds = Path(run_bounds(BoundsRequest(model="n100-100-10"), RunContext(device="cpu", runs_root=runs)).run)
    bounds = bounds.rename(runs / "bounds-n100-100-10-20261129-070000")
    matrix = runs / "transfer-matrix-20261129-060000"
    shutil.copytree(matrix_dir, matrix)
    broken = runs / "attack-broken-20261129-050000"
    broken.mkdir()
    (broken / "run.json").write_text("{ not json")
    for path in (broken / "run.json", broken):
        os.utime(path, (1_795_939_200.0 + 3600 * 5,) * 2)
    (runs / "not-a-run").mkdir()
    for folder, hour in ((done, 8), (stopped, 9), (bounds, 7), (matrix, 6)):
        pin_times(folder, 1_795_939_200.0 + 3600 * hour)
    return {"root": runs, "done": done, "stopped": stopped, "bounds": bounds, "matrix": matrix}
