"""The §4.2 section of reproduce's report.md: the protocol in a paragraph, the seed study's arms (mean ± sd over
seeds) beside the paper's figures with each shipped model's live robustness, the ablation, the controls, the fix
chain, the paired comparisons, the chosen hyper-parameters and the cost. Every number comes from the section's
figures (`engines.reproduce.section42`): the study file and the live rows; the statements are computed from them."""

from __future__ import annotations

from typing import Any

from engines.report.markdown import number, table_head
from engines.reproduce.section42_study import NO_DIFFERENCE

TITLE = "## §4.2: adversarial training under the protocol, and the robustness it buys"


def pm(mean: float | None, sd: float | None, digits: int = 2) -> str:
    """mean ± sd, the mean alone without an sd (one seed), an en dash without a mean."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def section42_lines(s42: dict[str, Any]) -> list[str]:
    """Markdown lines of the section (a note only, when there is neither a study nor a trained model)."""
    lines = [TITLE, ""]
    rows = s42["rows"] + s42["ablation"] + s42.get("controls", [])
    study = s42.get("study")
    if study is None and not any(r["live"] for r in rows):
        return lines + [
            _study_note(s42),
            "",
            f"Not computed: no §4.2 model is trained ({', '.join(s42['missing'])}).",
            "",
        ]
    lines += [_protocol(s42), ""]
    if study is None:
        lines += [_study_note(s42), ""]
    lines += [*_main_table(s42), ""]
    lines += [*_live_note(s42), ""]
    if study is not None:
        lines += [*_main_readings(s42), ""]
    lines += ["### Ablation: which layers' adversarial examples are used", "", *_arm_table(s42, s42["ablation"]), ""]
    if study is not None and (readings := _ablation_readings(s42)):
        lines += [*readings, ""]
    lines += ["### Controls: the paper's pool as written, and fresh perturbations", ""]
    lines += [*_arm_table(s42, s42.get("controls", []), what="description"), ""]
    if study is not None:
        lines += [*_chain(s42), "", *_baseline(s42), "", *_hyper(study), "", *_cost(study), ""]
        lines += _study_robustness(s42)
    if s42.get("missing"):
        lines += [f"Not in the models folder, left out of the live columns: {', '.join(s42['missing'])}.", ""]
    return lines


def _study_note(s42: dict[str, Any]) -> str:
    if s42.get("study_error"):
        return f"No seed study read: {s42['study_error']}."
    return (
        f"No seed study: `{s42.get('study_file', 'studies/section42.json')}` is absent (it is written by "
        "`benchmarks/study_section42.py`); the seed columns are empty."
    )


def _seeds(rows: list[dict[str, Any]]) -> str:
    """The seeds every arm with a study was trained with, when they share them."""
    sets = {tuple(r["study"]["seeds"]) for r in rows if r.get("study")}
    return ", ".join(map(str, sets.pop())) if len(sets) == 1 else "per arm (see the tables)"


def _protocol(s42: dict[str, Any]) -> str:
    study = s42.get("study")
    live = (
        f"Robustness columns: each shipped model (its seed study's first seed) measured now on the first {s42['n']} "
        "correctly classified test images."
    )
    if study is None:
        return live
    rows = s42["rows"] + s42["ablation"] + s42.get("controls", [])
    what = str(study.get("what", "")).rstrip(".")
    return (
        f"Protocol: {what}. Seeds: {_seeds(rows)}. A stated grid per arm is trained with the first seed and the "
        "point of lowest validation error is chosen before the test set is read; the other seeds are trained with "
        "it. Errors in %, mean ± sample sd over the seeds; a comparison is the paired difference B − A over common "
        'seeds (mean ± sd of the differences), read as "no difference" when its mean lies within 2 sd. '
        f"{live} Study: `{s42.get('study_file')}`."
    )


def _study(r: dict[str, Any]) -> dict[str, Any]:
    return r.get("study") or {}


def _live(r: dict[str, Any], key: str, digits: int) -> str:
    return number((r["live"] or {}).get(key), digits)


def _shipped(r: dict[str, Any]) -> str:
    """The shipped model's test error measured now, flagged when it is not the study's first seed's."""
    if not r["live"]:
        return "not trained"
    flag = " (≠ study's seed)" if r.get("matches_study") is False else ""
    return f"{number(r['live']['test_error'])}{flag}"


def _seed_cells(r: dict[str, Any]) -> list[str]:
    s = _study(r)
    return [
        str(len(s["seeds"])) if s else "–",
        pm(s.get("test_error_mean"), s.get("test_error_sd")),
        pm(s.get("validation_error_mean"), s.get("validation_error_sd")),
    ]


