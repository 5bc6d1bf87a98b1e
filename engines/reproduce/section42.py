"""reproduce's §4.2 section: the adversarially trained n100-100-10 beside the paper's two comparison points,
its robustness measured (attack upper bound, certified lower bound, transfer, noise), and the ablation of
which layers' examples are used, with a second seed's spread."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engines.attack.search import AttackConfig
from engines.core.checkpoint import resolve_model_path
from engines.core.context import RunContext
from engines.core.errors import CheckpointError
from engines.core.models import as_model_ref
from engines.core.zoo import zoo_entry
from engines.robustness.operation import RobustnessRequest, run_robustness

MAIN = ("n100-100-10-decay", "n100-100-10-dropout", "n100-100-10-adv")
ABLATION = ("n100-100-10-adv", "n100-100-10-adv-input", "n100-100-10-adv-hidden", "n100-100-10-adv-seed1")
REFERENCE = "n100-100-10"  # whose adversarial examples are transferred (Table 2's row of the same net)
PAPER_TEXT = {
    "n100-100-10-decay": "1.6 % (weight decay alone)",
    "n100-100-10-dropout": "≈1.3 % (carefully applied dropout)",
    "n100-100-10-adv": "< 1.2 % (adversarial pool)",
}


def section42(
    n: int, seed: int, config: AttackConfig, data_dir: str | None, ctx: RunContext, out: Any
) -> dict[str, Any]:
    """The §4.2 rows; models not trained (not in the models folder) are listed as missing, not fatal."""
    models = list(dict.fromkeys(MAIN + ABLATION))
    missing = [m for m in models if not _trained(m)]
    present = tuple(m for m in models if m not in missing)
    if not present:
        return {"rows": [], "ablation": [], "missing": missing, "n": n}
    reference = REFERENCE if _trained(REFERENCE) else None
    request = RobustnessRequest(
        models=tuple(as_model_ref(m) for m in present),
        reference=None if reference is None else as_model_ref(reference),
        n=n,
        seed=seed,
        config=config,
        data_dir=data_dir,
    )
    result = run_robustness(request, replace(ctx, out=out, overwrite=True))  # reproduce owns its section folder
    rows = {r.model: r.to_json() for r in result.rows}
    for mid, row in rows.items():
        entry = zoo_entry(mid)
        row["paper_test_error"] = entry.paper.get("test_error")
        row["paper_text"] = PAPER_TEXT.get(mid, "")
        row["layers"] = _layers(mid)
    return {
        "rows": [rows[m] for m in MAIN if m in rows],
        "ablation": [rows[m] for m in ABLATION if m in rows],
        "missing": missing,
        "n": n,
        "reference": reference,
    }


def _trained(model_id: str) -> bool:
    try:
        resolve_model_path(model_id)
    except CheckpointError:
        return False
    return True


def _layers(model_id: str) -> str:
    recipe = zoo_entry(model_id).recipe
    if recipe["optimizer"] != "adversarial":
        return "none"
    layers = recipe["adversarial"].get("layers")
    return "all (input, act1, act2)" if layers is None else ", ".join(layers)
