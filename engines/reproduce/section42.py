"""reproduce's §4.2 section: the protocol's seed study as shipped (mean ± sd over seeds of every arm, the paired
comparisons, the fix chain, the chosen hyper-parameters, the cost) beside the paper's figures, and the robustness of
each shipped first-seed model measured live (attack upper bound, certified lower bound, transfer, noise).

Nothing is retrained: the study is read from studies/section42.json beside the models folder
(`engines.reproduce.section42_study`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engines.attack.search import AttackConfig
from engines.core.checkpoint import resolve_model_path
from engines.core.context import RunContext
from engines.core.errors import CheckpointError, InputError
from engines.core.models import as_model_ref
from engines.core.zoo import zoo_entry
from engines.reproduce.section42_study import arms, chain_steps, moved, paired, read_study, study_file
from engines.robustness.operation import RobustnessRequest, run_robustness

MAIN = ("n100-100-10-decay", "n100-100-10-dropout", "n100-100-10-adv")  # the protocol's winners
ABLATION = ("n100-100-10-adv", "n100-100-10-adv-input", "n100-100-10-adv-hidden")  # which layers' examples
CONTROLS = ("n100-100-10-adv-paper", "n100-100-10-fgm", "n100-100-10-vat")  # the paper's pool as written; fresh ones
ADV = "n100-100-10-adv"
# the study's arm each shipped model is the first seed of (the study's `ship` stage copies it under the model's id)
ARM = {
    "n100-100-10-decay": "decay",
    "n100-100-10-dropout": "dropout",
    "n100-100-10-adv": "adv",
    "n100-100-10-adv-input": "adv-input",
    "n100-100-10-adv-hidden": "adv-hidden",
    "n100-100-10-adv-paper": "adv-paper",
    "n100-100-10-fgm": "fgm",
    "n100-100-10-vat": "vat",
}
ABLATION_PAIRS = (("adv", "adv-input"), ("adv", "adv-hidden"), ("adv-input", "adv-hidden"))
REFERENCE = "n100-100-10"  # whose adversarial examples are transferred (Table 2's row of the same net)
PAPER_TEXT = {
    "n100-100-10-decay": "1.6 % (weight decay alone)",
    "n100-100-10-dropout": "≈1.3 % (carefully applied dropout)",
    "n100-100-10-adv": "< 1.2 % (adversarial pool)",
}
SAME = 0.01  # points of test error within which a shipped model's live figure is its study's first seed's


def section42(
    n: int, seed: int, config: AttackConfig, data_dir: str | None, ctx: RunContext, out: Any
) -> dict[str, Any]:
    """The §4.2 section's figures. Models not in the models folder are listed as missing, not fatal; a missing
    study is said so (the live rows still shown); a damaged one is its one-line error in the section."""
    path = study_file()
    try:
        study, study_error = read_study(path), None
    except InputError as exc:
        study, study_error = None, str(exc)
    models = list(dict.fromkeys(MAIN + ABLATION + CONTROLS))
    missing = [m for m in models if not _trained(m)]
    present = tuple(m for m in models if m not in missing)
    reference = REFERENCE if _trained(REFERENCE) else None
    live: dict[str, dict[str, Any]] = {}
    if present:
        request = RobustnessRequest(
            models=tuple(as_model_ref(m) for m in present),
            reference=None if reference is None else as_model_ref(reference),
            n=n,
            seed=seed,
            config=config,
            data_dir=data_dir,
        )
        result = run_robustness(request, replace(ctx, out=out, overwrite=True))  # reproduce owns its section folder
        live = {r.model: r.to_json() for r in result.rows}
    by_arm = arms(study) if study is not None else {}
    rows = {m: model_row(m, live.get(m), by_arm.get(ARM[m])) for m in models}
    return {
        "n": n,
        "reference": reference,
        "rows": [rows[m] for m in MAIN],
        "ablation": [rows[m] for m in ABLATION],
        "controls": [rows[m] for m in CONTROLS],
        "missing": missing,
        "study_file": str(path),
        "study_error": study_error,
        "study": study,
        "findings": None if study is None else findings(study),
    }


def model_row(model_id: str, live: dict[str, Any] | None, arm: dict[str, Any] | None) -> dict[str, Any]:
    """One shipped model: the paper's figure, its arm's seed study (None without one) and its live robustness (None
    when not trained), and whether the live test error is the study's first seed's."""
    entry = zoo_entry(model_id)
    row: dict[str, Any] = {
        "model": model_id,
        "arm": ARM[model_id],
        "layers": _layers(model_id),
        "description": entry.description,
        "paper_test_error": entry.paper.get("test_error"),
        "paper_text": PAPER_TEXT.get(model_id, ""),
        "live": live,
        "study": None,
        "matches_study": None,
    }
    if arm is not None:
        keep = ("seeds", "test_error_mean", "test_error_sd", "validation_error_mean", "validation_error_sd")
        row["study"] = {k: arm.get(k) for k in keep} | {
            "first_seed_test_error": arm["per_seed"][0]["test_error"] if arm["per_seed"] else None,
            "robustness": arm.get("robustness"),
        }
        first = row["study"]["first_seed_test_error"]
        if live is not None and first is not None:
            row["matches_study"] = abs(float(live["test_error"]) - float(first)) <= SAME
    return row


def findings(study: dict[str, Any]) -> dict[str, Any]:
    """What the section states from the study's numbers: the adversarial arm against the paper's figure, every arm
    against the baseline, the fix chain's steps and those that moved test error, the ablation's paired comparisons."""
    by_arm = arms(study)
    adv = by_arm.get(ARM[ADV])
    figure = zoo_entry(ADV).paper.get("test_error")
    steps = chain_steps(study)
    best = min(study["arms"], key=lambda a: a["test_error_mean"]) if study["arms"] else None
    return {
        "paper_figure": figure,
        "adv_mean": None if adv is None else adv["test_error_mean"],
        "adv_sd": None if adv is None else adv["test_error_sd"],
        "reached": None if adv is None or figure is None else adv["test_error_mean"] < figure,
        "best_arm": None if best is None else best["arm"],
        "baseline": [
            c for a in by_arm if a != study["baseline"] and (c := paired(study, study["baseline"], a)) is not None
        ],
        "chain": [{k: s[k] for k in ("step", "against", "comparison")} for s in steps],
        "chain_moved": moved(steps),
        "ablation": [c for a, b in ABLATION_PAIRS if (c := paired(study, a, b)) is not None],
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
