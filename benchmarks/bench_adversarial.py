"""Benchmark (run by hand): §4.2's adversarial training, wall time and the pool refresh's share of it.

Trains n100-100-10 with the adversarial pool for a few epochs at several refresh fractions (the number of
examples the batched L-BFGS attack regenerates per epoch) and prints, per setting, the wall time per epoch
and the share the refreshes take, so that the cost of a full training can be read off for any budget.

    .venv/bin/python benchmarks/bench_adversarial.py [--epochs 4] [--threads 2] [--refresh 0.1 0.2 0.4]
        [--layers input,act1,act2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from engines.core.data import load_split
from engines.core.device import cpu_speed_settings
from engines.core.zoo import build_model, zoo_entry
from engines.train.adversarial import train_adversarial
from engines.train.adversarial_pool import AdversarialSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="At least 3: warm-up, fill, then refreshes.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refresh", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--layers", default="input,act1,act2")
    parser.add_argument("--pool-size", type=int, default=12000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entry = zoo_entry("n100-100-10-adv")
    data = load_split("train")
    x, y = data.images.to(args.device), data.labels.to(args.device)
    print(
        f"n100-100-10, pool {args.pool_size}, layers {args.layers}, {args.epochs} epochs (1 warm-up), "
        f"{args.threads} threads, {args.device}"
    )
    print("| refresh | examples attacked per epoch | s per epoch | refresh share |")
    print("|---|---|---|---|")
    for fraction in args.refresh:
        torch.manual_seed(0)
        model = build_model(entry.spec).to(args.device)
        settings = AdversarialSettings(
            pool_size=args.pool_size, refresh=fraction, warmup=1, layers=tuple(args.layers.split(","))
        )
        stamps: list[float] = []
        with cpu_speed_settings():
            start = time.perf_counter()
            info = train_adversarial(
                model,
                x,
                y,
                entry.decay,
                settings,
                epochs=args.epochs,
                batch_size=128,
                lr=3e-3,
                seed=0,
                on_event=lambda e, s=stamps: s.append(time.perf_counter()),
                cancel=lambda: False,
                task="bench",
            )
        # epoch e's wall time runs from the previous event to its own; the first refresh (epoch 1) fills the whole
        # pool, so the steady state is epochs 2 and later, each starting with its refresh
        walls = [b - a for a, b in zip([start, *stamps], stamps, strict=False)]
        refresh = {r["epoch"]: r for r in info["refreshes"]}
        steady = [e for e in range(2, args.epochs) if e in refresh]
        per_epoch = sum(walls[e] for e in steady) / len(steady)
        share = sum(refresh[e]["seconds"] for e in steady) / sum(walls[e] for e in steady)
        attacked = sum(v["attacked"] for v in refresh[steady[0]]["layers"].values())
        print(f"| {fraction:g} | {attacked} | {per_epoch:.1f} | {100 * share:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
