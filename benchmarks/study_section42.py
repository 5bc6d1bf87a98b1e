"""The §4.2 study (issue 24), run by hand: every arm trained under the protocol over seeds, measured, compared.

Each arm is one `blindspot train` call (a zoo model of `--zoo adversarial`, its grid, sometimes pool options over
its recipe) with `--seeds`; its first seed's model and sidecar (the seed study and the grid) land in OUT/<arm>/.
Then `blindspot robustness` on each arm's first-seed model (attack upper bound, certified lower bound, transfer of
n100-100-10's examples, noise), and the study file: every arm's mean ± sd (test and validation), its grid, its
cost, its robustness, and paired comparisons (against weight decay alone; each pool fix against the step before).

    .venv/bin/python benchmarks/study_section42.py [--out runs/study42] [--seeds 0,1,2,3,4] [--jobs 2]
        [--arms decay,dropout,…] [--stage train|robustness|report|all] [--n 1000] [--code DIR]
    .venv/bin/python benchmarks/study_section42.py --stage ship   # copy the shipped arms into sample_data
    .venv/bin/python benchmarks/study_section42.py --stage extend --extra DIR --arms …   # add later seeds

`--code DIR` runs the trainings from a frozen copy of the project (so that edits made meanwhile cannot reach a
training started later). The whole study: see the README's "§4.2 under the protocol" for its wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from engines.core.io import atomic_write, write_json_atomic  # noqa: E402
from engines.reproduce.section42_markdown import pm  # noqa: E402
from engines.reproduce.section42_study import paired  # noqa: E402
from engines.train.fit import TRAIN_ERROR_ON, FittedModel, evaluate_fitted  # noqa: E402
from engines.train.seeds import seed_study  # noqa: E402

# arm -> (zoo model, extra `blindspot train` options). The chain adv-paper → +nearest → +cap → adv adds one pool fix
# at a time; adv is the fixed pool (its last fix: hidden examples kept as perturbations) with its mix chosen on
# validation (the grid chose the paper's 0.25, so its last step adds the perturbations alone).
ARMS: dict[str, tuple[str, list[str]]] = {
    "decay": ("n100-100-10-decay", ["--grid", "lr=0.003,0.01,0.03,0.1", "--grid", "weight_decay=0.03,0.1,0.3"]),
    "dropout": (
        "n100-100-10-dropout",
        ["--grid", "lr=0.01,0.03", "--grid", "dropout=0.0,0.05,0.1", "--grid", "input_dropout=0.1,0.2"],
    ),
    "adv-paper": ("n100-100-10-adv-paper", []),
    "fix-nearest": ("n100-100-10-adv-paper", ["--adversarial", "--target", "nearest"]),
    "fix-cap": (
        "n100-100-10-adv-paper",
        ["--adversarial", "--target", "nearest", "--adv-cap", "auto", "--adv-cap-policy", "shrink"],
    ),
    "adv": ("n100-100-10-adv", ["--grid", "mix=0.25,0.5,1.0"]),
    "adv-input": ("n100-100-10-adv-input", ["--grid", "mix=0.25"]),  # adv's chosen mix
    "adv-hidden": ("n100-100-10-adv-hidden", ["--grid", "mix=0.25"]),
    "fgm": ("n100-100-10-fgm", ["--grid", "eps=0.005,0.01,0.02,0.05,0.1"]),
    "vat": ("n100-100-10-vat", ["--grid", "eps=0.005,0.01,0.02,0.05,0.1"]),
}
BASELINE = "decay"
CHAIN = ("adv-paper", "fix-nearest", "fix-cap", "adv")
SHIPPED = ("decay", "dropout", "adv", "adv-input", "adv-hidden", "adv-paper", "fgm", "vat")
REFERENCE = "n100-100-10"
RETIRED = ("n100-100-10-adv-seed1",)


def _blindspot(code: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(code)!r}); from blindspot.cli import main; raise SystemExit(main())",
    ]


def train_arm(arm: str, out: Path, seeds: str, code: Path) -> float:
    """One arm's `blindspot train`; its seconds (skipped when its sidecar is already there)."""
    model, extra = ARMS[arm]
    folder = out / arm
    if (folder / f"{model}.json").exists():
        return 0.0
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [*_blindspot(code), "train", "--model", model, "--seeds", seeds, *extra, "--out", str(folder)]
    cmd += ["--threads", "1", "--json", "--overwrite"]
    if "--resume" in (code / "blindspot" / "commands" / "train.py").read_text():  # an interrupted arm goes on
        cmd.append("--resume")
    start = time.perf_counter()
    with open(logs / f"{arm}.json", "w") as stdout, open(logs / f"{arm}.err", "w") as stderr:
        subprocess.run(cmd, stdout=stdout, stderr=stderr, check=True, cwd=code)
    return time.perf_counter() - start


