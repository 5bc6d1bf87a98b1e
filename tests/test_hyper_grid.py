"""Issue 24's hyper-parameter grid: points are chosen on the validation split alone (the test set is read only for the
chosen point and the other seeds), a point's values reach the recipe and the architecture, bad axes are refused; and
the pool's automatic cap is the clean net's own median distortion, which no later example exceeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import engines.train.fit as fit_module
from engines.core.data import load_split
from engines.core.errors import InputError
from engines.core.zoo import ZOO, build_model
from engines.train.adversarial_pool import AdversarialPool, AdversarialSettings
from engines.train.hyper import grid_points, parse_axis, parse_grid, with_hyper
from engines.train.layer_cuts import layer_cuts, layer_shapes
from engines.train.operation import TrainRequest
from engines.train.pool_fixes import rms_distance
from engines.train.seeds import train_seeds
from tests.conftest import make_mnist_dir


def test_axes_parse_and_multiply_in_a_stated_order():
    assert parse_axis("lr=0.001,0.003") == ("lr", (0.001, 0.003))
    assert parse_axis("input-dropout=0.1") == ("input_dropout", (0.1,))
    assert parse_axis("epochs=10,20") == ("epochs", (10, 20))
    axes = parse_grid(["lr=1,2", "dropout=0.1,0.2,0.3"])
    points = grid_points(axes)
    assert len(points) == 6 and points[0] == {"lr": 1.0, "dropout": 0.1} and points[1] == {"lr": 1.0, "dropout": 0.2}
    assert grid_points({}) == [{}]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["lr"], "NAME=V1,V2"),
        (["momentum=0.9"], "cannot vary 'momentum'"),
        (["epochs=1.5"], "int values"),
        (["lr=nan"], "finite"),
        (["lr=1,1"], "twice"),
        (["lr=1", "lr=2"], "names lr twice"),
    ],
)
def test_bad_axes_are_refused_in_one_line(texts, message):
    with pytest.raises(InputError, match=message) as info:
        parse_grid(texts)
    assert "\n" not in str(info.value)


def test_a_point_reaches_the_recipe_the_architecture_and_the_pool():
    entry = with_hyper(ZOO["n100-100-10-dropout"], {"lr": 0.5, "dropout": 0.4, "input_dropout": 0.3, "epochs": 7})
    assert entry.recipe["lr"] == 0.5 and entry.recipe["epochs"] == 7
    model = build_model(entry.spec)
    rates = sorted(m.p for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert rates == [0.3, 0.4, 0.4]
    adv = with_hyper(ZOO["n100-100-10-adv"], {"mix": 1.0, "cap": 0.2})
    assert adv.recipe["adversarial"]["mix"] == 1.0 and adv.recipe["adversarial"]["cap"] == 0.2
    assert adv.recipe["adversarial"]["target"] == "nearest"  # the recipe's other settings stay
    assert ZOO["n100-100-10-adv"].recipe["adversarial"]["mix"] != 1.0  # the zoo itself is untouched
    decay = with_hyper(ZOO["n100-100-10"], {"weight_decay": 0.2})
    assert decay.recipe["weight_decay_mode"] == "decoupled" and decay.recipe["weight_decay"] == 0.2
    with pytest.raises(InputError, match="not adversarial"):
        with_hyper(ZOO["n100-100-10-decay"], {"mix": 0.5})


@pytest.mark.parametrize(
    ("model", "grid", "adversarial", "message"),
    [
        ("n100-100-10-adv", {"eps": (0.1, 0.2)}, None, "eps has no effect"),  # the pool takes no step size
        ("n100-100-10-fgm", {"cap": (0.1, 0.2)}, None, "cap has no effect"),  # fresh steps have no cap
        ("n100-100-10-fgm", {"refresh": (0.1, 0.2)}, None, "refresh has no effect"),
        ("ae400-10", {"epochs": (1, 2)}, None, "epochs has no effect"),  # its pre-training counts ae_epochs
        ("softmax1", {"lr": (0.1, 0.2)}, None, "lr has no effect"),  # full-batch L-BFGS has no learning rate
        ("conv", {"input_dropout": (0.1, 0.2)}, None, "input_dropout has no effect"),
        ("n100-100-10-decay", {"lr": (-1.0, 0.1)}, None, "lr must be above 0"),
        ("n100-100-10-decay", {"batch_size": (0, 8)}, None, "batch_size must be at least 1"),
        ("n100-100-10-dropout", {"dropout": (0.5, 1.0)}, None, r"dropout must be in \[0, 1\)"),
        ("n100-100-10-adv", {"mix": (0.5, 9.0)}, None, "--mix"),  # refused before the first point trains
    ],
)
def test_a_grid_value_that_would_do_nothing_or_cannot_train_is_refused_up_front(model, grid, adversarial, message):
    with pytest.raises(InputError, match=message):
        TrainRequest(models=(model,), grid=grid, adversarial=adversarial, validation=100)


def test_a_plain_model_trained_adversarially_takes_adversarial_axes():
    request = TrainRequest(models=("n100-100-10",), grid={"mix": (0.25, 0.5)}, adversarial={}, validation=100)
    entry = with_hyper(ZOO["n100-100-10"], {"mix": 0.5}, adversarial=True)
    assert request.grid == {"mix": (0.25, 0.5)} and entry.recipe["adversarial"] == {"mix": 0.5}


def test_the_cli_parses_exponents_and_refuses_bad_axes_in_one_line(cli, tiny_mnist, tmp_path):
    assert parse_axis("lr=1e-3,2e-3") == ("lr", (1e-3, 2e-3))
    for bad in (["--grid", "lr"], ["--grid", "lr=0.1,0.2", "--validation", "0"], ["--grid", "depth=3"]):
        code, out, err = cli("train", "--model", "n100-100-10-decay", *bad, "--out", str(tmp_path / "x"))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    args = ["train", "--model", "n100-100-10-decay", "--epochs", "1", "--grid", "lr=1e-3,3e-2", "--validation", "50"]
    code, out, err = cli(*args, "--data", str(tiny_mnist), "--out", str(tmp_path / "m"), "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert [p["hyper"]["lr"] for p in row["grid"]["points"]] == [1e-3, 3e-2] and row["hyper"] == row["grid"]["chosen"]


def test_requests_refuse_a_grid_they_cannot_choose_or_that_repeats_an_option():
    with pytest.raises(InputError, match="validation split"):
        TrainRequest(models=("n100-100-10",), grid={"lr": (0.1, 0.2)})  # Table 1's recipe holds nothing out
    with pytest.raises(InputError, match="give it once"):
        TrainRequest(models=("n100-100-10-decay",), epochs=3, grid={"epochs": (1, 2)})
    with pytest.raises(InputError, match="has no effect"):
        TrainRequest(models=("n100-100-10-decay",), grid={"eps": (0.1, 0.2)}, validation=100)
    one = TrainRequest(models=("n100-100-10",), grid={"lr": (0.1,)})  # one value just sets it: no split needed
    assert TrainRequest.from_json(one.to_json()) == one


def test_the_grid_chooses_on_validation_and_reads_the_test_set_only_for_what_it_keeps(tmp_path, monkeypatch):
    data = make_mnist_dir(tmp_path / "mnist", n_train=300)
    evaluated: list[int] = []
    real = fit_module.evaluate_splits

    def counting(*args: Any) -> dict[str, float]:
        evaluated.append(1)  # a read of the test set (and the other splits)
        return real(*args)

    monkeypatch.setattr(fit_module, "evaluate_splits", counting)
    options: dict[str, Any] = {"data_dir": data, "epochs": 3, "protocol": {"validation": 100}}
    axes = {"lr": (1e-6, 0.01, 0.03)}  # a learning rate of 1e-6 cannot leave chance level in 3 epochs
    fitted = train_seeds("n100-100-10-decay", tmp_path / "out", seeds=(4, 5), axes=axes, **options)
    grid = fitted.meta["grid"]
    errors = [p["validation_error"] for p in grid["points"]]
    assert [p["hyper"]["lr"] for p in grid["points"]] == [1e-6, 0.01, 0.03]
    best = errors.index(min(errors))
    assert grid["chosen"] == grid["points"][best]["hyper"] == fitted.meta["hyper"] and best != 0
    assert fitted.meta["validation_error"] == min(errors)
    assert len(evaluated) == 2  # the chosen point's model and the second seed: never the other points
    assert fitted.meta["seeds"] == [4, 5] and fitted.meta["seed"] == 4
    again = fit_module.train_zoo_model("n100-100-10-decay", None, seed=4, hyper=grid["chosen"], **options)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.model.state_dict().values(), fitted.model.state_dict().values(), strict=True)
    )
    saved = Path(str(fitted.path))
    assert saved.exists() and saved.with_suffix(".json").exists()


def test_the_automatic_cap_is_the_clean_nets_median_and_no_later_example_exceeds_it(tmp_path):
    torch.manual_seed(0)
    data = load_split("train", make_mnist_dir(tmp_path, n_train=200))
    x, y = data.images, data.labels
    model = build_model(ZOO["n100-100-10"].spec)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):  # a net that knows its images, as after §4.2's clean warm-up epochs
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    settings = AdversarialSettings(pool_size=90, cap="auto", cap_policy="shrink", c_steps=3, max_iter=20)
    cuts = layer_cuts(model, None)
    pool = AdversarialPool(cuts, settings.pool_size, layer_shapes(cuts, x))
    gen = torch.Generator().manual_seed(0)
    never = lambda: False  # noqa: E731
    first = pool.refresh(model, x, y, 1.0, 0, settings, gen, never, "t")
    uncapped = AdversarialPool(cuts, settings.pool_size, layer_shapes(cuts, x))  # the same attacks, no cap
    replace_settings = AdversarialSettings(pool_size=90, c_steps=3, max_iter=20)
    uncapped.refresh(model, x, y, 1.0, 0, replace_settings, torch.Generator().manual_seed(0), never, "t")
    for name, layer in first.layers.items():
        with torch.no_grad():
            clean = next(c for c in cuts if c.name == name).lower(x[uncapped.sources[name]])
        median = float(rms_distance(uncapped.examples[name], clean).median())  # every attack succeeded here
        assert layer["cap"] == pytest.approx(median, rel=1e-4) == pytest.approx(pool.caps[name], abs=1e-5)
        assert layer["replaced"] == 30 and layer["shrunk"] == 15  # half the first fill lies above its own median
    caps = dict(pool.caps)

    def farthest(cut: Any) -> float:  # the pool's largest distortion in this layer, against the net as it is
        with torch.no_grad():
            return float(rms_distance(pool.examples[cut.name], cut.lower(x[pool.sources[cut.name]])).max())

    assert all(farthest(cut) <= caps[cut.name] * (1 + 1e-6) for cut in cuts)
    with torch.no_grad():  # the net moves (as training moves it): its next examples need larger distortions
        model.fc3.weight.mul_(0.3)
    pool.refresh(model, x, y, 1.0, 1, settings, gen, never, "t")
    assert pool.caps == caps  # measured once, on the clean net
    assert all(farthest(cut) <= caps[cut.name] * (1 + 1e-6) for cut in cuts)
    with pytest.raises(InputError, match="rms distortion or 'auto'"):
        AdversarialSettings(cap="big")
    assert AdversarialSettings(cap="0.5").cap == 0.5  # a number given as text (the CLI's) is a number
