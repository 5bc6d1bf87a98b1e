"""Benchmark: quality per model evaluation of blindspot's §4.1 attack beside foolbox's DDN and FMN and
advertorch's L-BFGS, in one run, on the same images and targets.

Run by hand (not a test):
    python benchmarks/bench_attack.py --model conv --n 100 1000 [--curve] [--device cpu] [--skip fmn,advertorch]

Peers are not dependencies; install them into the venv first:
    pip install --no-deps foolbox==3.3.4 eagerpy advertorch==0.2.3 && pip install gitpython requests
(advertorch 0.2.3 needs `torch.autograd.gradcheck.zero_gradients`, restored below). A peer that cannot be
imported is skipped with a line.

Every solver sees the same model wrapped in a counter: `grad evals/img` counts the image rows that went
through a forward+backward pass, `fwd/img` the forward-only ones (ours includes the padding rows of
`padded_forward`: what the CPU really computed). Every example is re-checked here: inside [0, 1] and
classified as its target (argmax); a failed or invalid example counts as a failure. `within 1 %` is the share
of images where the solver's distortion is at most 1.01 × the smallest any solver found for that image.
All solvers run with denormals flushed (`cpu_speed_settings`), as ours does.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from engines.attack.search import AttackConfig, attack_problems, paper_distortion
from engines.attack.targets import choose_targets
from engines.core.checkpoint import load_checkpoint
from engines.core.data import load_split
from engines.core.device import cpu_speed_settings, resolve_device, threads_for_shared_cpu


class CountingModel(nn.Module):
    """The model, counting the rows it is asked to evaluate (with and without a gradient)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_rows = 0
        self.forward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_rows += x.shape[0]
        else:
            self.forward_rows += x.shape[0]
        return self.model(x)

    def reset(self) -> None:
        self.grad_rows = self.forward_rows = 0


Solver = Callable[[CountingModel, torch.Tensor, torch.Tensor], torch.Tensor]  # -> x_adv


