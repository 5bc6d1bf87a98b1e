"""Issue 24's training protocol: the validation split never reaches the gradient, the best-validation checkpoint is
kept, seeds reproduce and summarise right, decoupled decay and the schedule's floor, and bad options are refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import engines.train.fit as fit_module
from engines.core.data import Dataset, load_split, read_idx, sample_data_dir
from engines.core.errors import Cancelled, InputError
from engines.core.evaluate import error_rate
from engines.core.events import EpochDone
from engines.core.io import file_sha256
from engines.core.zoo import build_model, decay_loss, mlp_spec
from engines.train.fit import train_zoo_model
from engines.train.minibatch import train_adam
from engines.train.protocol import Protocol, Selection, adam_optimizer, cosine_schedule, protocol_for, split_validation
from engines.train.seeds import compare_paired, parse_seeds, seed_study, train_seeds
from tests.conftest import make_mnist_dir, write_idx

N_TRAIN, HELD = 200, 50


def _arrays(folder: Path, role: str) -> np.ndarray:
    (path,) = folder.glob(f"{role}*")
    return read_idx(path)


def _folder_with(base: Path, folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A copy of `base` (its test set) whose training set is `images`, `labels`."""
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", labels)
    write_idx(folder / "t10k-images-idx3-ubyte", _arrays(base, "t10k-images"))
    write_idx(folder / "t10k-labels-idx1-ubyte", _arrays(base, "t10k-labels"))
    return folder


def _held_positions(n: int, size: int) -> np.ndarray:
    data = Dataset(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long), "train", np.arange(n))
    _, held, _ = split_validation(data, Protocol(validation=size))
    assert held is not None
    return held.indices


class _Recording(Selection):
    """Selection that also keeps the weights at every checkpoint (validation or not)."""

    states: list[list[dict[str, torch.Tensor]]] = []

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.mine: list[dict[str, torch.Tensor]] = []
        _Recording.states.append(self.mine)

    def check(self, stage: str, done: int) -> float:
        self.mine.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return super().check(stage, done)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, torch.Tensor]]]:
    _Recording.states = []
    monkeypatch.setattr(fit_module, "Selection", _Recording)
    return _Recording.states


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("model_id", "options"),
    [
        ("n100-100-10", {"optimizer": "adam", "epochs": 2, "max_iter": 2}),  # Adam epochs, then an L-BFGS polish
        ("softmax1", {"optimizer": "lbfgs", "max_iter": 12}),  # full batch: every image is in every step
        ("n100-100-10", {"adversarial": {"pool_size": 20, "warmup": 1, "c_steps": 1, "max_iter": 3}, "epochs": 2}),
    ],
)
def test_poisoned_validation_images_never_reach_the_gradient(tmp_path, recording, model_id, options):
    base = make_mnist_dir(tmp_path / "base", n_train=N_TRAIN)
    images, labels = _arrays(base, "train-images"), _arrays(base, "train-labels")
    held = _held_positions(N_TRAIN, HELD)
    kept = np.setdiff1d(np.arange(N_TRAIN), held)
    poisoned_images, poisoned_labels = images.copy(), labels.copy()
    poisoned_images[held] = 255 - poisoned_images[held]  # inverted, saturated images
    poisoned_labels[held] = (poisoned_labels[held] + 1) % 10  # and wrong labels
    poisoned = _folder_with(base, tmp_path / "poisoned", poisoned_images, poisoned_labels)
    alone = _folder_with(base, tmp_path / "alone", images[kept], labels[kept])
    train_zoo_model(model_id, None, data_dir=poisoned, protocol={"validation": HELD}, **options)
    train_zoo_model(model_id, None, data_dir=alone, protocol={"validation": 0}, **options)
    with_split, without = recording
    assert len(with_split) == len(without) >= 2
    assert all(_same(a, b) for a, b in zip(with_split, without, strict=True))  # the same weights at every checkpoint


