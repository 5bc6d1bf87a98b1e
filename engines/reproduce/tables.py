"""`reproduce`: Tables 1–5 of Szegedy et al. (2013) recomputed with the shipped zoo, written as a
Markdown report with the paper's number, ours, the difference and a 95 % interval per cell.

Nothing here is tuned to match the paper: where our numbers differ, the report says so.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.core import paper
from engines.attack.problems import AttackConfig
from engines.core.checkpoint import load_checkpoint
from engines.core.data import load_split
from engines.core.events import CancelCheck, EventSink, Step, TableDone, ignore_events, never_cancel
from engines.core.io import write_json_atomic, write_text_atomic
from engines.train.fit import error_rate
from engines.attack.transfer import TransferMatrix, compute_transfer

QUICK_N, FULL_N = 20, 500


@dataclass
class ReproduceResult:
    report: Path
    tables: dict[str, Any]
    seconds: float


def reproduce(
    out: str | Path,
    *,
    quick: bool = False,
    n: int | None = None,
    seed: int = 0,
    config: AttackConfig | None = None,
    device: torch.device | str = "cpu",
    data_dir: str | Path | None = None,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> ReproduceResult:
    """Run Tables 1–5 into `out` and write `out/report.md`; adversarial sets are cached."""
    out = Path(out)
    n = n or (QUICK_N if quick else FULL_N)
    config = config or AttackConfig()
    device = torch.device(device)
    start = time.perf_counter()
    common = dict(seed=seed, config=config, device=device, data_dir=data_dir, on_event=on_event, cancel=cancel)

    def transfer_table(models: list[str], split: str, name: str, noise: list[float], **extra: Any) -> TransferMatrix:
        # noise rows both ways: clipped at the rms (as specified) and unclipped (the paper's likely setting)
        return compute_transfer(models, models, split, n, out / name, noise=noise, unclipped=noise, **extra, **common)

    on_event(Step(task="reproduce", done=0, total=5, message="Table 2: transfer across models (train set)"))
    t2 = transfer_table(paper.TABLE1_MODELS, "train", "table2", [0.1, 0.3])
    on_event(Step(task="reproduce", done=1, total=5, message="Table 1: errors and minimum distortion"))
    t1 = table1(t2, device, data_dir)
    on_event(Step(task="reproduce", done=2, total=5, message="Table 3: errors on P1, P2 and test"))
    t3 = table3(device, data_dir)
    on_event(Step(task="reproduce", done=3, total=5, message="Table 4: transfer across training sets (test set)"))
    t4 = transfer_table(paper.TABLE3_MODELS, "test", "table4", [0.06, 0.1], amplify_rms=0.1)
    on_event(Step(task="reproduce", done=4, total=5, message="Table 5: frame bounds of AlexNet"))
    t5 = table5(device)
    on_event(Step(task="reproduce", done=5, total=5, message="report"))
    figures = _collect_figures(out, t2, t4)
    seconds = time.perf_counter() - start
    tables = {
        "table1": t1,
        "table2": matrix_vs_paper(t2, paper.TABLE2, _table2_key),
        "table3": t3,
        "table4": matrix_vs_paper(t4, paper.TABLE4, _table4_key),
        "table5": t5,
    }
    settings = {
        "n": n,
        "quick": quick,
        "seed": seed,
        "attack": config.as_dict(),
        "device": str(device),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    write_json_atomic(out / "tables.json", {"settings": settings, **tables})
    report = write_text_atomic(out / "report.md", render_report(tables, settings, figures))
    return ReproduceResult(report, tables, seconds)


def table1(t2: TransferMatrix, device: torch.device, data_dir: str | Path | None) -> list[dict[str, Any]]:
    rows = []
    train, test = load_split("train", data_dir), load_split("test", data_dir)
    for i, mid in enumerate(paper.TABLE1_MODELS):
        model = load_checkpoint(mid, device).model
        p_train, p_test, p_dist = paper.TABLE1[mid]
        rows.append(
            {
                "model": mid,
                "train_error": error_rate(model, train, device),
                "paper_train_error": p_train,
                "test_error": error_rate(model, test, device),
                "paper_test_error": p_test,
                "distortion": t2.rows[i].distortion,
                "paper_distortion": p_dist,
                "success_rate": 100.0 * t2.settings["sources"][mid]["summary"]["success_rate"],
                "trivial": t2.settings["sources"][mid]["summary"].get("n_trivial", 0),
            }
        )
    return rows


def table3(device: torch.device, data_dir: str | Path | None) -> list[dict[str, Any]]:
    splits = {s: load_split(s, data_dir) for s in ("p1", "p2", "test")}
    rows = []
    for mid in paper.TABLE3_MODELS:
        model = load_checkpoint(mid, device).model
        p1, p2, pt, _ = paper.TABLE3[mid]
        ours = {s: error_rate(model, d, device) for s, d in splits.items()}
        rows.append(
            {
                "model": mid,
                "p1_error": ours["p1"],
                "paper_p1_error": p1,
                "p2_error": ours["p2"],
                "paper_p2_error": p2,
                "test_error": ours["test"],
                "paper_test_error": pt,
            }
        )
    return rows


def table5(device: torch.device) -> dict[str, Any]:
    """Frame bounds of torchvision's AlexNet (random init, seed 0) beside the paper's trained network."""
    from engines.bounds.network import ALEXNET_NOTE, PAPER_TABLE5, frame_bounds
    from engines.bounds.models import load_bounds_model

    bm = load_bounds_model("alexnet")
    result = frame_bounds(bm.model, bm.input_shape, device=device, dtype=torch.float32, power_iters=3)
    rows = []
    for layer, ref in zip(result.layers, PAPER_TABLE5, strict=False):
        rows.append(
            {
                "layer": layer.label,
                "size": layer.size,
                "lower": layer.lower,
                "upper": layer.upper,
                "method": layer.short_method,
                "paper_size": ref["size"],
                "paper_lower": ref["lower"],
                "paper_upper": ref["upper"],
            }
        )
    return {"rows": rows, "product": result.product_table, "note": ALEXNET_NOTE, "seconds": result.seconds}


UNCLIPPED = " unclipped"


def _noise_key(row: Any) -> str:
    return f"noise {row.stddev:g}" + ("" if getattr(row, "clipped", True) else UNCLIPPED)


def _table2_key(row: Any) -> str:
    return row.source if row.kind == "adversarial" else _noise_key(row)


def _table4_key(row: Any) -> str:
    if row.kind == "adversarial":
        return row.source
    if row.kind == "amplified":
        return f"{row.source} amplified {row.stddev:g}"
    return _noise_key(row)


def matrix_vs_paper(m: TransferMatrix, table: dict[str, list[float]], key: Any) -> list[dict[str, Any]]:
    """Each row of our matrix beside the paper's row: values, paper values, intervals, distortion."""
    out = []
    for i, row in enumerate(m.rows):
        k = key(row)
        out.append(
            {
                "row": k,
                "kind": row.kind,
                "n": row.n,
                "distortion": row.distortion,
                "columns": m.columns,
                "ours": [float(v) for v in m.values[i]],
                "paper": table.get(k.removesuffix(UNCLIPPED)),
                "interval": [[float(a), float(b)] for a, b in m.intervals[i]],
                "folder": str(m.folder),
            }
        )
    return out


