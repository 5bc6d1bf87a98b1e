"""§4.2's adversarial training: the pool's refresh and mixing, per-layer examples, and the CLI's options."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from engines.core.errors import InputError
from engines.core.zoo import build_model, mlp_spec, zoo_entry
from engines.train.adversarial import mixed_loss, train_adversarial
from engines.train.adversarial_pool import AdversarialPool, AdversarialSettings
from engines.train.layer_cuts import layer_cuts, layer_shapes


def _toy_data(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class-per-half blobs in a 1×6×6 image: learnable in a few epochs, with room for adversarial moves."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 1, 6, 6, generator=gen) * 0.3
    for k in range(3):
        x[y == k, 0, 2 * k : 2 * k + 2, :] += 0.6
    return x.clamp(0, 1), y


def _toy_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    spec = mlp_spec([12, 8], classes=3) | {"input": [1, 6, 6]}
    return build_model(spec)


def _trained_toy() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    model, (x, y) = _toy_model(), _toy_data()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x, y


def test_cuts_split_the_model_so_that_lower_then_upper_is_the_model() -> None:
    model, x, _ = _trained_toy()
    cuts = layer_cuts(model, None)
    assert [c.name for c in cuts] == ["input", "act1", "act2"]
    for cut in cuts:
        torch.testing.assert_close(cut.upper(cut.lower(x)), model(x))
    assert cuts[1].box == (0.0, 1.0)


def test_refresh_replaces_the_asked_fraction_with_examples_adversarial_at_refresh_time() -> None:
    model, x, y = _trained_toy()
    cuts = layer_cuts(model, None)
    pool = AdversarialPool(cuts, 61, layer_shapes(cuts, x))
    assert sum(pool.sizes.values()) == len(pool) == 61
    assert sorted(pool.sizes.values()) == [20, 20, 21]
    settings = AdversarialSettings(pool_size=61, c_steps=4, max_iter=40)
    gen = torch.Generator().manual_seed(0)
    first = pool.refresh(model, x, y, 1.0, 0, settings, gen, lambda: False, "t")
    assert all((b == 0).all() for b in pool.born.values())  # the first fill leaves no slot empty
    stats = pool.refresh(model, x, y, 0.5, 3, settings, gen, lambda: False, "t")
    for cut in cuts:
        new = pool.born[cut.name] == 3
        # only successful attacks replace a slot, and at most the asked half of the slots is attacked
        assert int(new.sum()) == stats.layers[cut.name]["replaced"] <= round(0.5 * pool.sizes[cut.name])
        assert stats.layers[cut.name]["replaced"] > 0
        ex, lab = pool.examples[cut.name][new], pool.labels[cut.name][new]
        with torch.no_grad():
            assert (cut.upper(ex).argmax(1) != lab).all()  # adversarial for the model at refresh time
        lo, hi = cut.box
        assert float(ex.min()) >= lo and float(ex.max()) <= hi  # inside the layer's box
        assert set(lab.tolist()) <= set(y.tolist())
    assert first.layers["input"]["attacked"] == pool.sizes["input"]


def test_pool_labels_are_the_true_labels_of_the_images_they_came_from() -> None:
    model, x, y = _trained_toy()
    cuts = layer_cuts(model, ["input"])
    pool = AdversarialPool(cuts, 30, layer_shapes(cuts, x))
    pool.refresh(
        model,
        x,
        y,
        1.0,
        0,
        AdversarialSettings(c_steps=3, max_iter=30),
        torch.Generator().manual_seed(1),
        lambda: False,
        "t",
    )
    ex, lab, src = pool.examples["input"], pool.labels["input"], pool.sources["input"]
    assert torch.equal(y[src], lab)  # each example keeps the true label of the image it was made from
    moved = (ex - x[src]).flatten(1).norm(dim=1)
    assert (moved > 0).all() and (moved < (x[src].flatten(1).norm(dim=1))).all()  # a perturbation of that image


def test_sample_draws_the_asked_count_grouped_by_layer() -> None:
    model, x, _ = _trained_toy()
    cuts = layer_cuts(model, None)
    pool = AdversarialPool(cuts, 90, layer_shapes(cuts, x))
    batch = pool.sample(500, torch.Generator().manual_seed(0))
    assert sum(len(lab) for _, lab in batch.values()) == 500
    assert set(batch) == {"input", "act1", "act2"}
    assert batch["act1"][0].shape[1:] == (12,) and batch["input"][0].shape[1:] == (1, 6, 6)


def test_hidden_layer_examples_train_only_the_layers_above() -> None:
    model, x, y = _trained_toy()
    cuts = layer_cuts(model, None)
    h1 = cuts[1].lower(x[:16]).detach()
    for name, examples, dead, alive in (
        ("act1", h1, ["fc1"], ["fc2", "fc3"]),
        ("act2", cuts[2].lower(x[:16]).detach(), ["fc1", "fc2"], ["fc3"]),
        ("input", x[:16], [], ["fc1", "fc2", "fc3"]),
    ):
        model.zero_grad()
        loss, _ = mixed_loss(model, cuts, x[:0], y[:0], {name: (examples, y[:16])})
        loss.backward()
        for layer in dead:
            grad = getattr(model, layer).weight.grad
            assert grad is None or float(grad.abs().max()) == 0.0, (name, layer)
        for layer in alive:
            assert float(getattr(model, layer).weight.grad.abs().max()) > 0.0, (name, layer)


def test_mixed_loss_is_the_mean_over_clean_and_pool_examples() -> None:
    model, x, y = _trained_toy()
    cuts = layer_cuts(model, None)
    h = cuts[2].lower(x[:5]).detach()
    loss, _ = mixed_loss(model, cuts, x[:10], y[:10], {"act2": (h, y[:5])})
    ce = nn.functional.cross_entropy
    expected = (ce(model(x[:10]), y[:10], reduction="sum") + ce(cuts[2].upper(h), y[:5], reduction="sum")) / 15
    torch.testing.assert_close(loss, expected)


def test_training_with_the_pool_fits_and_records_its_refreshes() -> None:
    model, (x, y) = _toy_model(), _toy_data()
    events = []
    settings = AdversarialSettings(
        pool_size=40, refresh=0.25, refresh_every=2, mix=0.5, warmup=1, c_steps=2, max_iter=15
    )
    info = train_adversarial(
        model,
        x,
        y,
        [0.0, 0.0, 0.0],
        settings,
        epochs=5,
        batch_size=32,
        lr=0.02,
        seed=0,
        on_event=events.append,
        cancel=lambda: False,
        task="t",
    )
    assert [r["epoch"] for r in info["refreshes"]] == [1, 3]  # after the warm-up, then every second epoch
    assert info["adversarial"]["layers_used"] == ["input", "act1", "act2"]
    assert [e.stage for e in events] == ["warm-up"] + ["adversarial"] * 4
    assert events[-1].clean_error < 50.0 and 0.0 <= events[-1].pool_error <= 100.0
    assert events[2].refreshed == 0 and events[3].refreshed > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_size": 0}, "--pool-size"),
        ({"refresh": 0.0}, "--refresh"),
        ({"mix": 0.0}, "--mix"),
        ({"target": "all"}, "--target all"),
        ({"layers": ()}, "--adv-layers"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        AdversarialSettings(**kwargs)


def test_unknown_layer_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InputError, match="unknown layer 'fc1'.*input, act1, act2"):
        layer_cuts(build_model(zoo_entry("n100-100-10").spec), ("fc1",))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adversarial", "--pool-size", "0"], "--pool-size must be at least 1"),
        (["--adversarial", "--adv-layers", "input,act9"], "unknown layer 'act9'"),
        (["--pool-size", "100"], "--pool-size is a pool option: add --adversarial"),
        (["--adversarial", "--target", "all"], "--target all"),
        # the pool's fixes and the fresh-perturbation controls (issue 24)
        (["--adversarial", "--adv-cap", "0"], "--adv-cap is an rms distortion"),
        (["--adversarial", "--adv-cap", "-0.1"], "--adv-cap is an rms distortion"),
        (["--adversarial", "--adversarial-mode", "fgm", "--adv-eps", "0"], "--adv-eps is an rms perturbation"),
        (["--adversarial", "--adversarial-mode", "vat", "--adv-layers", "act7"], "unknown layer 'act7'"),
        (["--adversarial", "--adversarial-mode", "pgd"], "unknown --adversarial-mode 'pgd'"),
        (["--adversarial", "--adv-hidden", "stale"], "unknown --adv-hidden 'stale'"),
        (["--adversarial", "--adv-cap-policy", "clip"], "unknown --adv-cap-policy 'clip'"),
        (["--adversarial", "--target", "furthest"], "unknown --target 'furthest'"),
        (["--adv-cap", "0.1"], "--adv-cap is a pool option: add --adversarial"),
        (["--adversarial-mode", "fgm"], "--adversarial-mode is a pool option: add --adversarial"),
    ],
)
def test_cli_bad_pool_and_control_options_exit_2_with_one_line(cli, tmp_path, args: list[str], message: str) -> None:
    rc, out, err = cli("train", "--model", "n100-100-10", "--out", str(tmp_path / "m"), *args)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out
    assert not (tmp_path / "m").exists()


def test_cli_trains_a_plain_zoo_model_adversarially_as_id_adv(cli, tmp_path) -> None:
    out = tmp_path / "models"
    rc, stdout, err = cli(
        "train",
        "--model",
        "softmax1",
        "--adversarial",
        "--epochs",
        "2",
        "--warmup",
        "1",
        "--pool-size",
        "50",
        "--adv-c-steps",
        "1",
        "--adv-max-iter",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--json",
    )
    assert rc == 0, err
    assert json.loads(stdout)[0]["id"] == "softmax1-adv"
    meta = json.loads((out / "softmax1-adv.json").read_text())
    assert meta["training"]["adversarial"]["layers_used"] == ["input"]  # a linear model has no hidden layer
    assert meta["training"]["adversarial"]["pool_size"] == 50
    assert meta["training"]["refreshes"][0]["epoch"] == 1
    assert not (out / "softmax1.safetensors").exists()
    # `models --json` shows the recipe: how the pool was run, beside the measured errors
    rc, stdout, _ = cli("models", "--folder", str(out), "--json")
    (row,) = json.loads(stdout)
    assert row["id"] == "softmax1-adv" and row["test_error"] == meta["metrics"]["test_error"]
    assert row["recipe"]["adversarial"]["layers_used"] == ["input"] and row["recipe"]["epochs"] == 2
    assert "refreshes" not in row["recipe"]


def test_a_cancel_stops_inside_a_refresh() -> None:
    from engines.core.errors import Cancelled

    model, (x, y) = _toy_model(), _toy_data()
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 40  # past the warm-up epoch's batches: inside the first fill's attack

    settings = AdversarialSettings(pool_size=40, warmup=1, c_steps=3, max_iter=30)
    with pytest.raises(Cancelled):
        train_adversarial(
            model,
            x,
            y,
            [0.0, 0.0, 0.0],
            settings,
            epochs=3,
            batch_size=32,
            lr=0.02,
            seed=0,
            on_event=lambda e: None,
            cancel=cancel,
            task="t",
        )
    assert calls["n"] == 41  # stopped at the first check that said so, not at the end of an epoch