def test_the_kept_model_is_the_best_validation_checkpoint_and_the_test_is_evaluated_on_it(tmp_path, recording):
    base = make_mnist_dir(tmp_path / "base", n_train=N_TRAIN)
    images, labels = _arrays(base, "train-images"), _arrays(base, "train-labels")
    held = _held_positions(N_TRAIN, HELD)
    labels = labels.copy()
    labels[held] = (labels[held] + 1) % 10  # the better the net learns the training part, the worse it does here
    data = _folder_with(base, tmp_path / "data", images, labels)
    events: list[EpochDone] = []
    fitted = train_zoo_model(
        "softmax1",
        None,
        data_dir=data,
        optimizer="adam",
        epochs=8,
        protocol={"validation": HELD},
        on_event=events.append,
    )
    history = fitted.meta["validation"]["history"]
    errors = [h["validation_error"] for h in history]
    best = errors.index(min(errors))
    assert 0 < best < len(errors) - 1 and errors[-1] > errors[best]  # it rose after an early epoch
    assert fitted.meta["validation"]["chosen"] == history[best] and fitted.meta["validation"]["last"] == history[-1]
    assert fitted.meta["validation_error"] == min(errors)
    (states,) = recording
    assert _same(fitted.model.state_dict(), states[best]) and not _same(states[best], states[-1])
    test = load_split("test", data)
    assert fitted.meta["metrics"]["test_error"] == round(error_rate(fitted.model, test.images, test.labels), 4)
    val = [e.validation_error for e in events]  # each epoch's event carries the error at that checkpoint
    assert [round(v, 4) for v in val] == errors
    record = fitted.meta["validation"]
    assert record["size"] == HELD and record["training_images"] == N_TRAIN - HELD and record["from_split"] == "train"
    assert fitted.meta["protocol"]["validation"] == HELD


