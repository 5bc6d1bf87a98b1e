"""The certified lower end in `robustness` and in reproduce's Table 1 (issue 25)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from engines.attack.chunks import load_samples
from engines.attack.operation import AttackRequest, run_attack
from engines.attack.search import AttackConfig
from engines.certify.exact import exact_untargeted
from engines.core.checkpoint import load_checkpoint
from engines.core.context import RunContext
from engines.reproduce.markdown import _bracket
from engines.reproduce.tables import table1_bracket
from engines.robustness.operation import RobustnessRequest, run_robustness
from engines.transfer.matrix import MatrixRow, TransferMatrix


def test_robustness_reports_the_exact_minimum_of_a_linear_model_beside_the_global_bound(tmp_path: Path) -> None:
    request = RobustnessRequest(models=("softmax2",), reference=None, n=6, config=AttackConfig(c_steps=4, max_iter=40))
    (row,) = run_robustness(request, RunContext(device="cpu", runs_root=tmp_path)).rows
    assert row.certified_method == "exact" and row.violations == 0
    assert row.certified_global is not None and row.certified >= row.certified_global
    assert row.certified <= row.distortion
    assert row.certified_over_attack > 0.9  # the attack is close to the exact minimum on a linear model


def test_table1_gets_the_exact_minimum_of_the_attacked_images(tmp_path: Path) -> None:
    run_attack(AttackRequest(model="softmax3", n=6, target="all"), RunContext(out=tmp_path / "attack"))
    s = load_samples(tmp_path / "attack")
    folder = tmp_path / "matrix"
    (folder / "sets").mkdir(parents=True)
    save_file({"x": s["x"].contiguous(), "label": s["label"].contiguous()}, str(folder / "sets" / "images.safetensors"))
    save_file({"x_pert": s["x_adv"].contiguous()}, str(folder / "sets" / "softmax3.safetensors"))
    row = MatrixRow("softmax3", "adversarial", "softmax3", 0.0, 6, "sets/softmax3.safetensors")
    matrix = TransferMatrix([row], ["softmax3"], torch.zeros(1, 1).numpy(), "test", 6, folder=folder)
    lm = load_checkpoint("softmax3", "cpu")
    cell = table1_bracket(matrix, row, lm)
    moved = s["success"].bool()
    weight, bias = lm.model.fc1.weight.detach(), lm.model.fc1.bias.detach()
    exact, _, _ = exact_untargeted(weight, bias, s["x"][moved], s["label"][moved].long())
    assert cell["lower_method"] == "exact" and cell["bracket_images"] == int(moved.sum())
    assert math.isclose(cell["exact"], float(exact.mean()) / 28, rel_tol=1e-6)
    assert cell["bracket_violations"] == 0 and cell["attack_over_lower_mean"] >= 1 - 1e-6
    assert cell["lower_global"] <= cell["exact"]
    assert "(exact)" in _bracket(cell) and _bracket({"lower": 0.01, "distortion": 0.05}).startswith("[0.0100, 0.050]")