def ours(budget: int | None = None, **config) -> Solver:
    def run(model: CountingModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return attack_problems(model, x, t, AttackConfig(budget=budget, **config)).x_adv

    return run


def foolbox_attack(name: str, steps: int) -> Solver:
    import foolbox as fb

    def run(model: CountingModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
        attack = fb.attacks.DDNAttack(steps=steps) if name == "ddn" else fb.attacks.L2FMNAttack(steps=steps)
        _, clipped, _ = attack(fmodel, x, fb.criteria.TargetedMisclassification(t), epsilons=None)
        return clipped

    return run


def advertorch_lbfgs(c_steps: int = 9, max_iter: int = 100) -> Solver:
    import torch.autograd.gradcheck  # noqa: F401  (advertorch imports a helper removed from torch)

    gc = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(gc, "zero_gradients"):

        def zero_gradients(x: torch.Tensor) -> None:
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad.detach_()
                x.grad.zero_()

        gc.zero_gradients = zero_gradients
    from advertorch.attacks import LBFGSAttack

    def run(model: CountingModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        classes = int(model(x[:1]).shape[1])
        attack = LBFGSAttack(
            model,
            num_classes=classes,
            batch_size=len(x),
            binary_search_steps=c_steps,
            max_iterations=max_iter,
            targeted=True,
        )
        return attack.perturb(x, t)

    return run


def correctly_classified(model: nn.Module, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split("test")
    with torch.no_grad():
        ok = model(data.images.to(device)).argmax(1).cpu() == data.labels
    idx = ok.nonzero().squeeze(1)[:n]
    return data.images[idx].to(device), data.labels[idx]


def measure(solver: Solver, model: CountingModel, x: torch.Tensor, t: torch.Tensor) -> dict:
    model.reset()
    start = time.perf_counter()
    with cpu_speed_settings():
        x_adv = solver(model, x, t.to(x.device)).detach()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    grad_rows, forward_rows = model.grad_rows, model.forward_rows
    with torch.no_grad():
        hit = model.model(x_adv).argmax(1).cpu() == t
    inside = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(1).cpu()
    ok = hit & inside
    dist = paper_distortion(x.cpu(), x_adv.cpu())
    return {
        "seconds": seconds,
        "ok": ok,
        "dist": torch.where(ok, dist, torch.full_like(dist, float("inf"))),
        "grad": grad_rows / len(x),
        "fwd": forward_rows / len(x),
    }


def solvers(skip: set[str], ddn_steps: int, variants: list[str]) -> list[tuple[str, Callable[[], Solver]]]:
    out: list[tuple[str, Callable[[], Solver]]] = [("blindspot L-BFGS-B", ours)]
    for text in variants:  # "temperature=0.3,ftol=1e-5": our attack with other settings, beside the default
        settings = {
            k: float(v) if "." in v or "e" in v else int(v) for k, v in (kv.split("=") for kv in text.split(","))
        }
        out.append((f"blindspot {text}", lambda s=settings: ours(**s)))
    if "ddn" not in skip:
        out.append((f"foolbox DDN {ddn_steps}", lambda: foolbox_attack("ddn", ddn_steps)))
    if "fmn" not in skip:
        out.append((f"foolbox FMN {ddn_steps}", lambda: foolbox_attack("fmn", ddn_steps)))
    if "advertorch" not in skip:
        out.append(("advertorch L-BFGS 9×100", advertorch_lbfgs))
    return out


def table(model: CountingModel, x: torch.Tensor, t: torch.Tensor, entries: list[tuple[str, Callable[[], Solver]]]):
    rows = []
    for name, make in entries:
        try:
            solver = make()
        except ImportError as exc:
            print(f"(skipped {name}: {exc})", flush=True)
            continue
        rows.append((name, measure(solver, model, x, t)))
        r = rows[-1][1]
        print(f"  measured {name}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    best = torch.stack([r["dist"] for _, r in rows]).amin(0)
    print("| solver | success | mean distortion | within 1 % of best | grad evals/img | fwd/img | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        ok = r["ok"]
        mean = float(r["dist"][ok].mean()) if ok.any() else float("nan")
        near = float((r["dist"] <= 1.01 * best).float().mean())
        print(
            f"| {name} | {100 * ok.float().mean():.1f} % | {mean:.4f} | {100 * near:.0f} % | "
            f"{r['grad']:.0f} | {r['fwd']:.0f} | {r['seconds']:.1f} |",
            flush=True,
        )
    return rows


def curve(model: CountingModel, x: torch.Tensor, t: torch.Tensor, skip: set[str]) -> None:
    """Mean distortion against evaluations per image (AttackBench's view): ours under --budget, DDN by steps.
    An image without a success at a budget counts at the distortion of the largest budget's worst image."""
    points = [(f"blindspot budget {b}", lambda b=b: ours(budget=b)) for b in (25, 50, 100, 200, 400)]
    if "ddn" not in skip:
        points += [(f"foolbox DDN {s}", lambda s=s: foolbox_attack("ddn", s)) for s in (50, 100, 200, 500, 1000)]
    print("\n| solver | grad evals/img | success | mean distortion (successes) | seconds |\n|---|---|---|---|---|")
    for name, make in points:
        try:
            r = measure(make(), model, x, t)
        except ImportError as exc:
            print(f"(skipped {name}: {exc})")
            continue
        ok = r["ok"]
        mean = float(r["dist"][ok].mean()) if ok.any() else float("nan")
        print(f"| {name} | {r['grad']:.0f} | {100 * ok.float().mean():.1f} % | {mean:.4f} | {r['seconds']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", nargs="+", default=["n100-100-10", "conv"])
    ap.add_argument("--n", type=int, nargs="+", default=[100])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ddn-steps", type=int, default=1000)
    ap.add_argument("--skip", default="", help="comma-separated: ddn, fmn, advertorch")
    ap.add_argument("--curve", action="store_true", help="distortion against the evaluation budget")
    ap.add_argument("--variant", action="append", default=[], help="our attack with other settings: k=v,k=v")
    args = ap.parse_args()
    torch.set_num_threads(threads_for_shared_cpu(args.threads or None))  # as the CLI: one per idle core
    skip = {s for s in args.skip.split(",") if s}
    device = resolve_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    for model_id in args.model:
        net = load_checkpoint(model_id, device).model.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        model = CountingModel(net).eval()
        for n in args.n:
            x, y = correctly_classified(net, n, device)
            classes = int(net(x[:1]).shape[1])
            t = choose_targets("random", y, classes, seed=1)
            print(f"\n### {model_id}, {len(x)} correctly classified test images, random targets (seed 1)\n")
            table(model, x, t, solvers(skip, args.ddn_steps, args.variant))
            if args.curve:
                curve(model, x, t, skip)


if __name__ == "__main__":
    main()
