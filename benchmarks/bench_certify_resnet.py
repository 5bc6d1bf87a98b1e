"""Benchmark (run by hand): `blindspot certify` on a small residual network (torchvision BasicBlocks).

Trains `small_resnet` (a strided stem, a BasicBlock, a strided BasicBlock with a conv + batch-norm shortcut,
a linear head; about 5k parameters) on MNIST's training set for --epochs, saves it under --out, then
certifies the first N test images with each method on one attack run (`--model-factory` + `--weights`, as a
user's own model), and prints the table.

    .venv/bin/python benchmarks/bench_certify_resnet.py [--n 100] [--epochs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engines.certify.operation import CertifyRequest, run_certify
from engines.core.context import RunContext
from engines.core.data import load_split
from engines.core.models import ModelRef

FACTORY = "benchmarks.bench_certify_resnet:small_resnet"


def small_resnet() -> nn.Module:
    """1×28×28 → 4×14×14 → BasicBlock → BasicBlock(stride 2, 1×1 conv + BN shortcut) 8×7×7 → 10 logits."""
    from torchvision.models.resnet import BasicBlock

    down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        BasicBlock(4, 4),
        BasicBlock(4, 8, stride=2, downsample=down),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 10),
    )


def train(epochs: int, seed: int = 0) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = small_resnet()
    data, test = load_split("train"), load_split("test")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.labels))
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(data.images[idx]), data.labels[idx].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        wrong = sum(
            int((model(test.images[i : i + 1000]).argmax(1) != test.labels[i : i + 1000]).sum())
            for i in range(0, 10000, 1000)
        )
    return model, wrong / 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", nargs="*", default=["crown", "alpha-crown"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-certify-resnet"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, error = train(args.epochs)
    weights = args.out / "small_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    print(f"trained in {time.perf_counter() - t0:.0f} s, test error {error:.2f} %", flush=True)
    ref = ModelRef(factory=FACTORY, weights=str(weights))
    attack = None
    for method in args.methods:
        ctx = RunContext(out=args.out / method, overwrite=True, threads=args.threads).applied()
        r = run_certify(CertifyRequest(model=ref, n=args.n, method=method, attack_run=attack), ctx)
        attack = attack or r.attack_run
        print(json.dumps(r.to_json()), flush=True)
        print(
            f"| small ResNet ({error:.2f} % error) | {r.n} | {method} | {r.attack_seconds:.1f} | {r.seconds:.1f} | "
            f"{r.median_ratio:.3g} | {r.mean_ratio:.3g} | {r.violations} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
