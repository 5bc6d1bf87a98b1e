"""The train operation: request validation, the output policy (never the shipped zoo unless asked),
events, cancellation, and the CLI built on it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engines.core.context import RunContext
from engines.core.data import dataset_identity, sample_data_dir
from engines.core.errors import Cancelled, InputError
from engines.core.events import EpochDone, ModelTrained
from engines.core.io import file_sha256
from engines.core.model_rows import checkpoint_row, model_rows
from engines.core.zoo import ZOO, build_model, zoo_entry
from engines.train.fit import train_lbfgs, trained_model_id
from engines.train.operation import TrainRequest, run_training, zoo_ids


def trained_as(zoo_id: str, data: Path) -> str:
    """The id a zoo model trained on the test's (non-MNIST) data is saved under."""
    return trained_model_id(zoo_id, dataset_identity(data))


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime (ns) and sha256 of every file under `folder`: any write shows."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, file_sha256(p)) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": ()}, "say what to train"),
        ({"models": ("softmax1", "nope")}, "unknown zoo model 'nope'"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"max_iter": 0}, "--max-iter must be at least 1"),
    ],
)
def test_a_bad_request_is_refused_when_it_is_built(changes, message):
    with pytest.raises(InputError, match=message):
        TrainRequest(**({"models": ("softmax1",)} | changes))


def test_zoo_names_and_the_request_round_trip_through_json():
    paper_zoo = zoo_ids(None, "paper")
    assert len(paper_zoo) == 10 and paper_zoo[0] == "softmax1" and paper_zoo[-1] == "m2"
    section42 = zoo_ids(None, "adversarial")
    assert set(paper_zoo) | set(section42) == set(ZOO) and not set(paper_zoo) & set(section42)
    assert "n100-100-10-adv" in section42 and "n100-100-10-decay" in section42
    assert zoo_ids(["m1", "m2"], None) == ("m1", "m2")
    with pytest.raises(InputError, match="choose paper or adversarial"):
        zoo_ids(None, "imagenet")
    request = TrainRequest(models=("m1", "conv"), optimizer="adam", epochs=2, seed=7, data_dir="d")
    assert TrainRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    request = TrainRequest(models=("n100-100-10",), adversarial={"pool_size": 10, "layers": ["act2"]})
    assert TrainRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    with pytest.raises(InputError, match="damaged"):
        TrainRequest.from_json({"optimizer": "adam"})


def test_checkpoints_go_to_runs_models_with_one_event_per_saved_model(tiny_mnist, tmp_path):
    events = []
    ctx = RunContext(device="cpu", runs_root=tmp_path / "runs", on_event=events.append)
    request = TrainRequest(models=("softmax1", "softmax2"), max_iter=3, data_dir=str(tiny_mnist))
    result = run_training(request, ctx)
    folder = tmp_path / "runs" / "models"
    s1, s2 = trained_as("softmax1", tiny_mnist), trained_as("softmax2", tiny_mnist)
    assert s1.startswith("softmax1-data-") and len(s1) == len("softmax1-data-") + 8  # not MNIST: not a paper id
    assert result.folder == str(folder)
    assert [m.path for m in result.models] == [str(folder / f"{s1}.safetensors"), str(folder / f"{s2}.safetensors")]
    saved = [e for e in events if isinstance(e, ModelTrained)]
    assert [(e.model_id, e.done, e.total) for e in saved] == [(s1, 1, 2), (s2, 2, 2)]
    sidecar = json.loads((folder / f"{s1}.json").read_text())
    assert saved[0].metrics == result.models[0].metrics == sidecar["metrics"]
    assert sidecar["zoo_id"] == "softmax1" and sidecar["paper"] == {} and sidecar["data"]["name"] == "IDX data"
    lbfgs = [e for e in events if isinstance(e, EpochDone) and e.task == "train softmax1"]
    assert lbfgs and lbfgs[-1].done == 3 and lbfgs[-1].total == 3  # max_iter is honoured exactly, not rounded up
    assert result.models[0].training["iterations"] == 3
    assert result.to_json()[1] == {
        "id": s2,
        "path": str(folder / f"{s2}.safetensors"),
        "metrics": result.models[1].metrics,
        "training": result.models[1].training,
    }
    rows = model_rows(folder)
    assert [r["id"] for r in rows] == [s1, s2] and rows[0]["data"] == "IDX data"


