"""The §4.2 section of reproduce's report.md: adversarial training beside the paper's comparison points,
the interval [certified lower bound, attack distortion] per model, and the ablation read against seed noise."""

from __future__ import annotations

from typing import Any

from engines.report.markdown import number, table_head


def section42_lines(s42: dict[str, Any]) -> list[str]:
    """Markdown lines of the section (a note only, when its models are not trained)."""
    lines = ["## §4.2: adversarial training, and the robustness it buys", ""]
    if not s42.get("rows") and not s42.get("ablation"):
        return lines + [f"Not computed: the §4.2 models are not trained ({', '.join(s42.get('missing', []))}).", ""]
    ref = s42.get("reference") or "–"
    lines += [
        *table_head(
            [
                "model",
                "test error (ours)",
                "paper",
                "min. distortion (attack)",
                "certified lower bound",
                "bound / attack",
                f"{ref}'s examples misclassified",
                "Gaussian noise, same rms",
            ]
        ),
    ]
    for r in s42["rows"]:
        lines.append(
            f"| {r['model']} | {number(r['test_error'])} | {r['paper_text']} | {number(r['distortion'], 4)} | "
            f"{number(r['certified'], 5)} | {number(r['certified_over_attack'], 3)} | {number(r.get('transfer'), 1)} | "
            f"{number(r.get('noise'), 1)} |"
        )
    n = s42["n"]
    lines += [
        "",
        f"Per model, the first {n} correctly classified test images: the true minimum distortion of each lies between "
        "the certified bound (CROWN's radius over the L2 ball ∩ [0, 1] box, or the global margin/(√2·L) where larger; "
        "L: the product of the frame-bound engine's guaranteed layer bounds) and the attack's closest success over all "
        "nine wrong labels; both in rms units "
        f"sqrt(Σr²/784), means over the images. Violations (an attack success inside the bound): "
        f"{sum(int(r['violations']) for r in s42['rows'] + s42['ablation'])}.",
        "",
    ]
    if s42["ablation"]:
        lines += [
            "Ablation: which layers' adversarial examples are used (same budget; seed 1 repeats the all-layers recipe).",
            "",
            *table_head(["model", "layers", "test error", "min. distortion", "certified lower bound"]),
        ]
        for r in s42["ablation"]:
            lines.append(
                f"| {r['model']} | {r['layers']} | {number(r['test_error'])} | {number(r['distortion'], 4)} | "
                f"{number(r['certified'], 5)} |"
            )
        lines += ["", *section42_readings(s42), ""]
    if s42.get("missing"):
        lines += [f"Not trained, left out: {', '.join(s42['missing'])}.", ""]
    return lines


def section42_readings(s42: dict[str, Any]) -> list[str]:
    """Statements computed from the rows: the adversarial model against the paper's figure and its comparison
    points, and whether the ablation's differences exceed the spread between two seeds."""
    rows = {r["model"]: r for r in s42["rows"] + s42["ablation"]}
    out = []
    adv, seed1 = rows.get("n100-100-10-adv"), rows.get("n100-100-10-adv-seed1")
    if adv is not None:
        verdict = "below" if adv["test_error"] < 1.2 else "not below"
        out.append(f"- n100-100-10-adv: test error {adv['test_error']:.2f} %, {verdict} the paper's 1.2 %.")
        for other in ("n100-100-10-decay", "n100-100-10-dropout"):
            if other in rows:
                o = rows[other]
                out.append(
                    f"- Against {other}: test error {adv['test_error'] - o['test_error']:+.2f} points, minimum "
                    f"distortion ×{adv['distortion'] / o['distortion']:.2f}, certified bound "
                    f"×{adv['certified'] / o['certified']:.2f}."
                )
    if adv is not None and seed1 is not None:
        spread = abs(adv["test_error"] - seed1["test_error"])
        out.append(f"- Seed spread of the all-layers recipe: {spread:.2f} points of test error (seeds 0 and 1).")
        variants = [rows[m] for m in ("n100-100-10-adv-input", "n100-100-10-adv-hidden") if m in rows]
        for v in variants:
            gap = v["test_error"] - adv["test_error"]
            real = "more" if abs(gap) > spread else "no more"
            out.append(
                f"- {v['model']} ({v['layers']}): {gap:+.2f} points against all layers, {real} than the seed spread."
            )
    return out
