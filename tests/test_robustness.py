"""The certified lower bound margin/(√2·L) and the robustness rows built on it."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from engines.attack.search import AttackConfig, attack_problems
from engines.certify.lipschitz import certified_radius, lipschitz_constant, logit_margins
from engines.core.checkpoint import load_checkpoint
from engines.core.context import RunContext
from engines.core.data import load_split
from engines.robustness.operation import RobustnessRequest, correct_prefix, run_robustness


def _mirror_classifier(n: int = 16, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Two classes with weights w and −w around the box's centre: the one model where margin/(√2·L) is exactly
    the distance to the decision boundary (‖e_0 − e_1‖·‖W‖ = 2‖w‖ = ‖w_0 − w_1‖)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    centre = torch.full((n,), 0.5, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]))
        model[1].bias.copy_(torch.stack([-(w @ centre), w @ centre]))
    return model, w


def test_the_bound_is_the_exact_distance_on_a_mirror_classifier_and_the_attack_meets_it() -> None:
    model, w = _mirror_classifier()
    gen = torch.Generator().manual_seed(1)
    x = (0.5 + 0.02 * torch.randn(12, 16, generator=gen, dtype=torch.float64)).clamp(0, 1)
    labels = model(x).argmax(1)
    lip = lipschitz_constant(model, (16,))
    assert math.isclose(lip, math.sqrt(2) * float(w.norm()), rel_tol=1e-9)  # ‖[w; −w]‖₂ = √2‖w‖
    radius = certified_radius(model, x, labels, lip)
    exact = ((x - 0.5) @ w).abs() / w.norm()
    torch.testing.assert_close(radius, exact)
    res = attack_problems(model, x, 1 - labels, AttackConfig(c_steps=12, max_iter=200))
    assert res.success.all()
    found = res.sq_dist.sqrt()
    assert (found >= radius * (1 - 1e-6)).all()  # no label change inside the certified radius
    assert (found <= radius * 1.02).all()  # and the attack reaches it: the bound is tight here


def test_no_attack_finds_a_label_change_inside_the_bound_on_a_sigmoid_net() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 3))
    x = torch.rand(200, 8)
    truth = (x - 0.5) @ torch.randn(8, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):  # fitted to labels that every part of the box holds, so that every label is reachable
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), truth.argmax(1)).backward()
        opt.step()
    x = x[:30].detach()
    labels = model(x).argmax(1)
    lip = lipschitz_constant(model, (8,))
    radius = certified_radius(model, x, labels, lip)
    assert (radius > 0).all()
    for shift in (1, 2):
        res = attack_problems(model, x, (labels + shift) % 3, AttackConfig(c_steps=9, max_iter=100))
        ok = res.success
        assert ok.any()
        assert (res.sq_dist[ok].sqrt() >= radius[ok]).all()


def test_margins_are_negative_exactly_where_the_model_is_wrong() -> None:
    model, _ = _mirror_classifier()
    x = torch.rand(40, 16, dtype=torch.float64)
    labels = torch.randint(0, 2, (40,))
    wrong = model(x).argmax(1) != labels
    assert torch.equal(logit_margins(model, x, labels) < 0, wrong)
    assert (certified_radius(model, x, labels, 1.0)[wrong] == 0).all()


def test_correct_prefix_holds_exactly_n_correct_images() -> None:
    right = torch.tensor([True, False, True, True, False, True])
    assert correct_prefix(right, 3) == 4
    assert correct_prefix(right, 4) == 6


def test_robustness_rows_bracket_the_true_minimum_on_the_shipped_softmax(tmp_path) -> None:
    ctx = RunContext(device="cpu", runs_root=tmp_path)
    request = RobustnessRequest(
        models=("softmax1",), reference="softmax1", n=12, config=AttackConfig(c_steps=4, max_iter=40)
    )
    result = run_robustness(request, ctx)
    (row,) = result.rows
    assert json.loads((result.folder / "robustness.json").read_text())["rows"][0]["model"] == "softmax1"
    assert row.images == 12 and row.attacked_range >= 12
    assert row.violations == 0
    assert 0 < row.certified < row.distortion
    assert 0 < row.certified_over_attack <= 1
    model = load_checkpoint("softmax1", "cpu").model
    test = load_split("test")
    with torch.no_grad():  # the oracle: one batch, no slicing
        wrong = int((model(test.images).argmax(1) != test.labels).sum())
    assert math.isclose(row.test_error, 100.0 * wrong / len(test), abs_tol=1e-9)
    assert row.transfer == 100.0  # its own examples fool it
    assert row.noise is not None and 0 <= row.noise < 100