def test_selection_without_a_split_changes_nothing():
    model = build_model(mlp_spec([3]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selection = Selection(model, None, "cpu")
    assert math.isnan(selection.check("Adam", 1)) and selection.finish() is None
    assert _same(before, model.state_dict())


def test_validation_zero_is_todays_adam_bit_for_bit():
    """An independent loop of the paper recipe (Adam, torch's cosine schedule to 0, λΣw²/k in the loss, the same
    generator for the order) gives exactly the same weights: the protocol's defaults change nothing."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(150, 1, 28, 28, generator=gen), torch.randint(0, 10, (150,), generator=gen)
    lambdas, epochs, bs, lr = [1e-3, 1e-3, 1e-4], 2, 32, 3e-3
    torch.manual_seed(1)
    ours = build_model(mlp_spec([8, 8], dropout=0.2))
    theirs = build_model(mlp_spec([8, 8], dropout=0.2))
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(5)
    train_adam(ours, x, y, lambdas, epochs, bs, lr, 3, lambda e: None, lambda: False, "t", Protocol())
    torch.manual_seed(5)
    opt = torch.optim.Adam(theirs.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(150 / bs))
    order_gen = torch.Generator().manual_seed(3)
    theirs.train()
    for _ in range(epochs):
        perm = torch.randperm(150, generator=order_gen)
        for i in range(0, 150, bs):
            idx = perm[i : i + bs]
            loss = nn.functional.cross_entropy(theirs(x[idx]), y[idx]) + decay_loss(theirs, lambdas)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    assert _same(ours.state_dict(), theirs.state_dict())


def test_decoupled_decay_shrinks_only_the_decayed_weights_by_the_adamw_rule():
    model = build_model(mlp_spec([4]))
    protocol = Protocol(weight_decay_mode="decoupled", weight_decay=0.5)
    opt, loss_lambdas = adam_optimizer(model, 0.1, [1e-5, 0.0], protocol)
    assert loss_lambdas == [0.0, 0.0]  # nothing of the paper's term left in the loss
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a weight
    opt.step()
    after = model.state_dict()
    torch.testing.assert_close(after["fc1.weight"], before["fc1.weight"] * (1 - 0.1 * 0.5))
    for name in ("fc1.bias", "fc2.weight", "fc2.bias"):  # biases never, a layer whose λ is 0 neither
        assert torch.equal(after[name], before[name]), name


@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_the_schedule_ends_at_its_floor(floor):
    model = build_model(mlp_spec([2]))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = cosine_schedule(opt, 10, floor)
    rates = []
    for _ in range(10):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[-1] == pytest.approx(0.01 * floor, abs=1e-12)
    assert rates[4] == pytest.approx(0.01 * floor + (0.01 - 0.01 * floor) * (1 + math.cos(math.pi * 5 / 10)) / 2)


def test_seeds_reproduce_bit_identically_and_the_first_seed_is_the_saved_one(tmp_path):
    data = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN)
    options: dict[str, Any] = {"data_dir": data, "optimizer": "adam", "epochs": 2, "protocol": {"validation": HELD}}
    a = train_seeds("softmax1", tmp_path / "a", seeds=(0, 1, 2), **options)
    b = train_seeds("softmax1", tmp_path / "b", seeds=(0, 1, 2), **options)
    assert a.path is not None and b.path is not None and file_sha256(a.path) == file_sha256(b.path)
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in f.meta["per_seed"]] for f in (a, b)]
    assert timeless[0] == timeless[1]
    alone = train_zoo_model("softmax1", None, seed=0, **options)
    assert _same(alone.model.state_dict(), a.model.state_dict())
    assert a.meta["seeds"] == [0, 1, 2] and a.meta["seed"] == 0
    assert a.meta["validation_error"] == a.meta["per_seed"][0]["validation_error"]
    assert len({r["test_error"] for r in a.meta["per_seed"]} | {r["validation_error"] for r in a.meta["per_seed"]}) > 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([a.path.name, a.path.with_suffix(".json").name])


def test_a_cancelled_seed_study_saves_nothing(tmp_path):
    data = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 20  # inside the second seed's training

    with pytest.raises(Cancelled):
        train_seeds(
            "softmax1", tmp_path / "out", seeds=(0, 1), data_dir=data, optimizer="adam", epochs=4, cancel=cancel
        )
    assert not (tmp_path / "out").exists()


def test_the_study_mean_and_sd_match_numpy():
    runs = [
        {"seed": 0, "test_error": 1.91, "validation_error": 2.0},
        {"seed": 1, "test_error": 2.33, "validation_error": 2.4},
        {"seed": 2, "test_error": 1.64, "validation_error": 1.8},
    ]
    study = seed_study(runs)
    tests, vals = np.array([1.91, 2.33, 1.64]), np.array([2.0, 2.4, 1.8])
    assert study["seeds"] == [0, 1, 2]
    assert study["test_error_mean"] == pytest.approx(tests.mean(), abs=1e-4)
    assert study["test_error_sd"] == pytest.approx(tests.std(ddof=1), abs=1e-4)
    assert study["validation_error_mean"] == pytest.approx(vals.mean(), abs=1e-4)
    assert study["validation_error_sd"] == pytest.approx(vals.std(ddof=1), abs=1e-4)
    assert seed_study(runs[:1])["test_error_sd"] is None  # one seed: no spread


def test_a_paired_comparison_says_no_difference_within_two_sd():
    a = {0: 2.0, 1: 2.5, 2: 1.5}
    close = compare_paired(a, {0: 2.1, 1: 2.3, 2: 1.6}, names=("decay", "adv"))
    diffs = np.array([0.1, -0.2, 0.1])
    assert close["mean_difference"] == pytest.approx(diffs.mean(), abs=1e-4)
    assert close["sd"] == pytest.approx(diffs.std(ddof=1), abs=1e-4)
    assert close["verdict"] == "no difference"
    far = compare_paired(a, {0: 1.0, 1: 1.6, 2: 0.4, 3: 9.0}, names=("decay", "adv"))  # seed 3: not in both
    assert far["seeds"] == [0, 1, 2] and far["verdict"] == "adv lower"
    assert compare_paired({0: 1.0, 1: 1.1}, {0: 2.0, 1: 2.05}, names=("decay", "adv"))["verdict"] == "decay lower"
    with pytest.raises(InputError, match="two or more seeds"):
        compare_paired({0: 1.0}, {0: 2.0})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Protocol(validation=-1), "--validation must be"),
        (lambda: Protocol(lr_floor=-0.1), "--lr-floor"),
        (lambda: Protocol(lr_floor=1.5), "--lr-floor"),
        (lambda: Protocol(weight_decay_mode="l1"), "unknown --weight-decay-mode 'l1'"),
        (lambda: Protocol(weight_decay=0.1), "add --weight-decay-mode decoupled"),
        (lambda: Protocol(weight_decay_mode="decoupled", weight_decay=-1.0), "--weight-decay must be 0 or more"),
        (lambda: protocol_for({}, {"validaton": 5}), "unknown protocol option 'validaton'"),
        (lambda: parse_seeds("0;1"), "--seeds takes whole numbers"),
        (lambda: parse_seeds("a,b"), "--seeds takes whole numbers"),
        (lambda: parse_seeds("-1"), "--seeds takes whole numbers"),
        (lambda: parse_seeds("1,1"), "names a seed twice"),
    ],
)
def test_bad_protocol_options_are_refused_in_one_line(build, message):
    with pytest.raises(InputError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


def test_a_validation_split_as_large_as_the_training_set_is_refused_before_training(tmp_path):
    data = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN)
    events: list[Any] = []
    with pytest.raises(InputError, match=f"--validation {N_TRAIN} leaves no training image.*{N_TRAIN} images"):
        train_zoo_model("softmax1", None, data_dir=data, protocol={"validation": N_TRAIN}, on_event=events.append)
    assert events == []


def test_recipes_declare_their_validation_and_parse_seeds_reads_lists():
    from engines.core.zoo import ZOO

    assert all(e.recipe["validation"] == 0 for e in ZOO.values() if e.group == "paper")
    assert all(e.recipe["validation"] == 10000 for e in ZOO.values() if e.group == "adversarial")
    assert protocol_for(ZOO["n100-100-10-decay"].recipe, {"validation": 0}).validation == 0
    assert protocol_for(ZOO["n100-100-10"].recipe, None) == Protocol()
    assert parse_seeds("0, 1,2") == (0, 1, 2) and parse_seeds("7") == (7,)


def test_a_protocol_training_writes_nothing_under_sample_data(tmp_path):
    shipped = sample_data_dir()
    before = {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in shipped.rglob("*")}
    data = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN)
    fitted = train_seeds(
        "softmax1", tmp_path / "out", seeds=(0, 1), data_dir=data, max_iter=2, protocol={"validation": HELD}
    )
    assert fitted.path is not None and fitted.path.parent == tmp_path / "out"
    assert {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in shipped.rglob("*")} == before


def test_a_decoupled_training_records_its_objective_and_differs_from_the_papers(tmp_path):
    data = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN)
    options: dict[str, Any] = {"data_dir": data, "optimizer": "adam", "epochs": 2, "max_iter": 1}
    paper = train_zoo_model("n100-100-10", None, **options)
    decoupled = train_zoo_model(
        "n100-100-10", None, protocol={"weight_decay_mode": "decoupled", "lr_floor": 0.1}, **options
    )
    assert paper.meta["protocol"] == Protocol().to_json()
    assert decoupled.meta["protocol"]["weight_decay"] == 0.01 and decoupled.meta["protocol"]["lr_floor"] == 0.1
    assert (
        "AdamW" in decoupled.meta["weight_decay_formula"] and "L-BFGS phase" in decoupled.meta["weight_decay_formula"]
    )
    assert not _same(paper.model.state_dict(), decoupled.model.state_dict())


def test_a_warm_up_epoch_is_never_the_chosen_model() -> None:
    """§4.2's clean warm-up epochs are recorded, but an adversarially trained model is chosen among its adversarial
    epochs, even when a warm-up epoch had the lower validation error."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(200, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # labelled by the warm-up model itself: its validation error is 0
    selection = Selection(model, Dataset(x, y, "toy", np.arange(200)), "cpu")
    assert selection.check("warm-up", 1) == 0.0
    with torch.no_grad():
        model.weight.mul_(-1.0)  # the adversarial epoch's model: a worse one
    adversarial = {k: v.clone() for k, v in model.state_dict().items()}
    assert selection.check("adversarial", 2) > 0.0
    with torch.no_grad():
        model.weight.mul_(0.5)
    selection.check("adversarial", 3)
    record = selection.finish()
    assert record is not None and record["chosen"]["stage"] == "adversarial"
    errors = {h["done"]: h["validation_error"] for h in record["history"]}
    assert record["chosen"]["validation_error"] == min(errors[2], errors[3]) > errors[1]
    if record["chosen"]["done"] == 2:
        assert torch.equal(model.weight, adversarial["weight"])
