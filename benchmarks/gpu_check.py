"""The GPU check behind `benchmarks/gpu_check.sh`: how fast is the attack on a GPU, against this machine's CPU
and against a peer (foolbox's DDN), on a bare GPU machine (no install step: the repository on PYTHONPATH).

    python3 benchmarks/gpu_check.py part1|part2|all --out DIR [--work DIR] [--device cuda|cpu] [--tiny]

part1: the GPU-marked tests; n200-200-10 on 10,000 test images with --target all (seconds, chosen batch, peak
memory); the same on 300 images on the CPU and on the GPU (a like-for-like ratio).
part2: the conv zoo model on 512 images on the GPU with TF32 off and on, and on the CPU (the first 128 of them:
the CPU would take minutes for all); ResNet-50 at 224 px on 64 images at a small budget (seconds per model
evaluation, extrapolated to 256 images at 9 × 100); foolbox's DDN on the same images when foolbox imports.
Each part fits in 5 minutes on one H100/H200: every step has a timeout and the part a deadline. `--device cpu
--tiny` runs every row on the CPU at toy sizes (CI runs it, so that the script cannot rot).
Writes DIR/PART.md (the table) and DIR/PART.json (the figures); scratch runs go to --work (default DIR/work).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PART_SECONDS = 290.0  # each part must end within 5 minutes, start-up included


@dataclass(frozen=True)
class Sizes:
    big_n: int = 10000  # n200-200-10, --target all
    like_n: int = 300  # the same on CPU and GPU
    conv_n: int = 512
    conv_cpu_n: int = 128
    resnet: str = "resnet50"
    resnet_size: int = 224
    resnet_n: int = 64
    resnet_budget: tuple[int, int] = (1, 5)  # c-steps × iterations actually run
    resnet_goal: tuple[int, int, int] = (256, 9, 100)  # images × c-steps × iterations extrapolated to
    budget: tuple[str, ...] = ()  # the attack's budget options (the default: the paper's 9 × 100)


TINY = Sizes(
    big_n=12,
    like_n=6,
    conv_n=2,
    conv_cpu_n=1,
    resnet="resnet18",
    resnet_size=32,
    resnet_n=2,
    resnet_budget=(1, 2),
    budget=("--c-steps", "2", "--max-iter", "10"),
)


class Check:
    """One part's rows, figures and deadline; every command runs with PYTHONPATH set and a bounded time."""

    def __init__(self, part: str, out: Path, work: Path, device: str, sizes: Sizes, tiny: bool) -> None:
        self.part, self.out, self.work, self.device, self.sizes, self.tiny = part, out, work, device, sizes, tiny
        self.rows: list[tuple[str, str, str, str]] = []
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []
        self.deadline = time.monotonic() + PART_SECONDS
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.env["BLINDSPOT_CACHE"] = str(work / "cache")
        self.env.setdefault("PYTHONUNBUFFERED", "1")

    def left(self, wanted: float) -> float:
        return max(1.0, min(wanted, self.deadline - time.monotonic()))

    def run(self, args: list[str], wanted: float, log: str) -> tuple[int | None, str, float]:
        """(exit code or None on timeout, stdout, seconds) of `python -m ARGS`; stderr goes to the work log."""
        limit = self.left(wanted)
        start = time.perf_counter()
        with open(self.work / f"{log}.err", "w") as err:
            try:
                proc = subprocess.run(
                    [sys.executable, *args], cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=err,
                    text=True, timeout=limit,
                )  # fmt: skip
                return proc.returncode, proc.stdout, time.perf_counter() - start
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                return None, out, time.perf_counter() - start

    def row(self, check: str, device: str, measured: str, detail: str = "") -> None:
        self.rows.append((check, device, measured, detail))

    def failed(self, check: str, device: str, rc: int | None, seconds: float, log: str) -> None:
        tail = (self.work / f"{log}.err").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        what = f"timed out after {seconds:.0f} s" if rc is None else f"failed (exit {rc})"
        self.row(check, device, what, tail[0][:100])

    # --- the steps -------------------------------------------------------------------------------------------

    def gpu_tests(self) -> None:
        """Every GPU-marked test (of the files that mark any, so that collection stays short)."""
        files = sorted(
            str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text()
        )
        args = ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
        try:
            import textual  # noqa: F401
        except ImportError:  # a bare GPU machine: the workbench's tests (and the snapshot plugin) need Textual
            files = [f for f in files if not f.startswith(f"tests{os.sep}tui")]
            args += ["-p", "no:textual-snapshot"]
            self.notes.append("GPU-marked tests: the workbench's left out, Textual is not importable here")
        args += files
        rc, out, seconds = self.run(args, 110, "gpu-tests")
        (self.work / "gpu-tests.txt").write_text(out)
        last = next((ln for ln in reversed(out.strip().splitlines()) if re.search(r"\d+ (passed|skipped)", ln)), "")
        counts = re.sub(r"[=\s]+in [\d.]+s.*$", "", last).strip("= ")
        self.figures["gpu_tests"] = {"exit": rc, "summary": counts, "seconds": round(seconds, 1)}
        if rc in (0, 5) and counts:
            self.row("GPU-marked tests", self.device, f"{seconds:.1f} s", counts + ("" if rc == 0 else " (none ran)"))
        else:
            self.failed("GPU-marked tests", self.device, rc, seconds, "gpu-tests")

    def attack(
        self, key: str, model: str, n: int, device: str, wanted: float, extra: tuple[str, ...] = ()
    ) -> dict | None:
        """`blindspot attack` in a fresh process: the summary, run.json's batch/peak/precision, wall seconds."""
        folder = self.work / key
        args = ["-m", "blindspot", "attack", "--model", model, "-n", str(n), "--device", device]
        args += ["--out", str(folder), "--overwrite", "--json", *self.sizes.budget, *extra]
        rc, out, wall = self.run(args, wanted, key)
        if rc != 0:
            return {"rc": rc, "wall": wall}
        summary = json.loads(out)
        record = json.loads((folder / "run.json").read_text())
        fig = {
            "rc": 0,
            "wall": round(wall, 2),
            "seconds": summary["seconds"],
            "success_rate": summary["success_rate"],
            "mean_distortion": summary["mean_distortion"],
            "batch": record.get("batch"),
            "peak_memory": record.get("peak_memory"),
            "precision": record.get("precision"),
            "folder": str(folder),
        }
        self.figures[key] = fig
        return fig

    def attack_row(self, key: str, check: str, fig: dict | None, device: str, detail: str = "") -> bool:
        if fig is None or fig["rc"] != 0:
            self.failed(check, device, None if fig is None else fig["rc"], 0.0 if fig is None else fig["wall"], key)
            return False
        self.row(check, device, f"{fig['seconds']:.1f} s", f"{_quality(fig)}{detail}")
        return True

    def part1(self) -> None:
        s, dev = self.sizes, self.device
        self.gpu_tests()
        key = "n200-all-big"
        fig = self.attack(key, "n200-200-10", s.big_n, dev, 130, ("--target", "all"))
        detail = ""
        if fig is not None and fig["rc"] == 0:
            batch, peak = fig["batch"] or {}, fig["peak_memory"] or {}
            peak_bytes = peak.get("allocated_bytes", peak.get("process_peak_rss_bytes", 0))
            detail = (
                f"; batch {batch.get('problems_per_call')} problems ({batch.get('images_per_chunk')} images/chunk), "
                f"peak {peak_bytes / 2**20:.0f} MiB"
            )
        self.attack_row(key, f"n200-200-10, {s.big_n:,} test images, --target all", fig, dev, detail)
        like = {}
        for d in ("cpu", dev):
            key = f"n200-all-{s.like_n}-{d}"
            like[d] = self.attack(key, "n200-200-10", s.like_n, d, 60 if d == "cpu" else 30, ("--target", "all"))
        ratio = ""
        if all(f and f["rc"] == 0 for f in like.values()):
            ratio = f"; cpu / {dev} = {like['cpu']['seconds'] / max(like[dev]['seconds'], 1e-9):.1f}×"
        for d in ("cpu", dev):
            self.attack_row(f"n200-all-{s.like_n}-{d}", f"n200-200-10, {s.like_n} images, --target all", like[d], d,
                            ratio if d == dev else "")  # fmt: skip
        self.torchrun()

    def torchrun(self) -> None:
        """The big attack under torchrun, one rank per GPU, where there are several."""
        import torch

        gpus = torch.cuda.device_count() if self.device.startswith("cuda") else 0
        if gpus < 2:
            self.notes.append(f"torchrun: {gpus} GPU here, so no sharded run (it needs two or more)")
            return
        folder, n = self.work / "n200-all-ranks", self.sizes.big_n
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m", "blindspot",
                "attack", "--model", "n200-200-10", "-n", str(n), "--target", "all", "--device", "cuda",
                "--out", str(folder), "--overwrite", "--json"]  # fmt: skip
        rc, out, wall = self.run(args, 120, "n200-all-ranks")
        check = f"n200-200-10, {n:,} images, --target all, torchrun on {gpus} GPUs"
        if rc != 0:
            self.failed(check, self.device, rc, wall, "n200-all-ranks")
            return
        fig = json.loads(out) | {"wall": wall}
        self.figures["n200-all-ranks"] = fig
        self.row(check, self.device, f"{fig['seconds']:.1f} s", _quality(fig))

    def part2(self) -> None:
        s, dev = self.sizes, self.device
        conv = {}
        for tf32 in (False, True):
            key = f"conv-{s.conv_n}-{dev}-tf32-{'on' if tf32 else 'off'}"
            conv[tf32] = self.attack(key, "conv", s.conv_n, dev, 45, ("--tf32",) if tf32 else ())
            self.attack_row(key, f"conv, {s.conv_n} images, TF32 {'on' if tf32 else 'off'}", conv[tf32], dev)
        key = f"conv-{s.conv_cpu_n}-cpu"
        cpu = self.attack(key, "conv", s.conv_cpu_n, "cpu", 100)
        detail = ""
        if cpu and cpu["rc"] == 0 and conv[False] and conv[False]["rc"] == 0:
            per_cpu = cpu["seconds"] / s.conv_cpu_n
            per_dev = conv[False]["seconds"] / s.conv_n
            same = _same_images_distortion(Path(cpu["folder"]), Path(conv[False]["folder"]), s.conv_cpu_n)
            detail = f"; per image cpu / {dev} (TF32 off) = {per_cpu / max(per_dev, 1e-9):.1f}×; {same}"
            self.figures[key]["per_image_ratio"] = per_cpu / max(per_dev, 1e-9)
        self.attack_row(key, f"conv, the first {s.conv_cpu_n} of those images", cpu, "cpu", detail)
        self.resnet()
        self.foolbox()

    def resnet(self) -> None:
        s = self.sizes
        args = [str(Path(__file__)), "_resnet", "--device", self.device, "--model", s.resnet, "--size",
                str(s.resnet_size), "--n", str(s.resnet_n), "--c-steps", str(s.resnet_budget[0]),
                "--max-iter", str(s.resnet_budget[1])]  # fmt: skip
        rc, out, wall = self.run(args, 100, "resnet")
        check = f"{s.resnet} {s.resnet_size} px, {s.resnet_n} images, {s.resnet_budget[0]} × {s.resnet_budget[1]}"
        if rc != 0:
            self.failed(check, self.device, rc, wall, "resnet")
            return
        fig = json.loads(out.strip().splitlines()[-1])
        n, c, it = s.resnet_goal
        scale = (n * c * it) / (s.resnet_n * s.resnet_budget[0] * s.resnet_budget[1])
        fig["extrapolated_seconds"] = fig["seconds"] * scale
        self.figures["resnet"] = fig
        self.row(check, self.device, f"{fig['seconds_per_evaluation']:.3f} s per evaluation",
                 f"{fig['evaluations']} evaluations ({fig['rows']} image rows) in {fig['seconds']:.1f} s; "
                 f"{n} images at {c} × {it}: about {fig['extrapolated_seconds']:.0f} s if every problem ran its budget")  # fmt: skip

    def foolbox(self) -> None:
        try:
            import foolbox  # noqa: F401
        except ImportError:
            self.notes.append("foolbox DDN: skipped, foolbox is not importable here")
            return
        for model, n in (("n200-200-10", self.sizes.like_n), ("conv", self.sizes.conv_cpu_n)):
            args = [str(Path(__file__)), "_foolbox", "--device", self.device, "--model", model, "--n", str(n)]
            rc, out, wall = self.run(args, 60, f"foolbox-{model}")
            check = f"foolbox DDN (targeted, 100 steps), {model}, {n} images"
            if rc != 0:
                self.failed(check, self.device, rc, wall, f"foolbox-{model}")
                continue
            fig = json.loads(out.strip().splitlines()[-1])
            self.figures[f"foolbox-{model}"] = fig
            self.row(check, self.device, f"{fig['seconds']:.1f} s", _quality(fig))

    # --- output ----------------------------------------------------------------------------------------------

    def finish(self, header: list[str]) -> str:
        lines = [*header, "", "| check | device | measured | result |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        lines += ["", *self.notes] if self.notes else []
        text = "\n".join(lines) + "\n"
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{self.part}.md").write_text(text)
        doc = {"part": self.part, "device": self.device, "tiny": self.tiny, "rows": self.rows}
        (self.out / f"{self.part}.json").write_text(json.dumps(doc | {"figures": self.figures}, indent=1) + "\n")
        return text


def _quality(fig: dict) -> str:
    rate, dist = fig.get("success_rate"), fig.get("mean_distortion")
    text = f"success {100 * rate:.1f} %" if rate is not None else "success ?"
    return text + (f", distortion {dist:.4f}" if dist is not None and math.isfinite(dist) else "")


def _same_images_distortion(cpu: Path, dev: Path, n: int) -> str:
    """Success and mean distortion of the CPU run and of the device run on the same first `n` images."""
    from safetensors.torch import load_file

    a, b = load_file(str(cpu / "samples.safetensors")), load_file(str(dev / "samples.safetensors"))
    ok_a, ok_b = a["success"][:n].bool(), b["success"][:n].bool()
    both = ok_a & ok_b
    if not bool(both.any()):
        return f"same images: success cpu {int(ok_a.sum())}, device {int(ok_b.sum())} of {n}"
    da, db = float(a["distortion"][:n][both].mean()), float(b["distortion"][:n][both].mean())
    return (
        f"same images: success cpu {int(ok_a.sum())}/{n}, device {int(ok_b.sum())}/{n}; distortion {da:.4f} vs {db:.4f}"
    )


def environment(device: str) -> tuple[list[str], dict[str, Any]]:
    """The lines above the table: torch, the GPU, the precision flags as PyTorch has them and as the attack sets them."""
    import torch

    from engines.core.precision import float32_precision, precision_record

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    default = precision_record()
    with float32_precision(False) as attack:
        pass
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "gpus": count,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "precision_default": default,
        "precision_attack": attack,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    lines = [
        f"GPU check on {gpu} × {count} (device {device}), {info['date']}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), Python {info['python']}, {info['cpu_threads']} CPU threads",
        f"precision: PyTorch's defaults {_flags(default)}; the attack and bounds run with {_flags(attack)} "
        "unless --tf32",
    ]
    return lines, info


def _flags(record: dict[str, Any]) -> str:
    return f"TF32 {record['tf32']} (matmul {record['matmul_precision']}, conv {record['conv_precision']})"


# --- the steps that run in their own process ---------------------------------------------------------------------


def _resnet_main(args: argparse.Namespace) -> None:
    """A torchvision classifier (random weights: timing only) on smooth random images: model evaluations counted."""
    import torch
    from torch import nn

    from engines.attack.search import AttackConfig, attack_problems
    from engines.attack.targets import choose_targets
    from engines.core.device import resolve_device
    from engines.core.models import ModelRef, load_model
    from engines.core.precision import float32_precision

    device = resolve_device(args.device)
    lm = load_model(ModelRef(args.model), device)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(args.n, 3, 8, 8, generator=gen)
    x = nn.functional.interpolate(coarse, size=(args.size, args.size), mode="bicubic", align_corners=False).clamp(0, 1)

    class Counted(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.evaluations, self.rows = net, 0, 0

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                self.evaluations, self.rows = self.evaluations + 1, self.rows + z.shape[0]
            return self.net(z)

    model = Counted(lm.model).eval()
    with torch.no_grad():
        logits = model(x.to(device))
    y = logits.argmax(1).cpu()
    target = choose_targets("random", y, int(logits.shape[1]), seed=0)
    cfg = AttackConfig(c_steps=args.c_steps, max_iter=args.max_iter)
    with float32_precision(False):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        res = attack_problems(model, x.to(device), target.to(device), cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    ok = res.success.cpu()
    dist = ((res.sq_dist.cpu()[ok] / x[0].numel()).sqrt().mean().item()) if bool(ok.any()) else None
    print(json.dumps({
        "seconds": seconds, "evaluations": model.evaluations, "rows": model.rows,
        "seconds_per_evaluation": seconds / max(model.evaluations, 1), "success_rate": float(ok.float().mean()),
        "mean_distortion": dist,
    }))  # fmt: skip


def _foolbox_main(args: argparse.Namespace) -> None:
    """foolbox's DDN, targeted at the attack's seeded random targets, on the first `n` correctly classified test
    images: the peer the attack is compared with (same images, same targets)."""
    import foolbox as fb
    import torch

    from engines.attack.targets import choose_targets
    from engines.core.checkpoint import load_checkpoint
    from engines.core.data import load_split
    from engines.core.device import resolve_device

    device = resolve_device(args.device)
    model = load_checkpoint(args.model, device).model.eval()
    data = load_split("test")
    x, y = data.images[: args.n], data.labels[: args.n]
    target = choose_targets("random", y, 10, seed=0)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
    criterion = fb.criteria.TargetedMisclassification(target.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    _, adv, success = fb.attacks.DDNAttack(steps=100)(fmodel, x.to(device), criterion, epsilons=None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ok = success.cpu()
    d = ((adv.cpu() - x).flatten(1).pow(2).mean(1).sqrt())[ok]
    print(json.dumps({"seconds": seconds, "success_rate": float(ok.float().mean()),
                      "mean_distortion": float(d.mean()) if len(d) else None}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["part1", "part2", "all", "_resnet", "_foolbox"])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    ap.add_argument("--work", type=Path, default=None, help="scratch runs (default: OUT/work)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CI, with --device cpu)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--c-steps", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=5)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.part == "_resnet":
        _resnet_main(args)
        return 0
    if args.part == "_foolbox":
        _foolbox_main(args)
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; use --device cpu --tiny for the CPU fallback", file=sys.stderr)
            return 2
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    header, info = environment(args.device)
    failed = 0
    for part in ("part1", "part2") if args.part == "all" else (args.part,):
        check = Check(part, args.out, work, args.device, TINY if args.tiny else Sizes(), args.tiny)
        check.figures["environment"] = info
        getattr(check, part)()
        print(check.finish([*header, f"{part} (limit {PART_SECONDS:.0f} s)"]), flush=True)
        failed += sum(1 for r in check.rows if not re.match(r"^[\d.]+ s", r[2]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