def robustness_arm(arm: str, out: Path, n: int, code: Path) -> None:
    """`blindspot robustness` on the arm's first-seed model, into OUT/<arm>/robustness (skipped when there)."""
    model = ARMS[arm][0]
    folder = out / arm / "robustness"
    if (folder / "robustness.json").exists():
        return
    weights = (out / arm / f"{model}.safetensors").resolve()
    cmd = [*_blindspot(code), "robustness", "--model", str(weights), "--reference", REFERENCE, "--n", str(n)]
    cmd += ["--out", str(folder.resolve()), "--threads", "1", "--json", "--overwrite"]
    with open(out / "logs" / f"{arm}.robustness.err", "w") as stderr:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=stderr, check=True, cwd=code)


def arm_row(arm: str, out: Path) -> dict[str, Any] | None:
    """An arm's figures from its first-seed sidecar (and its robustness, when measured); None if not trained."""
    model, extra = ARMS[arm]
    sidecar = out / arm / f"{model}.json"
    if not sidecar.exists():
        return None
    meta = json.loads(sidecar.read_text())
    grid = meta.get("grid")
    grid_seconds = sum(p["seconds"] for p in grid["points"]) if grid else 0.0
    per_seed = meta["per_seed"]
    seconds = grid_seconds + sum(r["seconds"] for r in per_seed[1:]) + (0.0 if grid else per_seed[0]["seconds"])
    row: dict[str, Any] = {
        "arm": arm,
        "model": model,
        "options": extra,
        "description": meta["description"],
        "seeds": meta["seeds"],
        "per_seed": per_seed,
        "test_error_mean": meta["test_error_mean"],
        "test_error_sd": meta["test_error_sd"],
        "validation_error_mean": meta.get("validation_error_mean"),
        "validation_error_sd": meta.get("validation_error_sd"),
        "hyper": meta.get("hyper", {}),
        "grid": grid,
        "chosen_epoch": meta["validation"]["chosen"]["done"],
        "adversarial": meta["training"].get("adversarial"),
        "train_seconds": round(seconds, 1),
    }
    robustness = out / arm / "robustness" / "robustness.json"
    if robustness.exists():
        rows = json.loads(robustness.read_text())["rows"]
        keep = ("distortion", "certified", "certified_method", "violations", "transfer", "noise", "images")
        row["robustness"] = {k: rows[0][k] for k in keep} | {"n": json.loads(robustness.read_text())["request"]["n"]}
    return row


