"""Workbench: `R` on the Models screen resumes a training cancelled with `x` from its last finished epoch."""

from __future__ import annotations

import json
import threading

from safetensors.torch import load_file
from textual.widgets import DataTable, Footer, Static

from engines.core.context import RunContext
from engines.core.data import dataset_identity
from engines.core.events import EpochDone, Event
from engines.train.fit import trained_model_id
from engines.train.operation import run_training
from engines.train.resume import RESUME_FOLDER
from screens.help import screen_keys
from screens.jobs import Job
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for

EPOCHS = 3


async def press_and_wait(pilot, app, key: str) -> None:
    """Press a training key and wait until the training job it started has ended."""
    screen = app.screen
    screen.jobs.pop("train", None)
    await pilot.press(key)
    await wait_for(pilot, lambda: "train" in screen.jobs, what="the training job to start")
    await wait_for(pilot, lambda: not screen.busy("train"), timeout=120, what="the training to end")
    await settle(pilot, app)


@run_async
async def test_r_resumes_a_cancelled_training_to_the_uninterrupted_weights(
    tmp_path, models_folder, tiny_mnist, monkeypatch
):
    first_epoch = threading.Event()  # set by the training thread at its first Adam epoch, which then waits for `x`
    gate = {"on": True}
    emit = Job.emit

    def gated_emit(job: Job, event: Event) -> None:
        emit(job, event)
        if gate["on"] and isinstance(event, EpochDone) and event.stage == "Adam":
            gate["on"] = False
            first_epoch.set()
            assert job._cancel.wait(60), "x was never pressed"

    monkeypatch.setattr(Job, "emit", gated_emit)
    seen: list[Event] = []
    app = make_app(tmp_path, data_dir=str(tiny_mnist), train_epochs=EPOCHS, train_max_iter=2)
    name = trained_model_id("n100-100-10", dataset_identity(tiny_mnist))
    state = tmp_path / "runs" / "models" / RESUME_FOLDER / name / "seed0.pt"
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        screen = app.screen
        original = screen.train_event
        screen.train_event = lambda event: (seen.append(event), original(event))
        items = list(screen.query_one(Footer).query("FooterKey"))
        assert "R" in [str(i.render()).strip() for i in items]  # in the footer, which still fits 80 columns
        assert all(i.region.right <= SIZE[0] for i in items)
        assert ("R", "Resume training") in screen_keys(screen)  # and in the help
        assert screen.rows[1]["id"] == "n100-100-10"
        screen.query_one("#models", DataTable).move_cursor(row=1)
        await pilot.press("t")
        await wait_for(pilot, first_epoch.is_set, timeout=120, what="the first epoch")
        await pilot.press("x")
        await wait_for(pilot, lambda: not screen.busy("train"), timeout=120, what="the cancel")
        await settle(pilot, app)
        assert "training cancelled · R resumes from the last finished epoch" in text_of(app, "#status")
        assert state.exists()  # the engine kept epoch 1's state

        app.state.settings.train_epochs = EPOCHS + 1  # another recipe: refused in one line, the state kept
        await press_and_wait(pilot, app, "R")
        status = screen.query_one("#status", Static)
        assert "training failed" in text_of(app, "#status") and "another recipe" in text_of(app, "#status")
        assert status.has_class("error") and state.exists()

        app.state.settings.train_epochs = EPOCHS
        seen.clear()
        await press_and_wait(pilot, app, "R")
        assert f"trained {name} (resumed after epoch 1)" in text_of(app, "#status")
        request = screen.train_request("n100-100-10")
    assert [e.done for e in seen if isinstance(e, EpochDone) and e.stage == "Adam"] == [2, 3]  # epoch 1 not again
    assert not state.parent.exists()  # deleted once the checkpoint is saved
    resumed = tmp_path / "runs" / "models" / f"{name}.safetensors"
    assert json.loads(resumed.with_suffix(".json").read_text())["training"]["resumed_from"]["epoch"] == 1
    whole = run_training(request, RunContext(device="cpu", out=tmp_path / "whole")).models[0].path
    a, b = load_file(str(whole)), load_file(str(resumed))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@run_async
async def test_r_without_a_saved_state_trains_from_the_start_and_says_so(tmp_path, models_folder, tiny_mnist):
    app = make_app(tmp_path, data_dir=str(tiny_mnist), train_max_iter=5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.screen.query_one("#models", DataTable).move_cursor(row=0)  # softmax1: full-batch L-BFGS
        await press_and_wait(pilot, app, "R")
        status = text_of(app, "#status")
    name = trained_model_id("softmax1", dataset_identity(tiny_mnist))
    assert f"trained {name} (no saved state: trained from the start)" in status
    assert (tmp_path / "runs" / "models" / f"{name}.safetensors").exists()
