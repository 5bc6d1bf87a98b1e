"""Issue 24: a training cancelled after epoch k and resumed (`--resume`) gives the weights of an uninterrupted one,
bit for bit (Adam with dropout, §4.2's pool with hidden perturbations and an auto cap, an L-BFGS polish, a seed study
whose finished seed is not trained again); a state of another recipe is refused; nothing is left behind.
Also the review's leftovers: `train_error` on the images trained on, Adam-only options refused without Adam."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.core.context import RunContext
from engines.core.data import dataset_identity, load_split, read_idx
from engines.core.errors import Cancelled, InputError
from engines.core.evaluate import error_rate
from engines.core.events import AdversarialEpoch, EpochDone, Event
from engines.core.io import file_sha256
from engines.train.fit import train_zoo_model, trained_model_id
from engines.train.operation import TrainRequest, run_training
from engines.train.resume import RESUME_FOLDER
from tests.conftest import make_mnist_dir, write_idx

N_TRAIN, HELD = 200, 50
POOL = {"pool_size": 30, "c_steps": 1, "max_iter": 5, "warmup": 1}  # the recipe's fixes, a small pool and attack


def _epochs(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, EpochDone | AdversarialEpoch)]


def _train(request: TrainRequest, out: Path, stop_after: int | None = None) -> tuple[Any, list[Event]]:
    """Train into `out`; with `stop_after`, cancel once that many epochs (Adam, adversarial, L-BFGS blocks) ended."""
    events: list[Event] = []
    ctx = RunContext(
        device="cpu",
        out=out,
        threads=1,
        on_event=events.append,
        cancelled=lambda: stop_after is not None and len(_epochs(events)) >= stop_after,
    )
    if stop_after is None:
        return run_training(request, ctx), events
    with pytest.raises(Cancelled):
        run_training(request, ctx)
    return None, events


def _weights(result: Any) -> str:
    (model,) = result.models
    return file_sha256(model.path)


def _sidecar(model: Any) -> dict[str, Any]:
    return json.loads(Path(model.path).with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist_dir(tmp_path_factory.mktemp("resume") / "mnist", n_train=N_TRAIN)


@pytest.mark.parametrize(
    ("model_id", "options", "stop_after"),
    [
        ("n100-100-10-dropout", {"epochs": 4}, 2),  # dropout draws from the global RNG
        ("n100-100-10-adv", {"epochs": 4, "adversarial": POOL}, 3),  # the pool filled, refreshed, capped
        ("n100-100-10", {"epochs": 2, "max_iter": 3}, 2),  # cancelled at the L-BFGS polish: it restarts
        ("ae400-10", {"max_iter": 3}, 60),  # the autoencoder's pre-training (its decoder kept), then L-BFGS
    ],
)
@pytest.mark.parametrize("validation", [0, HELD])  # 0: the last iterate is kept, so every epoch must match
def test_a_resumed_training_gives_the_uninterrupted_weights(tmp_path, data, model_id, options, stop_after, validation):
    request = TrainRequest(models=(model_id,), data_dir=str(data), validation=validation, **options)
    whole, all_events = _train(request, tmp_path / "whole")
    out = tmp_path / "out"
    _, before = _train(request, out, stop_after=stop_after)
    assert list((out / RESUME_FOLDER).rglob("*.pt"))  # the last finished epoch's state
    resumed, after = _train(replace(request, resume=True), out)
    minibatch = [e for e in _epochs(after) if e.stage != "L-BFGS"]
    # it went on from the state: none of the epochs done before the cancel is trained again
    assert len(minibatch) == len([e for e in _epochs(all_events) if e.stage != "L-BFGS"]) - stop_after
    assert not minibatch or minibatch[0].done == stop_after + 1
    assert _weights(resumed) == _weights(whole)
    (model,) = resumed.models
    assert model.training["resumed_from"]["epoch"] == stop_after
    sidecars = [_sidecar(m) for (m,) in (whole.models, resumed.models)]
    assert [m.get("validation") for m in sidecars] == [sidecars[0].get("validation")] * 2  # selection's history too
    assert not (out / RESUME_FOLDER).exists()  # deleted once the checkpoint is saved


def test_a_seed_study_resumes_in_its_second_seed_without_training_the_first_again(tmp_path, data):
    request = TrainRequest(models=("n100-100-10-decay",), data_dir=str(data), validation=HELD, epochs=3, seeds=(0, 1))
    whole, _ = _train(request, tmp_path / "whole")
    out = tmp_path / "out"
    _, before = _train(request, out, stop_after=4)  # seed 0's three epochs, seed 1's first
    assert sorted(p.name for p in (out / RESUME_FOLDER).rglob("*.pt")) == ["seed0.done.pt", "seed1.pt"]
    resumed, after = _train(replace(request, resume=True), out)
    assert [e.done for e in _epochs(after)] == [2, 3]  # seed 1's last two epochs only
    assert _weights(resumed) == _weights(whole)
    sidecars = [_sidecar(m) for (m,) in (whole.models, resumed.models)]
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in meta["per_seed"]] for meta in sidecars]
    assert timeless[0] == timeless[1] and [r["seed"] for r in timeless[0]] == [0, 1]
    assert [m["test_error_sd"] for m in sidecars] == [sidecars[0]["test_error_sd"]] * 2
    assert sidecars[0]["validation"]["history"] == sidecars[1]["validation"]["history"]
    assert not (out / RESUME_FOLDER).exists()


def test_a_grid_resumes_at_its_second_point_without_training_the_first_again(tmp_path, data):
    grid = {"lr": (0.01, 0.03)}
    request = TrainRequest(models=("n100-100-10-decay",), data_dir=str(data), validation=HELD, epochs=2, grid=grid)
    whole, _ = _train(request, tmp_path / "whole")
    out = tmp_path / "out"
    _train(request, out, stop_after=3)  # the first point's two epochs, the second's first
    resumed, after = _train(replace(request, resume=True), out)
    assert [e.done for e in _epochs(after)] == [2]
    assert _weights(resumed) == _weights(whole)
    assert (
        _sidecar(resumed.models[0])["grid"]["points"][0]["validation_error"]
        == (_sidecar(whole.models[0])["grid"]["points"][0]["validation_error"])
    )
    assert not (out / RESUME_FOLDER).exists()


def test_a_state_of_another_recipe_is_refused_and_without_resume_it_is_replaced(tmp_path, data):
    request = TrainRequest(models=("n100-100-10-dropout",), data_dir=str(data), validation=HELD, epochs=3)
    out = tmp_path / "out"
    _train(request, out, stop_after=1)
    for other in ({"epochs": 4}, {"lr_floor": 0.5}):
        with pytest.raises(InputError, match="another recipe \\(its .* differs\\).*without --resume"):
            _train(replace(request, resume=True, **other), out)
    result, events = _train(replace(request, epochs=4), out)  # no --resume: the old state is ignored and replaced
    assert [e.done for e in _epochs(events)] == [1, 2, 3, 4]
    alone, _ = _train(replace(request, epochs=4), tmp_path / "alone")
    assert _weights(result) == _weights(alone)
    assert not (out / RESUME_FOLDER).exists()


def test_resume_without_a_state_trains_from_the_start_and_the_cli_offers_it(tmp_path, data, cli):
    rc, _, err = cli(
        "train", "--model", "n100-100-10-decay", "--data", data, "--validation", HELD, "--epochs", 1,
        "--out", tmp_path / "m", "--device", "cpu", "--resume",
    )  # fmt: skip
    assert rc == 0, err
    assert (tmp_path / "m").is_dir() and not (tmp_path / "m" / RESUME_FOLDER).exists()


def test_cli_refuses_a_damaged_state_in_one_line(tmp_path, data, cli):
    out = tmp_path / "m"
    state = out / RESUME_FOLDER / trained_model_id("n100-100-10-decay", dataset_identity(data)) / "seed0.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a torch file")
    args = ["train", "--model", "n100-100-10-decay", "--data", data, "--validation", HELD, "--out", out, "--resume"]
    rc, stdout, err = cli(*args)
    assert rc == 2 and "cannot resume from" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in stdout + err and state.exists()  # kept: the user decides


def test_train_error_is_measured_on_the_images_trained_on(tmp_path):
    base = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN)
    images, labels = (read_idx(next(base.glob(f"train-{r}*"))) for r in ("images", "labels"))
    held = np.sort(np.random.default_rng(20131224).permutation(N_TRAIN)[:HELD])  # the protocol's split, by hand
    poisoned = labels.copy()
    poisoned[held] = (labels[held] + 1) % 10  # wrong labels on the held-out images only
    folder = tmp_path / "poisoned"
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", poisoned)
    for role in ("t10k-images", "t10k-labels"):
        write_idx(folder / f"{role}-idx{3 if 'images' in role else 1}-ubyte", read_idx(next(base.glob(f"{role}*"))))
    options: dict[str, Any] = {"data_dir": folder, "optimizer": "adam", "epochs": 2}
    fitted = train_zoo_model("softmax1", None, protocol={"validation": HELD}, **options)
    split = load_split("train", folder)
    kept = torch.from_numpy(np.setdiff1d(np.arange(N_TRAIN), held))
    expected = error_rate(fitted.model, split.images[kept], split.labels[kept], "cpu")
    assert fitted.meta["metrics"]["train_error"] == round(expected, 4)
    assert fitted.meta["metrics"]["train_error"] != round(
        error_rate(fitted.model, split.images, split.labels, "cpu"), 4
    )
    assert "less the 50 validation images" in fitted.meta["train_error_on"]
    plain = train_zoo_model("softmax1", None, protocol={"validation": 0}, **options)
    assert plain.meta["metrics"]["train_error"] == round(error_rate(plain.model, split.images, split.labels, "cpu"), 4)
    assert "train_error_on" not in plain.meta


@pytest.mark.parametrize(
    ("request_options", "message"),
    [
        ({"models": ("softmax1",), "weight_decay_mode": "decoupled"}, "--weight-decay-mode acts on Adam epochs"),
        ({"models": ("softmax2",), "lr_floor": 0.1}, "--lr-floor acts on Adam epochs"),
        ({"models": ("ae400-10",), "lr_floor": 0.1}, "ae400-10 trains by its recipe"),
        ({"models": ("n100-100-10",), "optimizer": "lbfgs", "lr_floor": 0.0}, "trains by full-batch L-BFGS"),
        ({"models": ("softmax1",), "grid": {"lr_floor": (0.1,)}}, "--grid lr_floor acts on Adam epochs"),
    ],
)
def test_adam_only_options_are_refused_for_a_training_without_adam(request_options, message):
    with pytest.raises(InputError, match=message):
        TrainRequest(**request_options)
    # where there are Adam epochs they are taken
    TrainRequest(models=("softmax1",), optimizer="adam", weight_decay_mode="decoupled", lr_floor=0.1)
    TrainRequest(models=("n100-100-10",), lr_floor=0.1)
    TrainRequest(models=("softmax1",), weight_decay_mode="paper")


def test_cli_refuses_an_adam_option_without_adam_in_one_line(cli, tmp_path):
    rc, out, err = cli("train", "--model", "softmax1", "--lr-floor", "0.1", "--out", tmp_path / "m")
    assert rc == 2 and "--lr-floor acts on Adam epochs" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err and not (tmp_path / "m").exists()
