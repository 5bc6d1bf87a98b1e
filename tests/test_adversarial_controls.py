"""Issue 24's fixes of §4.2's pool (nearest targets, distortion cap, hidden examples as perturbations) and the
fresh-per-batch controls (fgm, vat), each checked against an independent reference; their CLI options."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engines.core.model_rows import row_from_meta
from engines.core.zoo import build_model, mlp_spec
from engines.train.adversarial import train_adversarial
from engines.train.adversarial_pool import AdversarialPool, AdversarialSettings, RefreshStats
from engines.train.fresh_perturbations import fresh_loss, gradient_perturbation, virtual_perturbation
from engines.train.layer_cuts import layer_cuts, layer_shapes
from engines.train.pool_fixes import nearest_targets


def _toy_data(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes as bright bands in a 1×6×6 image: learnable in a few steps, with room for adversarial moves."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 1, 6, 6, generator=gen) * 0.3
    for k in range(3):
        x[y == k, 0, 2 * k : 2 * k + 2, :] += 0.6
    return x.clamp(0, 1), y


def _trained_toy(dtype: torch.dtype = torch.float32) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(mlp_spec([12, 8], classes=3) | {"input": [1, 6, 6]}).to(dtype)
    x, y = _toy_data()
    x = x.to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x, y


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = getattr(model, name)
    assert isinstance(layer, nn.Linear)
    return layer


def _grad(model: nn.Module, name: str) -> torch.Tensor:
    grad = _linear(model, name).weight.grad
    assert grad is not None
    return grad.clone()


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).pow(2).mean(1).sqrt()


def _refresh(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AdversarialSettings, fraction: float = 1.0
) -> tuple[AdversarialPool, RefreshStats]:
    """A pool filled (and, for `fraction` < 1, refreshed once) from the model, and its last refresh's stats."""
    cuts = layer_cuts(model, settings.layers)
    pool = AdversarialPool(cuts, settings.pool_size, layer_shapes(cuts, x), hidden=settings.hidden)
    gen = torch.Generator().manual_seed(0)
    stats = pool.refresh(model, x, y, 1.0, 0, settings, gen, lambda: False, "t")
    if fraction < 1.0:
        stats = pool.refresh(model, x, y, fraction, 1, settings, gen, lambda: False, "t")
    return pool, stats


@pytest.mark.parametrize("policy", ["drop", "shrink"])
def test_the_cap_holds_for_every_pool_example(policy: str) -> None:
    model, x, y = _trained_toy()
    free, _ = _refresh(model, x, y, AdversarialSettings(pool_size=60, c_steps=3, max_iter=30))
    cuts = layer_cuts(model, None)
    # a cap below what the uncapped attack needs in every layer, so that it bites
    with torch.no_grad():
        cap = 0.5 * min(float(_rms(free.examples[c.name], c.lower(x[free.sources[c.name]])).max()) for c in cuts)
    assert cap > 0
    settings = AdversarialSettings(pool_size=60, c_steps=3, max_iter=30, cap=cap, cap_policy=policy)
    pool, stats = _refresh(model, x, y, settings, fraction=0.5)
    at_cap = 0
    for cut in cuts:
        with torch.no_grad():
            clean = cut.lower(x[pool.sources[cut.name]])
        dist = _rms(pool.examples[cut.name], clean)
        assert (pool.sources[cut.name] >= 0).all()
        assert float(dist.max()) <= cap * (1 + 1e-6), cut.name
        at_cap += int((dist > 0.99 * cap).sum())
        lo, hi = cut.box
        assert float(pool.examples[cut.name].min()) >= lo and float(pool.examples[cut.name].max()) <= hi
    capped = sum(int(v["dropped" if policy == "drop" else "shrunk"]) for v in stats.layers.values())
    assert capped > 0  # the cap bit: the refresh says how many examples it dropped or shrank
    if policy == "shrink":
        assert at_cap > 0  # examples above the cap were moved onto it, not dropped