def _main_table(s42: dict[str, Any]) -> list[str]:
    ref = s42.get("reference") or "–"
    head = ["model", "seeds", "test error", "validation error", "paper", "shipped seed's test error"]
    head += ["min. distortion (attack)", "certified lower bound", "bound / attack"]
    head += [f"{ref}'s examples misclassified", "Gaussian noise, same rms"]
    lines = table_head(head)
    for r in s42["rows"]:
        cells = [r["model"], *_seed_cells(r), r["paper_text"] or number(r["paper_test_error"]), _shipped(r)]
        cells += [_live(r, "distortion", 4), _live(r, "certified", 5), _live(r, "certified_over_attack", 3)]
        cells += [_live(r, "transfer", 1), _live(r, "noise", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _arm_table(s42: dict[str, Any], rows: list[dict[str, Any]], what: str = "layers") -> list[str]:
    head = ["model", what, "seeds", "test error", "validation error", "shipped seed's test error"]
    lines = table_head([*head, "min. distortion", "certified lower bound", "transfer", "noise"])
    for r in rows:
        cells = [r["model"], str(r.get(what, "")), *_seed_cells(r), _shipped(r)]
        cells += [_live(r, "distortion", 4), _live(r, "certified", 5), _live(r, "transfer", 1), _live(r, "noise", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _live_note(s42: dict[str, Any]) -> list[str]:
    rows = [r for r in s42["rows"] + s42["ablation"] + s42.get("controls", []) if r["live"]]
    if not rows:
        return ["No shipped model to measure live: the robustness columns are empty."]
    unique = {r["model"]: r for r in rows}.values()
    violations = sum(int(r["live"]["violations"]) for r in unique)
    text = (
        f"Live columns, per model, over the first {s42['n']} correctly classified test images: the true minimum "
        "distortion lies between the certified bound (CROWN's radius over the L2 ball ∩ [0, 1] box, or the global "
        "margin/(√2·L) where larger) and the attack's closest success over every wrong label; rms units "
        f"sqrt(Σr²/d), means over the images. Violations (an attack success inside the bound): {violations}."
    )
    if _study_robustness(s42):
        text += (
            f" The study's own measurement, N = {s42['study']['robustness_n']} per arm, is the section's last table."
        )
    apart = [r["model"] for r in unique if r.get("matches_study") is False]
    if apart:
        text += (
            f" The shipped {', '.join(apart)} {'is' if len(apart) == 1 else 'are'} not the study's first seed "
            "(test error measured now ≠ the study's): the seed columns and the live ones describe different models."
        )
    return [text]


def _verdict(c: dict[str, Any] | None) -> str:
    if c is None:
        return "not in the study"
    return f"{c['mean_difference']:+.2f} ± {c['sd']:.2f} points over {len(c['seeds'])} seeds: {c['verdict']}"


def _main_readings(s42: dict[str, Any]) -> list[str]:
    f = s42["findings"]
    out = []
    if f["adv_mean"] is not None and f["paper_figure"] is not None:
        word = "reached" if f["reached"] else "not reached"
        out.append(
            f"- The paper's < {f['paper_figure']:g} % for n100-100-10-adv is **{word}**: "
            f"{pm(f['adv_mean'], f['adv_sd'])} % over the study's seeds"
            + ("." if f["reached"] else f"; the lowest mean of any arm: {_best(s42['study'], f['best_arm'])}.")
        )
    elif f["adv_mean"] is None:
        out.append("- The study has no adv arm: whether the paper's figure is reached is not measured.")
    by_b = {c["b"]: c for c in f["baseline"]}
    base = s42["study"]["baseline"]
    for r in s42["rows"]:
        if r["arm"] != base:
            out.append(f"- {r['model']} against {base} (B − A): {_verdict(by_b.get(r['arm']))}.")
    return out


def _best(study: dict[str, Any], name: str) -> str:
    arm = next(a for a in study["arms"] if a["arm"] == name)
    return f"{name}, {pm(arm['test_error_mean'], arm['test_error_sd'])} %"


def _ablation_readings(s42: dict[str, Any]) -> list[str]:
    out = [
        f"- {c['b']} against {c['a']} (B − A, paired over the seeds, computed from the study's per-seed errors): "
        f"{_verdict(c)}."
        for c in s42["findings"]["ablation"]
    ]
    hidden = next((c for c in s42["findings"]["ablation"] if (c["a"], c["b"]) == ("adv-input", "adv-hidden")), None)
    if hidden is not None:
        if hidden["verdict"] == NO_DIFFERENCE:
            reading = "cannot be told apart from input examples over these seeds"
        elif hidden["mean_difference"] < 0:
            reading = "give lower test error than input examples, as the paper found them more useful"
        else:
            reading = "give higher test error than input examples, against the paper's reading"
        out.append(f"- Hidden-layer examples {reading}.")
    return out


def _chain(s42: dict[str, Any]) -> list[str]:
    study, f = s42["study"], s42["findings"]
    by_arm = {a["arm"]: a for a in study["arms"]}
    lines = [
        "### The fix chain: the paper's pool, one fix at a time",
        "",
        *table_head(["step", "options over its model", "test error", "validation error", "against", "B − A"]),
    ]
    for step in f["chain"]:
        arm = by_arm.get(step["step"])
        options = " ".join(arm.get("options") or []) if arm else ""
        cells = [
            step["step"],
            (f"`{arm['model']}`" + (f" `{options}`" if options else "")) if arm else "not trained",
            pm(arm["test_error_mean"], arm["test_error_sd"]) if arm else "–",
            pm(arm.get("validation_error_mean"), arm.get("validation_error_sd")) if arm else "–",
            step["against"] or "–",
            _verdict(step["comparison"]) if step["against"] else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    moved = f["chain_moved"]
    lines.append("")
    if not any(step["comparison"] for step in f["chain"]):
        lines.append("The study holds no comparison along the chain yet.")
    elif moved:
        steps = "; ".join(f"{c['b']} ({c['mean_difference']:+.2f} ± {c['sd']:.2f})" for c in moved)
        lines.append(f"Steps that moved test error beyond 2 sd of the paired differences: {steps}.")
    else:
        lines.append("No step of the chain moved test error beyond 2 sd of the paired differences.")
    return lines


def _baseline(s42: dict[str, Any]) -> list[str]:
    study = s42["study"]
    lines = [f"### Every arm against {study['baseline']}", ""]
    if not s42["findings"]["baseline"]:
        return [*lines, f"The study holds no comparison against {study['baseline']} yet."]
    lines += table_head(["arm (B)", "seeds", "mean difference B − A", "sd", "verdict"])
    for c in s42["findings"]["baseline"]:
        lines.append(f"| {c['b']} | {len(c['seeds'])} | {c['mean_difference']:+.2f} | {c['sd']:.2f} | {c['verdict']} |")
    return lines


def _grid(grid: dict[str, Any] | None) -> str:
    if not grid:
        return "–"
    axes = "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in grid.get("axes", {}).items())
    errors = [p["validation_error"] for p in grid.get("points", []) if p.get("validation_error") is not None]
    spread = f" ({len(errors)} points, validation {min(errors):.2f}–{max(errors):.2f})" if errors else ""
    return axes + spread


def _hyper(study: dict[str, Any]) -> list[str]:
    lines = [
        "### Hyper-parameters chosen on the validation split",
        "",
        *table_head(["arm", "chosen", "grid", "epoch chosen"]),
    ]
    for a in study["arms"]:
        chosen = ", ".join(f"{k} {v}" for k, v in (a.get("hyper") or {}).items()) or "the recipe's"
        lines.append(f"| {a['arm']} | {chosen} | {_grid(a.get('grid'))} | {a.get('chosen_epoch', '–')} |")
    return lines


def _cost(study: dict[str, Any]) -> list[str]:
    lines = ["### Cost", "", *table_head(["arm", "trainings", "seconds"])]
    for a in study["arms"]:
        points = len((a.get("grid") or {}).get("points", [])) or 1
        lines.append(f"| {a['arm']} | {points + len(a['seeds']) - 1} | {a['train_seconds']:.0f} |")
    total = sum(float(a["train_seconds"]) for a in study["arms"])
    lines += ["", f"Training, all arms: {total:.0f} s ({total / 3600:.1f} h), summed over every grid point and seed."]
    return lines


def _study_robustness(s42: dict[str, Any]) -> list[str]:
    """The study's own robustness (its N, each arm's first seed), where this run's live columns are smaller or
    absent: a quick run reads it instead of measuring that much again."""
    study = s42.get("study")
    if study is None:
        return []
    arms = [a for a in study["arms"] if isinstance(a.get("robustness"), dict)]
    rows = s42["rows"] + s42["ablation"] + s42.get("controls", [])
    larger = int(study.get("robustness_n") or 0) > int(s42["n"])
    if not arms or not (larger or not all(r["live"] for r in rows)):
        return []
    ref = study.get("reference") or "–"
    lines = [
        f"### Robustness measured by the study (N = {study.get('robustness_n', '–')}, each arm's first seed)",
        "",
        *table_head(
            ["arm", "images", "min. distortion", "certified (method)", "violations", f"{ref}'s examples", "noise"]
        ),
    ]
    for a in arms:
        r = a["robustness"]
        lines.append(
            f"| {a['arm']} | {r.get('images', '–')} | {number(r.get('distortion'), 4)} | "
            f"{number(r.get('certified'), 5)} ({r.get('certified_method', '–')}) | {r.get('violations', '–')} | "
            f"{number(r.get('transfer'), 1)} | {number(r.get('noise'), 1)} |"
        )
    return [*lines, ""]
