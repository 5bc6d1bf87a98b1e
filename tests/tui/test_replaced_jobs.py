"""Workbench: a job replaced by a newer one of the same name is silent (no events, no outcome on the screen)."""

from __future__ import annotations

import threading

from engines.core.events import Event, Step
from screens.jobs import Job, WorkbenchScreen
from tests.tui.conftest import SIZE, make_app, run_async, settle, wait_for  # noqa: F401


@run_async
async def test_an_event_of_a_replaced_job_never_reaches_the_screen(tmp_path, models_folder):
    """Bounds and Gallery replace a running job of the same name; the old one's late events used to be shown."""
    app = make_app(tmp_path, models_folder=models_folder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, WorkbenchScreen)
        seen: list[tuple[str, Event]] = []
        done: list[str] = []
        old_may_go, new_may_go = threading.Event(), threading.Event()

        def work(tag: str, gate: threading.Event):
            def body(job: Job) -> str:
                gate.wait(timeout=60)
                job.emit(Step(task=tag, done=1, total=2, message=tag))  # the first tick of a task always passes
                return tag

            return body

        def callbacks(tag: str) -> dict:
            return {"on_event": lambda e: seen.append((tag, e)), "on_done": done.append}

        try:
            old = screen.start("work", work("old", old_may_go), **callbacks("old"))
            assert old is not None
            new = screen.start("work", work("new", new_may_go), replace=True, **callbacks("new"))
            assert new is not None and old.cancelled()
            old_may_go.set()  # the replaced job speaks only now, while it still runs
            # its event is queued before its outcome (one thread, one queue): once that is handled, so is the event
            await wait_for(pilot, lambda: not old.running, what="the replaced job's end")
            assert seen == [] and done == []
            new_may_go.set()
            await wait_for(pilot, lambda: not new.running, what="the new job's end")
            assert [(tag, e.task) for tag, e in seen] == [("new", "new")]
            assert done == ["new"]
        finally:  # a failed assertion must not leave a worker waiting out its gate
            old_may_go.set()
            new_may_go.set()
