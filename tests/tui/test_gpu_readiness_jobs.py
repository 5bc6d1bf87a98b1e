"""Workbench jobs hand their cached GPU memory back when they end, whichever way they end (issue 23, item 9)."""

from __future__ import annotations

import sys

import screens.jobs as sj
from engines.core.errors import InputError
from tests.tui.conftest import SIZE, make_app, run_async, settle, wait_for


@run_async
async def test_every_job_releases_cached_memory_after_it_ends(tmp_path, models_folder, monkeypatch):
    released: list[tuple[str, object]] = []
    monkeypatch.setattr(sj, "release_memory", lambda device: released.append((device, sys.exc_info()[0])))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        outcomes: list[str] = []

        def bad_input(job):
            raise InputError("no such model")

        before = len(released)  # the screen's own jobs at start-up
        app.screen.start("fine", lambda job: 42, on_done=lambda r: outcomes.append(f"done {r}"))
        await wait_for(pilot, lambda: len(released) == before + 1, what="the first job's release")
        app.screen.start("refused", bad_input, on_error=outcomes.append)
        await wait_for(pilot, lambda: len(released) == before + 2, what="the failed job's release")
        await settle(pilot, app)
    assert outcomes == ["done 42", "no such model"]
    assert released[before:] == [("cuda", None)] * 2  # after the handler: no traceback holds the job's tensors