def test_an_existing_checkpoint_is_replaced_only_with_overwrite(tiny_mnist, tmp_path):
    out = tmp_path / "models"
    request = TrainRequest(models=("softmax1", "softmax2"), max_iter=1, data_dir=str(tiny_mnist))
    first = run_training(replace(request, models=("softmax2",)), RunContext(device="cpu", out=out))
    before = snapshot(out)
    with pytest.raises(InputError, match=f"{trained_as('softmax2', tiny_mnist)}.safetensors already exists"):
        run_training(request, RunContext(device="cpu", out=out))
    assert snapshot(out) == before  # refused before softmax1 was trained: nothing written
    again = run_training(request, RunContext(device="cpu", out=out, overwrite=True, threads=1))
    assert [m.path for m in again.models][1] == first.models[0].path
    assert len(list(out.glob("*.safetensors"))) == 2


def test_the_shipped_zoo_is_refused_without_the_flag_and_nothing_is_written(tiny_mnist, tmp_path):
    shipped = sample_data_dir() / "models"
    before = snapshot(shipped)
    request = TrainRequest(models=("softmax1",), max_iter=1, data_dir=str(tiny_mnist))
    for out in (shipped, sample_data_dir(), Path(str(shipped) + "/../models")):
        with pytest.raises(InputError, match="shipped zoo.*--into-shipped-zoo"):
            run_training(request, RunContext(device="cpu", out=out))
    assert snapshot(shipped) == before


def test_the_flag_lets_a_maintainer_regenerate_the_zoo(tiny_mnist, tmp_path, monkeypatch):
    fake = tmp_path / "sample_data"
    shutil.copytree(
        sample_data_dir() / "models", fake / "models", ignore=shutil.ignore_patterns("m*", "n*", "c*", "a*")
    )
    monkeypatch.setenv("BLINDSPOT_SAMPLE_DATA", str(fake))
    request = TrainRequest(models=("softmax1",), max_iter=1, data_dir=str(tiny_mnist), into_shipped_zoo=True)
    result = run_training(request, RunContext(device="cpu", out=fake / "models"))
    assert result.models[0].path == str(fake / "models" / f"{trained_as('softmax1', tiny_mnist)}.safetensors")
    old = file_sha256(result.models[0].path)
    again = run_training(replace(request, seed=1), RunContext(device="cpu", out=fake / "models", overwrite=True))
    assert again.models[0].path == result.models[0].path and file_sha256(result.models[0].path) != old


