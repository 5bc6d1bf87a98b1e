"""Workbench: models screen."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from textual.widgets import DataTable, Input

from engines.core.data import dataset_identity
from engines.core.events import EpochDone, Event, ModelTrained
from engines.core.io import file_sha256
from engines.train.fit import trained_model_id
from screens.attack import AttackScreen
from tests.tui.conftest import SHIPPED, SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


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
        assert app.state.active_model == "softmax1"
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
        assert app.state.active_model == "softmax1"  # unchanged, and the app is alive
        app.screen.query_one("#path", Input).value = str(good)
        app.screen.query_one("#path", Input).focus()
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.state.active_model == str(good) and "loaded mine.pt" in text_of(app, "#status")
        assert table.row_count == 3 and "file" in str(table.get_row_at(2))
        await pilot.press("escape", "3")
        await settle(pilot, app)
        assert isinstance(app.screen, AttackScreen)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime (ns) and sha256 of every file under `folder`: any write shows."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, file_sha256(p)) for p in sorted(folder.rglob("*"))}


async def train_highlighted(pilot, app, row: int, key: str = "t") -> list[Event]:
    """Press `t` (or `T`) on a row of the Models screen and wait until the training job has ended."""
    screen = app.screen
    seen: list[Event] = []
    original = screen.train_event
    screen.train_event = lambda event: (seen.append(event), original(event))
    screen.query_one("#models", DataTable).move_cursor(row=row)
    screen.jobs.pop("train", None)
    await pilot.press(key)
    await wait_for(pilot, lambda: "train" in screen.jobs, what="the training job to start")
    await wait_for(pilot, lambda: not screen.busy("train"), timeout=120, what="the training to end")
    await settle(pilot, app)
    screen.train_event = original
    return seen


@run_async
async def test_t_on_a_shipped_zoo_model_trains_into_the_runs_folder_never_sample_data(
    tmp_path, tiny_mnist, monkeypatch
):
    monkeypatch.delenv("BLINDSPOT_MODELS", raising=False)  # the listing is the real shipped zoo
    before = snapshot(SHIPPED)
    app = make_app(tmp_path, data_dir=str(tiny_mnist), train_max_iter=20)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        screen = app.screen
        assert screen.rows[0]["id"] == "softmax1" and Path(screen.rows[0]["path"]).parent == SHIPPED
        seen = await train_highlighted(pilot, app, 0)
        status = text_of(app, "#status")
        name = trained_model_id("softmax1", dataset_identity(tiny_mnist))  # not MNIST: not the paper's id
        assert f"trained {name}" in status and "Enter uses it" in status
        trained = tmp_path / "runs" / "models" / f"{name}.safetensors"
        offered = [r for r in screen.rows if r.get("source") == "trained"]
        assert [r["path"] for r in offered] == [str(trained)]
        assert screen.highlighted()["path"] == str(trained)
        await pilot.press("enter")
        await pilot.pause()
        assert app.state.active_model == str(trained)
        first = file_sha256(trained)
        await train_highlighted(pilot, app, 0)  # `t` again: the checkpoint is kept, `T` is offered
        assert "already exists" in text_of(app, "#status") and "T trains over it" in text_of(app, "#status")
        assert file_sha256(trained) == first
        await train_highlighted(pilot, app, 0, key="T")
        assert f"trained {name}" in text_of(app, "#status")
    assert snapshot(SHIPPED) == before  # not one byte nor mtime changed under sample_data/models
    meta = json.loads(trained.with_suffix(".json").read_text())
    assert meta["training"]["iterations"] <= 20 and meta["id"] == name and meta["zoo_id"] == "softmax1"
    epochs = [e for e in seen if isinstance(e, EpochDone)]
    assert epochs and all(e.task == "train softmax1" and e.stage == "L-BFGS" for e in epochs)
    assert [(e.model_id, e.path) for e in seen if isinstance(e, ModelTrained)] == [(name, str(trained))]


@run_async
async def test_training_on_the_cli_and_in_the_workbench_gives_the_same_checkpoint(
    tmp_path, models_folder, tiny_mnist, cli
):
    rc, out, err = cli(
        "train", "-m", "n100-100-10", "--epochs", "1", "--max-iter", "2", "--seed", "0",
        "--data", tiny_mnist, "--device", "cpu", "--out", tmp_path / "cli", "--json",
    )  # fmt: skip
    assert rc == 0, err
    cli_row = json.loads(out)[0]
    app = make_app(tmp_path, data_dir=str(tiny_mnist), train_epochs=1, train_max_iter=2, models_folder=models_folder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.screen.rows[1]["id"] == "n100-100-10"
        await train_highlighted(pilot, app, 1)
        assert "trained n100-100-10-data-" in text_of(app, "#status")
    name = trained_model_id("n100-100-10", dataset_identity(tiny_mnist))
    tui_path = tmp_path / "runs" / "models" / f"{name}.safetensors"
    cli_path = Path(cli_row["path"])
    assert cli_path == tmp_path / "cli" / f"{name}.safetensors"
    a, b = load_file(str(cli_path)), load_file(str(tui_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cli_meta, tui_meta = (json.loads(p.with_suffix(".json").read_text()) for p in (cli_path, tui_path))
    for meta in (cli_meta, tui_meta):
        meta["training"].pop("seconds")
    assert cli_meta == tui_meta  # metrics, training record, seed, data md5, weights sha256
    assert cli_row["metrics"] == tui_meta["metrics"]
    assert tui_meta["training"]["optimizer"] == "adam, then full-batch lbfgs"
    assert tui_meta["training"]["polish"]["iterations"] == 2
    assert (models_folder / "n100-100-10.json").read_text() == (SHIPPED / "n100-100-10.json").read_text()


@run_async
async def test_one_device_setting_that_never_offers_a_missing_cuda(tmp_path, models_folder, monkeypatch):
    """`d` used to cycle to cuda on a machine without one, and the Attack screen kept its own device."""
    from textual.widgets import Select

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        seen = []
        for _ in range(4):
            await pilot.press("d")
            seen.append(app.state.settings.device)
        assert "cuda" not in seen and set(seen) == {"auto", "cpu"}
        assert "no CUDA device on this machine" in text_of(app, "#status")
        while app.state.settings.device != "cpu":
            await pilot.press("d")
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, AttackScreen), what="the attack screen")
        device = app.screen.query_one("#device", Select)
        assert device.value == "cpu" and [v for _, v in device._options if v != Select.BLANK] == ["auto", "cpu"]
        device.value = "auto"
        await pilot.pause()
        assert app.state.settings.device == "auto" and "device auto" in app.sub_title