def _collect_figures(out: Path, t2: TransferMatrix, t4: TransferMatrix) -> dict[str, str]:
    """Heatmaps and Fig. 7-style example grids, copied next to the report."""
    figures = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, m in (("table2", t2), ("table4", t4)):
        src = Path(m.folder or out) / "heatmap.png"
        if src.is_file():
            shutil.copyfile(src, out / "figures" / f"{name}-heatmap.png")
            figures[f"{name}-heatmap"] = f"figures/{name}-heatmap.png"
    for src_id in ("softmax1", "n200-200-10", "m1"):
        for m in (t2, t4):
            info = m.settings.get("sources", {}).get(src_id)
            if info and (Path(info["cache"]) / "figure.png").is_file():
                shutil.copyfile(Path(info["cache"]) / "figure.png", out / "figures" / f"examples-{src_id}.png")
                figures[f"examples-{src_id}"] = f"figures/examples-{src_id}.png"
    return figures


def _num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _diff(ours: float, theirs: float | None, digits: int = 2) -> str:
    return "–" if theirs is None else f"{ours - theirs:+.{digits}f}"


def render_report(tables: dict[str, Any], settings: dict[str, Any], figures: dict[str, str]) -> str:
    n = settings["n"]
    lines = [
        "# blindspot reproduce: Szegedy et al. (2013), Tables 1–5",
        "",
        f"N = {n} images per adversarial set ({'quick smoke run: intervals are wide' if settings['quick'] else 'full run'}); "
        f"attack: box-constrained L-BFGS, every wrong label (`--target all`), {settings['attack']['c_steps']} c-steps × "
        f"{settings['attack']['max_iter']} iterations, distance {settings['attack']['distance']}; seed {settings['seed']}; "
        f"device {settings['device']}; {settings['seconds']:.0f} s.",
        "",
        "Cells read `ours / paper (difference)`; errors in %, distortion = sqrt(Σ(x′−x)²/784). 95 % Wilson intervals "
        "for each transfer cell are in `tables.json` and below each table as ± half-widths. Nothing is tuned to match "
        "the paper.",
        "",
        "## Table 1: errors and average minimum distortion",
        "",
        "| model | train error | test error | av. min. distortion | attack success |",
        "|---|---|---|---|---|",
    ]
    for r in tables["table1"]:
        lines.append(
            f"| {r['model']} | {_num(r['train_error'])} / {_num(r['paper_train_error'])} "
            f"({_diff(r['train_error'], r['paper_train_error'])}) | {_num(r['test_error'])} / "
            f"{_num(r['paper_test_error'])} ({_diff(r['test_error'], r['paper_test_error'])}) | "
            f"{_num(r['distortion'], 3)} / {_num(r['paper_distortion'], 3)} "
            f"({_diff(r['distortion'], r['paper_distortion'], 3)}) | {_num(r['success_rate'], 1)} |"
        )
    trivial = ", ".join(f"{r['model']} {r['trivial']}" for r in tables["table1"] if r.get("trivial"))
    lines += [
        "",
        f"Distortion measured on the first {n} training images, as the paper's Table 1 (training set); success and "
        "distortion over the images each model classifies correctly"
        + (f" (misclassified, left out: {trivial})." if trivial else "."),
        "",
    ]
    lines += _matrix_section("Table 2: cross-model generalization (training set)", tables["table2"], "table2", figures)
    lines += [
        "## Table 3: models trained on disjoint halves P1 and P2",
        "",
        "| model | error on P1 | error on P2 | error on test |",
        "|---|---|---|---|",
    ]
    for r in tables["table3"]:
        cells = [
            f"{_num(r[k])} / {_num(r['paper_' + k])} ({_diff(r[k], r['paper_' + k])})"
            for k in ("p1_error", "p2_error", "test_error")
        ]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += _matrix_section(
        "Table 4: cross-training-set generalization (test set)", tables["table4"], "table4", figures
    )
    lines += _table5_section(tables["table5"])
    lines += ["## Figures", ""]
    for name, path in figures.items():
        if name.startswith("examples-"):
            lines += [
                f"Fig. 5/7 layout for {name[9:]} (original | difference ×10 | adversarial | Gaussian noise of "
                f"the same rms):",
                "",
                f"![{name}]({path})",
                "",
            ]
    lines += ["## What differs from the paper, and why", ""] + _differences(tables) + [""]
    return "\n".join(lines) + "\n"