def test_hidden_perturbations_are_reapplied_to_the_current_net() -> None:
    model, x, y = _trained_toy()
    base = AdversarialSettings(pool_size=40, c_steps=3, max_iter=30, layers=("act1", "act2"))
    as_points, _ = _refresh(model, x, y, base)
    as_r, _ = _refresh(model, x, y, dataclasses.replace(base, hidden="perturbation"))
    for name in ("act1", "act2"):  # the same attacks: before the net moves, φ_k(x) + r is the stored point
        assert torch.equal(as_r.sources[name], as_points.sources[name])
        torch.testing.assert_close(as_r.points(name), as_points.examples[name], atol=1e-5, rtol=0)
    with torch.no_grad():  # the lower layers change (as training moves them)
        _linear(model, "fc1").weight.add_(0.3 * torch.randn_like(_linear(model, "fc1").weight))
        _linear(model, "fc2").bias.add_(0.5)
    model.train()
    idx = torch.arange(0, 20, 3)
    for name, k in (("act1", 1), ("act2", 2)):
        src = as_r.sources[name][idx]
        with torch.no_grad():  # φ_k(x) of the current net, written out by hand
            h = torch.sigmoid(F.linear(x[src].flatten(1), _linear(model, "fc1").weight, _linear(model, "fc1").bias))
            if k == 2:
                h = torch.sigmoid(F.linear(h, _linear(model, "fc2").weight, _linear(model, "fc2").bias))
        want = (h + as_r.examples[name][idx]).clamp(0, 1)
        got, labels = as_r.gather({name: idx})[name]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        assert not got.requires_grad  # the example trains the layers above only
        assert torch.equal(labels, y[src])
        assert float((got - as_points.examples[name][idx]).abs().max()) > 1e-3  # not the stale point
    assert all(m.training for m in model.modules())  # the model's own mode is left as it was


def test_nearest_targets_match_the_exact_distances_of_a_linear_model() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double()
    x = torch.rand(30, 1, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (30,))
    w, b = _linear(model, "1").weight.detach(), _linear(model, "1").bias.detach()
    want = []
    for i in range(30):  # distance to each wrong class's hyperplane z_j = z_y, from the weights
        z = w @ x[i].flatten() + b
        d = {j: max(float(z[y[i]] - z[j]), 0.0) / float((w[j] - w[y[i]]).norm()) for j in range(5) if j != int(y[i])}
        want.append(min(d, key=lambda j: d[j]))
    assert nearest_targets(model, x, y).tolist() == want


def test_one_step_perturbation_has_the_stated_norm_and_raises_the_loss_to_first_order() -> None:
    model, x, y = _trained_toy(torch.float64)
    upper, h, lab = layer_cuts(model, ("input",))[0].upper, x[:6], y[:6]
    eps = 1e-6  # small enough that the second-order term is far below the tolerance
    r = gradient_perturbation(upper, h, lab, eps)
    torch.testing.assert_close(_rms(h + r, h), torch.full((6,), eps, dtype=torch.float64))

    def loss(point: torch.Tensor, i: int) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(upper(point[None]), lab[i : i + 1]))

    n, step = h[0].numel(), 1e-6
    for i in range(6):  # the gradient by central differences, one coordinate at a time
        g = torch.zeros(n, dtype=torch.float64)
        for j in range(n):
            e = torch.zeros(n, dtype=torch.float64)
            e[j] = step
            g[j] = (loss(h[i] + e.view(h[i].shape), i) - loss(h[i] - e.view(h[i].shape), i)) / (2 * step)
        rise = loss(h[i] + r[i], i) - loss(h[i], i)
        assert rise > 0
        assert rise == pytest.approx(eps * math.sqrt(n) * float(g.norm()), rel=1e-3)
        cos = float(F.cosine_similarity(r[i].flatten(), g, dim=0))
        assert cos > 1 - 1e-6


def test_vat_direction_matches_one_power_iteration_on_the_kl_hessian() -> None:
    model, x, _ = _trained_toy(torch.float64)
    cut = layer_cuts(model, ("act1",))[0]
    with torch.no_grad():
        h = cut.lower(x[:3])
    probe = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 0.02
    r = virtual_perturbation(cut.upper, h, eps, 1e-5, probe)
    torch.testing.assert_close(_rms(h + r, h), torch.full((3,), eps, dtype=torch.float64))
    for i in range(3):
        with torch.no_grad():
            p = F.softmax(cut.upper(h[i : i + 1]), 1)

        def kl(d: torch.Tensor, i: int = i, p: torch.Tensor = p) -> torch.Tensor:
            q = F.log_softmax(cut.upper((h[i] + d)[None]), 1)
            return (p * (p.log() - q)).sum()

        hess = torch.autograd.functional.hessian(kl, torch.zeros_like(h[i]))
        hd = hess.reshape(h[i].numel(), -1) @ probe[i].flatten()
        cos = float(F.cosine_similarity(r[i].flatten(), hd, dim=0))
        assert cos > 1 - 1e-4


