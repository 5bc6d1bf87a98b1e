"""Shared set-up of the workbench tests: a fixed models folder, the app factory, bounded waits.

Images are forced to half-block, models come from a fixed folder (softmax1, n100-100-10), and
engine jobs are shrunk so that each test runs in seconds on one CPU thread.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Static

from blindspot.app import BlindspotApp, create_app
from engines.core.data import sample_data_dir
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
    from engines.attack.problems import AttackConfig
    from engines.attack.transfer import TransferRequest, run_transfer
    from engines.core.context import RunContext

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
