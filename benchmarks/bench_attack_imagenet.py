"""Benchmark: the attack on an ImageNet-sized torchvision model, against advertorch 0.2.3's LBFGSAttack and
foolbox's DDN, with model evaluations per image (see bench_attack.py for the counting and the peers' install).

Run by hand (not a test):
    python benchmarks/bench_attack_imagenet.py --model resnet18 --n 8 --size 224 [--weights W.pth] [--data DIR]
    python benchmarks/bench_attack_imagenet.py --model resnet18 --size 64 --n 32 --ddn-steps 1000
    python benchmarks/bench_attack_imagenet.py --model resnet50 --n 256 --device cuda --skip-advertorch
Same model (ImageNet normalization inside it, so both attacks work on pixels in [0, 1]), same images
(a folder through blindspot's loader, or seeded smooth random images when no --data is given), labels =
the model's own predictions (so every image counts as correctly classified), same random targets,
same budget (9 c-steps × 100 iterations); advertorch in targeted mode.
"""

from __future__ import annotations

import argparse

import torch
from bench_attack import CountingModel, advertorch_lbfgs, foolbox_attack, measure, ours

from engines.attack.targets import choose_targets
from engines.core.device import resolve_device, threads_for_shared_cpu
from engines.core.model_data import open_model_data
from engines.core.models import ModelRef, load_model


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Seeded low-frequency colour images in [0, 1] (upsampled noise): photograph-like statistics, no download."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", default=None, help="an image folder (default: seeded smooth random images)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-advertorch", action="store_true")
    ap.add_argument("--ddn-steps", type=int, default=0, help="also run foolbox DDN with this many steps")
    ap.add_argument("--c-steps", type=int, default=9)
    ap.add_argument("--max-iter", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(threads_for_shared_cpu(args.threads or None))  # as the CLI: one per idle core
    device = resolve_device(args.device)
    lm = load_model(ModelRef(args.model, weights=args.weights), device)
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    if args.data:
        x = open_model_data(lm, args.data, "test", args.size).take(0, args.n).images
    else:
        x = smooth_images(args.n, args.size, seed=0)
    with torch.no_grad():
        logits = model(x.to(device)).cpu()
    y = logits.argmax(1)
    classes = int(logits.shape[1])
    t = choose_targets("random", y, classes, seed=1)
    print(
        f"{lm.id} ({lm.source}) at {args.size} px, {len(x)} images, device {device}, threads {torch.get_num_threads()}"
    )
    print("| solver | success | mean distortion | grad evals/img | seconds | s/image |")
    print("|---|---|---|---|---|---|")
    counted = CountingModel(model).eval()
    x = x.to(device)
    solvers = [("blindspot", lambda: ours(c_steps=args.c_steps, max_iter=args.max_iter))]
    if not args.skip_advertorch:
        solvers.append(("advertorch", lambda: advertorch_lbfgs(args.c_steps, args.max_iter)))
    if args.ddn_steps:
        solvers.append((f"foolbox DDN {args.ddn_steps}", lambda: foolbox_attack("ddn", args.ddn_steps)))
    seconds = []
    for name, make in solvers:  # each row as soon as it is measured: a long run shows what it has
        try:
            solver = make()
        except ImportError as exc:
            print(f"(skipped {name}: {exc})", flush=True)
            continue
        r = measure(solver, counted, x, t)
        ok, sec = r["ok"], r["seconds"]
        seconds.append(sec)
        mean = float(r["dist"][ok].mean()) if ok.any() else float("nan")
        print(
            f"| {name} | {100 * ok.float().mean():.1f}% | {mean:.5f} | {r['grad']:.0f} | {sec:.1f} | "
            f"{sec / len(x):.2f} |",
            flush=True,
        )
    if len(seconds) > 1:
        print(f"| speed-up over the next row | | | | {seconds[1] / seconds[0]:.1f}x | |")


if __name__ == "__main__":
    main()