def test_fresh_hidden_perturbations_train_only_the_layers_above() -> None:
    model, x, y = _trained_toy()
    model.train()
    cuts = layer_cuts(model, ("act2",))
    xb, yb = x[:16], y[:16]
    loss, _ = fresh_loss(model, cuts, xb, yb, "fgm", 8, 0.05, 1e-3, torch.Generator().manual_seed(0))
    model.zero_grad()
    loss.backward()
    got1, got3 = _grad(model, "fc1"), _grad(model, "fc3")
    model.zero_grad()
    (F.cross_entropy(model(xb), yb, reduction="sum") / 24).backward()  # the clean part alone, same denominator
    torch.testing.assert_close(got1, _grad(model, "fc1"))  # nothing reaches the layers below the cut
    assert not torch.allclose(got3, _grad(model, "fc3"))  # the perturbed copies do train the layers above


@pytest.mark.parametrize("mode", ["fgm", "vat"])
def test_fresh_modes_train_without_a_pool(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(mlp_spec([12, 8], classes=3) | {"input": [1, 6, 6]})
    x, y = _toy_data()
    events: list = []
    settings = AdversarialSettings(mode=mode, eps=0.05, warmup=1, mix=0.5)
    info = train_adversarial(
        model, x, y, [0.0, 0.0, 0.0], settings, epochs=3, batch_size=40, lr=0.03, seed=0,
        on_event=events.append, cancel=lambda: False, task="t",
    )  # fmt: skip
    assert info["refreshes"] == [] and mode in info["optimizer"]
    # only the settings the fresh perturbations use are recorded (no pool size, refresh, target, cap, …)
    used = {"mode", "mix", "layers", "warmup", "eps"} | ({"xi"} if mode == "vat" else set())
    assert set(info["adversarial"]) == used | {"layers_used", "pool_examples_per_batch"}
    assert set(settings.to_json()) - used >= {"pool_size", "refresh", "target", "cap", "hidden", "c_steps"}
    assert AdversarialSettings().record() == AdversarialSettings().to_json()  # the pool records every setting
    assert [e.stage for e in events] == ["warm-up", "adversarial", "adversarial"]
    assert all(math.isnan(e.pool_error) for e in events)
    with torch.no_grad():
        assert float((model(x).argmax(1) != y).float().mean()) < 0.2  # it still learns the bands


def test_models_json_shows_the_seed_study_of_a_sidecar(cli, tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    study = {"validation_error": 1.52, "seeds": [0, 1, 2], "test_error_mean": 1.61, "test_error_sd": 0.07}
    meta = {"id": "tiny", "metrics": {"test_error": 1.58, "train_error": 0.4}} | study
    (tmp_path / "tiny.json").write_text(json.dumps(meta))
    rc, stdout, err = cli("models", "--folder", str(tmp_path), "--json")
    assert rc == 0, err
    (row,) = json.loads(stdout)
    assert {k: row[k] for k in study} == study and row["test_error"] == 1.58
    plain = row_from_meta("m.safetensors", {"id": "m", "metrics": {"test_error": 2.0}})
    assert not set(study) & set(plain)  # a sidecar without a study shows none


@pytest.mark.parametrize(
    ("args", "recorded"),
    [
        (
            ["--adversarial-mode", "fgm", "--adv-eps", "0.03", "--mix", "0.5"],
            {"mode": "fgm", "eps": 0.03, "mix": 0.5},
        ),
        (
            ["--target", "nearest", "--adv-cap", "0.02", "--adv-cap-policy", "shrink", "--adv-hidden", "perturbation"],
            {"target": "nearest", "cap": 0.02, "cap_policy": "shrink", "hidden": "perturbation", "mode": "pool"},
        ),
    ],
)
def test_cli_trains_with_the_new_options_and_records_them(cli, tmp_path, args: list[str], recorded: dict) -> None:
    out = tmp_path / "models"
    common = ["--model", "softmax1", "--adversarial", "--epochs", "2", "--warmup", "1", "--pool-size", "40"]
    budget = ["--adv-c-steps", "1", "--adv-max-iter", "5", "--out", str(out), "--device", "cpu"]
    rc, _, err = cli("train", *common, *budget, *args)
    assert rc == 0, err
    training = json.loads((out / "softmax1-adv.json").read_text())["training"]
    assert {k: training["adversarial"][k] for k in recorded} == recorded
    if recorded["mode"] == "fgm":
        assert training["refreshes"] == [] and "fgm" in training["optimizer"]
    else:
        (refresh,) = training["refreshes"]
        assert 0 < refresh["layers"]["input"]["mean_distortion"] <= 0.02