def test_an_unwritable_output_is_refused_before_training(tiny_mnist, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    events = []
    request = TrainRequest(models=("softmax1",), max_iter=1, data_dir=str(tiny_mnist))
    with pytest.raises(InputError, match="is a file"):
        run_training(request, RunContext(device="cpu", out=blocker, on_event=events.append))
    assert events == []  # refused before any epoch


def test_cancel_reaches_inside_an_lbfgs_block_and_nothing_is_saved(tiny_mnist, tmp_path):
    calls = []

    def cancelled() -> bool:  # false for the check before the block and the first evaluation, then true
        calls.append(1)
        return len(calls) > 2

    events = []
    ctx = RunContext(device="cpu", runs_root=tmp_path / "runs", on_event=events.append, cancelled=cancelled)
    with pytest.raises(Cancelled):
        run_training(TrainRequest(models=("softmax1",), max_iter=50, data_dir=str(tiny_mnist)), ctx)
    assert len(calls) == 3 and not [e for e in events if isinstance(e, EpochDone)]  # stopped mid-block
    assert not (tmp_path / "runs" / "models").exists()


def test_lbfgs_never_runs_more_iterations_than_asked(tiny_mnist):
    from engines.core.data import load_split

    data = load_split("train", tiny_mnist)
    torch.manual_seed(0)
    model = build_model(zoo_entry("softmax1").spec)
    evals = []

    def counting() -> bool:
        evals.append(1)
        return False

    info = train_lbfgs(model, data.images, data.labels, [1e-4], 2, lambda e: None, counting, "t")
    assert info["iterations"] == 2
    assert len(evals) <= 1 + 2 * 5 // 4 + 1  # one check before the block, at most max_eval evaluations


def test_cli_trains_into_runs_models_and_prints_the_result_json(tiny_mnist, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    args = ("train", "-m", "softmax1", "--max-iter", "2", "--data", tiny_mnist, "--device", "cpu")
    rc, out, err = cli(*args, "--json")
    assert rc == 0, err
    rows = json.loads(out)
    name = trained_as("softmax1", tiny_mnist)
    assert [r["id"] for r in rows] == [name] and rows[0]["path"] == f"runs/models/{name}.safetensors"
    saved = tmp_path / "runs" / "models" / f"{name}.safetensors"
    assert checkpoint_row(saved)["test_error"] == rows[0]["metrics"]["test_error"]  # `blindspot models` sees it
    assert rows[0]["metrics"] == json.loads(saved.with_suffix(".json").read_text())["metrics"]
    assert rows[0]["training"]["iterations"] == 2
    assert f"{name}: train" in err and "BLINDSPOT_MODELS=runs/models" in err
    rc, _, err = cli(*args)  # the same again: refused in one line, the checkpoint kept
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(*args, "--overwrite")
    assert rc == 0, err
    monkeypatch.setenv("BLINDSPOT_MODELS", str(saved.parent))
    rc, out, err = cli("models", "--json")
    (row,) = [r for r in json.loads(out) if r["id"] == name]
    assert row["data"] == "IDX data" and row["paper"] == {}
    # used on the shipped MNIST (no --data): one warning line naming both data sets
    rc, _, err = cli("attack", "--model", name, "--n", "2", "--c-steps", "1", "--max-iter", "2", "--device", "cpu")
    assert rc == 0, err
    (line,) = [x for x in err.splitlines() if x.startswith("warning:")]
    assert f"{name} was trained on IDX data" in line and "MNIST" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--zoo", "imagenet"), "choose paper or adversarial"),
        ((), "say what to train"),
        (("-m", "softmax1", "--optimizer", "sgd"), "unknown optimizer"),
        (("-m", "softmax1", "--epochs", "0"), "--epochs must be at least 1"),
        (("-m", "nope"), "unknown zoo model 'nope'"),
        (("-m", "softmax1", "--out", str(sample_data_dir() / "models")), "shipped zoo"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, cli, tiny_mnist):
    shipped = sample_data_dir() / "models"
    before = snapshot(shipped)
    rc, _, err = cli("train", *args, "--max-iter", "1", "--data", tiny_mnist, "--device", "cpu")
    assert rc == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert snapshot(shipped) == before


def test_a_trained_checkpoint_reloads_with_the_same_tensors(tiny_mnist, tmp_path):
    from engines.core.checkpoint import load_checkpoint

    result = run_training(
        TrainRequest(models=("softmax1",), max_iter=2, data_dir=str(tiny_mnist)),
        RunContext(device="cpu", out=tmp_path / "m"),
    )
    stored = load_file(result.models[0].path)
    lm = load_checkpoint(result.models[0].path)
    assert all(torch.equal(t, stored[k]) for k, t in lm.model.state_dict().items())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"validation": -1}, "--validation must be"),
        ({"lr_floor": -0.1}, "--lr-floor"),
        ({"weight_decay_mode": "l2"}, "unknown --weight-decay-mode 'l2'"),
        ({"weight_decay": 0.1}, "add --weight-decay-mode decoupled"),
        ({"seeds": (0, 0)}, "names a seed twice"),
        ({"seeds": (0, 1), "seed": 3}, "--seed or --seeds"),
    ],
)
def test_bad_protocol_options_are_refused_when_the_request_is_built(changes, message):
    with pytest.raises(InputError, match=message):
        TrainRequest(**({"models": ("softmax1",)} | changes))