def comparisons(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences of test error over common seeds (as reproduce computes them): every arm against weight
    decay alone, each pool fix against the step before it in the chain."""
    pairs = [(BASELINE, arm) for arm in rows if arm != BASELINE]
    pairs += [(a, b) for a, b in zip(CHAIN, CHAIN[1:], strict=False)]
    arms = {"arms": list(rows.values())}
    return [c for a, b in pairs if (c := paired(arms, a, b)) is not None]


def study(out: Path, n: int) -> dict[str, Any]:
    rows = {arm: row for arm in ARMS if (row := arm_row(arm, out)) is not None}
    measured = {r["robustness"]["n"] for r in rows.values() if "robustness" in r}
    if len(measured) == 1:  # the robustness columns' own N (the files say it), not this call's --n
        (n,) = measured
    return {
        "what": "§4.2 under the training protocol (issue 24): 784-100-100-10 sigmoid nets, 30 epochs of Adam, "
        "10,000 validation images, test set read once per seed on the best-validation epoch",
        "robustness_n": n,
        "reference": REFERENCE,
        "baseline": BASELINE,
        "chain": list(CHAIN),
        "arms": list(rows.values()),
        "comparisons": comparisons(rows),
    }


def markdown(s: dict[str, Any]) -> str:
    lines = [
        "| arm | model | chosen | validation % | test % | min. distortion | certified | transfer % | noise % | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["arms"]:
        rob = r.get("robustness") or {}
        cells = [
            r["arm"],
            r["model"],
            ", ".join(f"{k} {v}" for k, v in r["hyper"].items()) or "–",
            pm(r["validation_error_mean"], r["validation_error_sd"]),
            pm(r["test_error_mean"], r["test_error_sd"]),
            f"{rob['distortion']:.4f}" if rob else "–",
            f"{rob['certified']:.4f}" if rob else "–",
            f"{rob['transfer']:.1f}" if rob.get("transfer") is not None else "–",
            f"{rob['noise']:.1f}" if rob.get("noise") is not None else "–",
            f"{r['train_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| B vs A | seeds | mean difference (B − A) | sd | verdict |", "|---|---|---|---|---|"]
    for c in s["comparisons"]:
        lines.append(
            f"| {c['b']} vs {c['a']} | {len(c['seeds'])} | {c['mean_difference']:+.2f} | {c['sd']:.2f} | {c['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def ship(out: Path) -> None:
    """Copy the shipped arms' first-seed models and the study into sample_data (the zoo the README quotes). Each
    model's metrics are measured again by this code (train_error on the images trained on, as training now records
    it; the test error is the same model's, unchanged)."""
    models = ROOT / "sample_data" / "models"
    for arm in SHIPPED:
        model = ARMS[arm][0]
        loaded = load_checkpoint(out / arm / f"{model}.safetensors")
        fitted = FittedModel(loaded.model, dict(loaded.meta), None)
        test_error = fitted.meta["metrics"]["test_error"]
        evaluate_fitted(fitted, None, "cpu")
        if fitted.meta["metrics"]["test_error"] != test_error:
            raise SystemExit(f"{arm}: the test error moved ({test_error} -> {fitted.meta['metrics']['test_error']})")
        held_out = fitted.meta.get("validation") or {}
        if held_out.get("size"):  # as training now records it (a sidecar of an earlier tree may lack it)
            fitted.meta["train_error_on"] = TRAIN_ERROR_ON.format(
                split=fitted.meta["train_split"], size=held_out["size"]
            )
        fitted.meta.pop("weights_sha256", None)
        save_checkpoint(fitted.model, fitted.meta, models / f"{model}.safetensors")
    for gone in RETIRED:  # §4.2 models the study replaced (their seed spread is now every arm's seeds)
        for suffix in (".safetensors", ".json"):
            (models / f"{gone}{suffix}").unlink(missing_ok=True)
    (ROOT / "sample_data" / "studies").mkdir(exist_ok=True)
    write_json_atomic(ROOT / "sample_data" / "studies" / "section42.json", json.loads((out / "study.json").read_text()))


def extend(out: Path, extra: Path, arms: list[str]) -> None:
    """Add the seeds an arm was trained with later (`--out EXTRA --seeds 3,4`, the same code and options) to its
    seed study: each seed's training is independent of the others, so the merged study is the one `--seeds` over all
    of them would have written. Refused when the two sidecars' recipes differ."""
    same = ("zoo_id", "spec", "protocol", "weight_decay", "hyper")
    for arm in arms:
        model = ARMS[arm][0]
        first, later = (folder / arm / f"{model}.json" for folder in (out, extra))
        if not later.exists():
            continue
        a, b = json.loads(first.read_text()), json.loads(later.read_text())
        differ = [k for k in same if a.get(k) != b.get(k)]
        settings = [(m["training"].get("adversarial") or {}) for m in (a, b)]
        if differ or {k: v for k, v in settings[0].items() if k != "layers_used"} != {
            k: v for k, v in settings[1].items() if k != "layers_used"
        }:
            raise SystemExit(f"{arm}: the later seeds were trained otherwise ({differ or 'adversarial settings'})")
        seeds = {r["seed"] for r in a["per_seed"]}
        runs = a["per_seed"] + [r for r in b["per_seed"] if r["seed"] not in seeds]
        a |= seed_study(runs)
        write_json_atomic(first, a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study42")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--stage", choices=("train", "robustness", "report", "all", "ship", "extend"), default="all")
    parser.add_argument("--extra", type=Path, help="With --stage extend: the --out of the arms' later seeds.")
    parser.add_argument("--n", type=int, default=1000, help="Images per model for the robustness columns.")
    parser.add_argument("--code", type=Path, default=ROOT, help="The project copy the trainings run from.")
    args = parser.parse_args()
    out, arms = args.out.resolve(), [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm {unknown[0]!r}: choose from {', '.join(ARMS)}")
    if args.stage == "ship":
        ship(out)
        return
    if args.stage == "extend":
        extend(out, args.extra.resolve(), arms)
    start = time.perf_counter()
    if args.stage in ("train", "all"):
        with ThreadPoolExecutor(args.jobs) as pool:
            for arm, seconds in zip(
                arms, pool.map(lambda a: train_arm(a, out, args.seeds, args.code), arms), strict=True
            ):
                print(f"{arm}: trained in {seconds:.0f} s", flush=True)
    if args.stage in ("robustness", "all"):
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda a: robustness_arm(a, out, args.n, args.code), arms))
    if args.stage in ("report", "all", "robustness", "train", "extend"):
        result = study(out, args.n)
        write_json_atomic(out / "study.json", result)
        atomic_write(out / "study.md", lambda p: p.write_text(markdown(result)))
        print(markdown(result))
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