def _table5_section(t5: dict[str, Any]) -> list[str]:
    lines = [
        "## Table 5: frame bounds per layer (AlexNet)",
        "",
        f"{t5['note']}.",
        "",
        "| layer | size (ours / paper) | lower bound (ours / paper) | upper bound (ours / paper) | method |",
        "|---|---|---|---|---|",
    ]
    for r in t5["rows"]:
        lines.append(
            f"| {r['layer']} | {r['size']} / {r['paper_size']} | {r['lower']:.3g} / {r['paper_lower']:.3g} | "
            f"{r['upper']:.3g} / {r['paper_upper']:.3g} | {r['method']} |"
        )
    lines += ["", f"Product of the upper bounds (the paper's factors): {t5['product']:.3g}.", ""]
    return lines


def _matrix_section(title: str, rows: list[dict[str, Any]], name: str, figures: dict[str, str]) -> list[str]:
    cols = rows[0]["columns"]
    lines = [f"## {title}", "", "| set | " + " | ".join(cols) + " | distortion |", "|---|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = []
        for j, v in enumerate(r["ours"]):
            p = r["paper"][j] if r["paper"] else None
            cells.append(f"{v:.1f} / {_num(p, 1)} ({_diff(v, p, 1)})")
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {_num(r['distortion'], 3)} |")
    half = max((b - a) / 2 for r in rows for a, b in r["interval"])
    lines += [
        "",
        f"n = {rows[0]['n']} per row; the widest 95 % interval is ±{half:.1f} points. "
        f"Run folder: `{rows[0]['folder']}`.",
        "",
    ]
    if f"{name}-heatmap" in figures:
        lines += [f"![{name}]({figures[name + '-heatmap']})", ""]
    return lines


def _differences(tables: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers, not written in advance."""
    out = []
    t1 = tables["table1"]
    smaller = [r["model"] for r in t1 if r["distortion"] < r["paper_distortion"]]
    if smaller:
        out.append(
            f"- Our minimum distortions are smaller than the paper's for {', '.join(smaller)}: each image gets "
            "its own c search and its own L-BFGS-B state, and the closest success seen at any evaluation is kept "
            "(the paper's own solver settings are not stated)."
        )
    for tname in ("table2", "table4"):
        outside = []
        for r in tables[tname]:
            if not r["paper"]:
                continue
            for j in range(len(r["ours"])):
                lo, hi = r["interval"][j]
                if not lo <= r["paper"][j] <= hi:
                    outside.append(f"{r['row']}→{r['columns'][j]}")
        total = sum(len(r["ours"]) for r in tables[tname] if r["paper"])
        out.append(
            f"- {tname}: {len(outside)} of {total} cells differ from the paper by more than our 95 % interval"
            + (f" ({', '.join(outside[:12])}{', …' if len(outside) > 12 else ''})." if outside else ".")
        )
    gaps = [r["model"] for r in t1 if abs(r["test_error"] - r["paper_test_error"]) > 0.5]
    if gaps:
        out.append(
            f"- Test errors more than 0.5 points from the paper's: {', '.join(gaps)}; see the README's model "
            "table for the reason (the paper's normalisation of the weight decay is not fully stated)."
        )
    out.append(
        "- Noise rows use Gaussian noise clipped to [0, 1] and scaled per image so that the clipped rms equals "
        "the stated stddev; amplified rows scale x′ − x to rms 0.1 (the paper's stated intent, not its formula)."
    )
    out += noise_readings(tables)
    return out


def noise_readings(tables: dict[str, Any]) -> list[str]:
    """Which reading of the paper's noise rows (clipped images or raw x + N(0, σ²)) its numbers fit."""
    gaps: dict[bool, list[float]] = {True: [], False: []}
    for tname in ("table2", "table4"):
        for r in tables[tname]:
            if r["kind"] == "noise" and r["paper"]:
                clipped = not r["row"].endswith(UNCLIPPED)
                gaps[clipped] += [abs(a - b) for a, b in zip(r["ours"], r["paper"], strict=True)]
    if not gaps[True] or not gaps[False]:
        return []
    clipped, raw = float(np.mean(gaps[True])), float(np.mean(gaps[False]))
    closer = "unclipped noise (x + N(0, σ²) left outside [0, 1])" if raw < clipped else "clipped noise"
    return [
        f"- Noise rows, mean distance from the paper's values: {clipped:.1f} points for clipped noise at the stated "
        f"rms, {raw:.1f} points for unclipped noise of the stated stddev; the paper's numbers fit {closer} better. "
        "Clipping cuts away the negative half of the noise on the black background, so the clipped noise that "
        "keeps the stated rms is larger and biased towards brighter pixels, and hurts the models far more."
    ]