def test_the_protocol_options_round_trip_through_json():
    request = TrainRequest(
        models=("softmax1",),
        optimizer="adam",  # decoupled decay and the floor act on Adam epochs (full-batch L-BFGS is refused them)
        resume=True,
        validation=50,
        seeds=(0, 2),
        weight_decay_mode="decoupled",
        weight_decay=0.02,
        lr_floor=0.1,
    )
    assert TrainRequest.from_json(json.loads(json.dumps(request.to_json()))) == request


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--validation", "-5"), "--validation must be"),
        (("--validation", "200"), "--validation 200 leaves no training image"),  # the tiny set has 200
        (("--seeds", "0;1"), "--seeds takes whole numbers"),
        (("--lr-floor", "-1"), "--lr-floor"),
        (("--weight-decay", "0.1"), "add --weight-decay-mode decoupled"),
        (("--weight-decay-mode", "l1"), "unknown --weight-decay-mode"),
    ],
)
def test_cli_bad_protocol_options_are_one_line_and_exit_2(args, message, cli, tiny_mnist, tmp_path):
    rc, _, err = cli("train", "-m", "softmax1", *args, "--max-iter", "1", "--data", tiny_mnist, "--out", tmp_path / "m")
    assert rc == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_cli_seeds_report_mean_and_sd_in_the_json_and_the_first_seeds_sidecar(cli, tiny_mnist, tmp_path):
    out = tmp_path / "m"
    args = ("train", "-m", "softmax1", "--optimizer", "adam", "--epochs", "2", "--validation", "50")
    rc, stdout, err = cli(*args, "--seeds", "0,1,2", "--data", tiny_mnist, "--out", out, "--device", "cpu", "--json")
    assert rc == 0, err
    (row,) = json.loads(stdout)
    sidecar = json.loads(Path(row["path"]).with_suffix(".json").read_text())
    errors = [r["test_error"] for r in sidecar["per_seed"]]
    assert row["seeds"] == sidecar["seeds"] == [0, 1, 2] and sidecar["seed"] == 0
    assert row["test_error_mean"] == sidecar["test_error_mean"] == pytest.approx(float(np.mean(errors)), abs=1e-4)
    assert row["test_error_sd"] == sidecar["test_error_sd"] == pytest.approx(float(np.std(errors, ddof=1)), abs=1e-4)
    assert row["validation_error"] == sidecar["validation_error"] == sidecar["per_seed"][0]["validation_error"]
    assert row["metrics"]["test_error"] == errors[0]  # the saved model is the first seed's
    assert len(list(out.glob("*.safetensors"))) == 1


def test_a_cancel_in_a_later_model_keeps_the_finished_ones_and_a_rerun_resumes(tiny_mnist, tmp_path):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 25  # softmax1: 2 seeds × 3 epochs × 3 checks (and one per model): inside softmax2

    out = tmp_path / "m"
    request = TrainRequest(
        models=("softmax1", "softmax2"), optimizer="adam", epochs=3, seeds=(0, 1), data_dir=str(tiny_mnist)
    )
    with pytest.raises(Cancelled):
        run_training(request, RunContext(device="cpu", out=out, cancelled=cancelled))
    s1, s2 = trained_as("softmax1", tiny_mnist), trained_as("softmax2", tiny_mnist)
    assert sorted(p.name for p in out.glob("*.safetensors")) == [f"{s1}.safetensors"]
    assert json.loads((out / f"{s1}.json").read_text())["seeds"] == [0, 1]
    result = run_training(replace(request, models=("softmax2",)), RunContext(device="cpu", out=out))
    assert [m.id for m in result.models] == [s2] and (out / f"{s2}.safetensors").exists()
