"""Benchmark (run by hand): `blindspot certify` on the zoo, both ends of the minimum distortion (issue 25).

For each model, the first N test images, `--target all`: the attack's time and the certification's time
(attack excluded), the median and mean of upper / lower over the images with both ends, violations (must be
0), and for the linear models the attack's excess over the exact minimum (mean and worst) with the exact
solver's worst duality gap. Each model's run folder is kept under --out.

    .venv/bin/python benchmarks/bench_certify.py [--n 1000] [--models n100-100-10 softmax1 ...] [--threads 2]

`--attack-runs 'runs/attack-{model}'` reads finished attack runs (of the same images) instead of attacking,
and `--methods crown alpha-crown` certifies each model with each method on them (the seconds of the methods
side by side, the attack's as its run recorded them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engines.certify.operation import CertifyRequest, run_certify
from engines.core.context import RunContext

DEFAULT_MODELS = [
    "softmax1",
    "softmax2",
    "softmax3",
    "n100-100-10",
    "n200-200-10",
    "ae400-10",
    "m1",
    "m1-prime",
    "m2",
    "n100-100-10-adv",
    "conv",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--conv-n", type=int, default=100, help="images for the conv model (its attack is slow)")
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--methods", nargs="*", default=["auto"])
    ap.add_argument("--attack-runs", default=None, help="finished attack runs to read, with {model} in the path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-certify"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        n = args.conv_n if model == "conv" else args.n
        attack = None if args.attack_runs is None else args.attack_runs.format(model=model)
        for method in args.methods:
            t0 = time.perf_counter()
            out = args.out / (model if len(args.methods) == 1 else f"{model}-{method}")
            ctx = RunContext(out=out, overwrite=True, threads=args.threads).applied()
            r = run_certify(CertifyRequest(model=model, n=n, method=method, attack_run=attack), ctx)
            wall = time.perf_counter() - t0
            rows.append({"wall": round(wall, 1), **r.to_json()})
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        "| model | N | method | attack s | certify s | median up/low | mean up/low | violations | attack/exact mean | attack/exact max | Lipschitz median up/low |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = {k: ("–" if r[k] is None else f"{r[k]:.4g}") for k in r if isinstance(r[k], (float, type(None)))}
        print(
            f"| {r['model']} | {r['n']} | {r['method']} | {f['attack_seconds']} | {f['seconds']} | {f['median_ratio']} | "
            f"{f['mean_ratio']} | {r['violations']} | {f['attack_over_exact_mean']} | {f['attack_over_exact_max']} | "
            f"{f['median_lipschitz_ratio']} |"
        )


if __name__ == "__main__":
    main()
