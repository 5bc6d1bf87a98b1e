"""Benchmark: blindspot's batched L-BFGS-B attack against advertorch 0.2.3's LBFGSAttack.

Run by hand (not a test):  python benchmarks/bench_attack.py --n 100 1000 [--scaling] [--device cpu]
advertorch is not a dependency: `pip install --no-deps advertorch==0.2.3` into the venv first.
Same model (n100-100-10), same first N correctly classified test images, same random targets,
same budget (9 c-steps × 100 iterations); advertorch in targeted mode.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from engines.attack.problems import AttackConfig, attack_problems, paper_distortion
from engines.attack.targets import choose_targets
from engines.core.checkpoint import load_checkpoint
from engines.core.data import load_split
from engines.core.device import resolve_device


def _advertorch():
    import torch.autograd.gradcheck  # noqa: F401  (advertorch imports a helper removed from torch)

    gc = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(gc, "zero_gradients"):

        def zero_gradients(x: torch.Tensor) -> None:
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad.detach_()
                x.grad.zero_()

        gc.zero_gradients = zero_gradients
    from advertorch.attacks import LBFGSAttack

    return LBFGSAttack


def correctly_classified(model: torch.nn.Module, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split("test")
    with torch.no_grad():
        ok = model(data.images.to(device)).argmax(1).cpu() == data.labels
    idx = ok.nonzero().squeeze(1)[:n]
    return data.images[idx], data.labels[idx]


def run_ours(model, x, t, device, c_steps: int = 9, max_iter: int = 100):
    start = time.perf_counter()
    res = attack_problems(model, x.to(device), t.to(device), AttackConfig(c_steps=c_steps, max_iter=max_iter))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ok = res.success.cpu()
    x_adv = res.x_adv.cpu()
    return seconds, ok, paper_distortion(x, x_adv)


def run_advertorch(
    model, x, t, device, flush: bool = False, num_classes: int = 10, c_steps: int = 9, max_iter: int = 100
):
    torch.set_flush_denormal(flush)
    attack = _advertorch()(
        model,
        num_classes=num_classes,
        batch_size=len(x),
        binary_search_steps=c_steps,
        max_iterations=max_iter,
        targeted=True,
    )
    start = time.perf_counter()
    x_adv = attack.perturb(x.to(device), t.to(device)).cpu()
    seconds = time.perf_counter() - start
    torch.set_flush_denormal(False)
    with torch.no_grad():
        ok = model(x_adv.to(device)).argmax(1).cpu() == t
    return seconds, ok, paper_distortion(x, x_adv)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--scaling", action="store_true", help="time ours against batch size")
    ap.add_argument("--skip-advertorch", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_checkpoint("n100-100-10", device).model
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print("| N | solver | success | mean distortion | seconds |")
    print("|---|---|---|---|---|")
    for n in args.n:
        x, y = correctly_classified(model, n, device)
        t = choose_targets("random", y, 10, seed=1)
        rows = [("blindspot", run_ours(model, x, t, device))]
        if not args.skip_advertorch:
            rows.append(("advertorch", run_advertorch(model, x, t, device)))
            rows.append(("advertorch, denormals flushed", run_advertorch(model, x, t, device, flush=True)))
        for name, (sec, ok, dist) in rows:
            print(f"| {n} | {name} | {100 * ok.float().mean():.1f}% | {dist[ok].mean():.4f} | {sec:.1f} |")
        for name, (sec, _, _) in rows[1:]:
            print(f"| {n} | speed-up over {name} | | | {sec / rows[0][1][0]:.1f}x |")
    if args.scaling:
        print("\n| batch | seconds | ms per image |\n|---|---|---|")
        for b in (1, 10, 100, 1000, 10000):
            x, y = correctly_classified(model, b, device)
            sec, _, _ = run_ours(model, x, choose_targets("random", y, 10, seed=1), device)
            print(f"| {len(x)} | {sec:.1f} | {1000 * sec / len(x):.1f} |")


if __name__ == "__main__":
    main()
