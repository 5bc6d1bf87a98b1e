"""An attack run on disk: chunks saved as they finish, resumable, summarised at the end.

Layout of a run folder:
    run.json                 settings, model hash, status, finished chunks
    chunks/SSSSSS-EEEEEE.safetensors   per-image results for images [S, E) of the run
    samples.safetensors      all per-image arrays (x, x_adv, label, target, success, distortion, l2, linf, c)
    summary.json             the summary the CLI prints with --json
    figure.png               Fig. 5/7 layout: original | difference ×10 | adversarial | equal-rms noise
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engines.attack import AttackConfig, attack_problems, paper_distortion, validate_images
from engines.checkpoint import LoadedModel, check_classifier, load_checkpoint
from engines.data import load_split
from engines.errors import BlindspotError, InputError
from engines.events import CancelCheck, Progress, ProgressCallback, never_cancel, no_progress
from engines.figures import attack_figure
from engines.io import atomic_write, read_json, write_json_atomic
from engines.targets import choose_targets, expand_all_targets, parse_target

RUN_FILE, SUMMARY_FILE, SAMPLES_FILE, FIGURE_FILE = "run.json", "summary.json", "samples.safetensors", "figure.png"


@dataclass
class AttackRequest:
    """What to attack and how; stored in run.json so that --resume can finish the same job."""

    model: str
    split: str = "test"
    n: int = 100
    offset: int = 0
    target: str = "random"
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    batch_size: int | None = None
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "n": self.n,
            "offset": self.offset,
            "target": self.target,
            "seed": self.seed,
            "config": self.config.as_dict(),
            "batch_size": self.batch_size,
            "data_dir": self.data_dir,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackRequest:
        return cls(
            model=d["model"],
            split=d["split"],
            n=d["n"],
            offset=d["offset"],
            target=d["target"],
            seed=d["seed"],
            config=AttackConfig(**d["config"]),
            batch_size=d.get("batch_size"),
            data_dir=d.get("data_dir"),
        )


def auto_batch_size(n_pixels: int, history: int, device: torch.device) -> int:
    """Problems per chunk: bounded by free GPU memory on CUDA, a cache-friendly size on the CPU."""
    if device.type != "cuda":
        return 2048
    free, _ = torch.cuda.mem_get_info(device)
    per_problem = (4 * history + 64) * n_pixels * 4
    return int(max(64, min(65536, 0.5 * free // per_problem)))


def _chunk_name(start: int, stop: int) -> str:
    return f"{start:06d}-{stop:06d}.safetensors"


def _done_ranges(folder: Path) -> list[tuple[int, int]]:
    ranges = []
    for p in sorted((folder / "chunks").glob("*.safetensors")):
        a, b = p.stem.split("-")
        ranges.append((int(a), int(b)))
    return ranges


def _attack_chunk(
    lm: LoadedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    classes: int,
    request: AttackRequest,
    device: torch.device,
    on_progress: ProgressCallback,
    cancel: CancelCheck,
    task: str,
) -> dict[str, torch.Tensor]:
    """Attack images x (one chunk); for --target all keep each image's closest success."""
    if targets is None:
        image, tgt = expand_all_targets(y, classes)
    else:
        image, tgt = torch.arange(len(y)), targets
    xs = x[image].to(device)
    res = attack_problems(
        lm.model,
        xs,
        tgt.to(device),
        request.config,
        on_progress=on_progress,
        cancel=cancel,
        task=task,
        groups=image.to(device),
    )
    sq = res.sq_dist.cpu()
    if targets is None:
        per = sq.view(len(y), classes - 1)
        best = per.argmin(1)
        pick = torch.arange(len(y)) * (classes - 1) + best
    else:
        pick = torch.arange(len(y))
    reached = res.success.cpu()[pick]
    # the model already sends x itself to the target (for --target all: it misclassifies x): nothing to find
    trivial = reached & (sq[pick] == 0)
    success = reached & ~trivial
    x_adv = torch.where(success.view(-1, 1, 1, 1), res.x_adv.cpu()[pick], x)
    diff = (x_adv - x).flatten(1)
    nan = torch.full((len(y),), math.nan)
    return {
        "x_adv": x_adv.contiguous(),
        "target": tgt.cpu()[pick].contiguous(),
        "success": success.to(torch.uint8),
        "trivial": trivial.to(torch.uint8),
        "distortion": torch.where(success, paper_distortion(x, x_adv), nan),
        "l2": torch.where(success, diff.norm(dim=1), nan),
        "linf": torch.where(success, diff.abs().amax(1), nan),
        "c": torch.where(success, res.c.cpu()[pick], nan),
    }


def start_attack(
    request: AttackRequest,
    out: str | Path,
    device: torch.device,
    *,
    on_progress: ProgressCallback = no_progress,
    cancel: CancelCheck = never_cancel,
) -> dict[str, Any]:
    """Begin a new run in `out` (which must not hold another run) and carry it to the end."""
    out = Path(out)
    if (out / RUN_FILE).exists():
        raise InputError(f"{out} already holds an attack run; use --resume {out} or another --out")
    lm = load_checkpoint(request.model, device)
    write_json_atomic(
        out / RUN_FILE,
        {
            "status": "running",
            "request": request.to_json(),
            "model": {"id": lm.id, "path": str(lm.path), "sha256": lm.sha256},
            "seconds": 0.0,
        },
    )
    try:
        return _carry_on(out, lm, device, on_progress, cancel)
    except BlindspotError:
        if not _done_ranges(out):  # refused before any work: leave no run behind to block the same --out
            (out / RUN_FILE).unlink(missing_ok=True)
        raise


def resume_attack(
    out: str | Path,
    device: torch.device,
    *,
    on_progress: ProgressCallback = no_progress,
    cancel: CancelCheck = never_cancel,
) -> dict[str, Any]:
    """Finish an interrupted run with the settings it was started with."""
    out = Path(out)
    if not (out / RUN_FILE).is_file():
        raise InputError(f"{out} holds no attack run to resume ({RUN_FILE} missing)")
    run = read_json(out / RUN_FILE)
    lm = load_checkpoint(run["request"]["model"], device)
    if lm.sha256 != run["model"]["sha256"]:
        raise InputError(f"the model {run['request']['model']} changed since the run started (weights hash differs)")
    return _carry_on(out, lm, device, on_progress, cancel)


def _carry_on(
    out: Path, lm: LoadedModel, device: torch.device, on_progress: ProgressCallback, cancel: CancelCheck
) -> dict[str, Any]:
    run = read_json(out / RUN_FILE)
    request = AttackRequest.from_json(run["request"])
    data = load_split(request.split, request.data_dir).subset(request.offset, request.n)
    validate_images(data.images)
    classes = check_classifier(lm.model, tuple(data.images.shape[1:]), device)
    if len(data) and int(data.labels.max()) >= classes:
        raise InputError(f"the data has label {int(data.labels.max())} but {lm.id} has only {classes} classes")
    mode = parse_target(request.target, classes)
    targets = None if mode == "all" else choose_targets(mode, data.labels, classes, request.seed, lm.model, data.images)
    per_image = classes - 1 if mode == "all" else 1
    n_pixels = int(data.images[0].numel())
    batch = request.batch_size or auto_batch_size(n_pixels, request.config.history, device)
    chunk = max(1, batch // per_image)
    todo = _remaining(_done_ranges(out), len(data))
    started = time.perf_counter()
    base_seconds = float(run.get("seconds", 0.0))
    finished = len(data) - sum(b - a for a, b in todo)
    tally = RunTally.from_chunks(out)
    try:
        for a, b in todo:
            pos = a
            while pos < b:
                stop = min(pos + chunk, b)
                try:
                    part = _attack_chunk(
                        lm,
                        data.images[pos:stop],
                        data.labels[pos:stop],
                        None if targets is None else targets[pos:stop],
                        classes,
                        request,
                        device,
                        tally.progress(on_progress, finished, stop - pos, len(data)),
                        cancel,
                        f"attack {lm.id}",
                    )
                except torch.cuda.OutOfMemoryError:
                    if stop - pos == 1:
                        raise
                    chunk = max(1, (stop - pos) // 2)
                    torch.cuda.empty_cache()
                    continue
                atomic_write(out / "chunks" / _chunk_name(pos, stop), lambda p, part=part: save_file(part, str(p)))
                tally.add(part)
                finished += stop - pos
                pos = stop
    except BaseException:
        _update_run(out, status="interrupted", seconds=base_seconds + time.perf_counter() - started)
        raise
    seconds = base_seconds + time.perf_counter() - started
    summary = _finish(out, lm, request, data.images, data.labels, data.indices, device, seconds)
    _update_run(out, status="done", seconds=seconds)
    return summary


def trivial_mask(samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Images with nothing to attack (see `summarize`); runs saved before the flag existed have none marked."""
    flag = samples.get("trivial")
    return flag.bool() if flag is not None else torch.zeros_like(samples["success"], dtype=torch.bool)


@dataclass
class RunTally:
    """Successes and their distortion over the finished chunks, so that progress speaks for the whole run."""

    images: int = 0
    successes: int = 0
    distortion_sum: float = 0.0

    @classmethod
    def from_chunks(cls, out: Path) -> RunTally:
        """Read back only the small per-image tensors of a resumed run's finished chunks, not its images."""
        tally = cls()
        for path in sorted((out / "chunks").glob("*.safetensors")):
            with safe_open(str(path), "pt") as chunk:
                names = set(chunk.keys())
                tally.add({k: chunk.get_tensor(k) for k in ("success", "distortion", "trivial") if k in names})
        return tally

    def add(self, part: dict[str, torch.Tensor]) -> None:
        ok = part["success"].bool()
        self.images += int(ok.numel()) - int(trivial_mask(part).sum())
        self.successes += int(ok.sum())
        self.distortion_sum += float(part["distortion"][ok].sum())

    def progress(self, on_progress: ProgressCallback, finished: int, chunk: int, total: int) -> ProgressCallback:
        """Forward a chunk's events with the run's figures: finished chunks plus this one so far."""

        def emit(event: Progress) -> None:
            info = dict(event.info, images_done=finished, images_total=total)
            rate, dist = info.get("success_rate"), info.get("mean_distortion")
            if rate is not None:
                found = rate * chunk
                info["success_rate"] = (self.successes + found) / max(self.images + chunk, 1)
                if dist is not None and math.isfinite(dist) and found:
                    info["mean_distortion"] = (self.distortion_sum + dist * found) / (self.successes + found)
                elif self.successes:
                    info["mean_distortion"] = self.distortion_sum / self.successes
            event.info = info
            on_progress(event)

        return emit


def _remaining(done: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    gaps, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < n:
        gaps.append((pos, n))
    return gaps


def _update_run(out: Path, **changes: Any) -> None:
    run = read_json(out / RUN_FILE)
    run.update(changes)
    write_json_atomic(out / RUN_FILE, run)


def load_samples(out: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / SAMPLES_FILE))


def _finish(
    out: Path,
    lm: LoadedModel,
    request: AttackRequest,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: Any,
    device: torch.device,
    seconds: float,
) -> dict[str, Any]:
    parts = [(a, load_file(str(out / "chunks" / _chunk_name(a, b)))) for a, b in _done_ranges(out)]
    merged = {k: torch.cat([p[k] for _, p in sorted(parts, key=lambda t: t[0])]) for k in parts[0][1]}
    samples = {"x": x.contiguous(), "label": y.contiguous(), "index": torch.as_tensor(indices).contiguous(), **merged}
    atomic_write(out / SAMPLES_FILE, lambda p: save_file(samples, str(p)))
    summary = summarize(samples, model_id=lm.id, request=request, seconds=seconds, device=device)
    summary["model_sha256"] = lm.sha256
    write_json_atomic(out / SUMMARY_FILE, summary)
    attack_figure(samples, lm.model, device, out / FIGURE_FILE, seed=request.seed)
    return summary


def summarize(
    samples: dict[str, torch.Tensor], *, model_id: str, request: AttackRequest, seconds: float, device: torch.device
) -> dict[str, Any]:
    """Success rate over the images there was something to attack; distortion statistics over the successes.

    Images the model already sends to the target (with --target all: images it misclassifies) are
    counted apart as `n_trivial`: counting them as successes at distortion 0 would flatter both figures.
    """
    ok = samples["success"].bool()
    n = int(ok.numel())
    n_trivial = int(trivial_mask(samples).sum())
    attacked = n - n_trivial

    def stat(key: str, fn: str = "mean") -> float | None:
        v = samples[key][ok]
        v = v[torch.isfinite(v)]  # c is NaN for a success first met at a line-search trial point
        if v.numel() == 0:
            return None
        return float(v.mean() if fn == "mean" else v.median())

    return {
        "model": model_id,
        "n": n,
        "target": request.target,
        "split": request.split,
        "offset": request.offset,
        "success_rate": int(ok.sum()) / attacked if attacked else 0.0,
        "n_success": int(ok.sum()),
        "n_trivial": n_trivial,
        "mean_distortion": stat("distortion"),
        "median_distortion": stat("distortion", "median"),
        "mean_l2": stat("l2"),
        "mean_linf": stat("linf"),
        "mean_c": stat("c"),
        "seconds": round(seconds, 3),
        "device": str(device),
        "seed": request.seed,
        "config": request.config.as_dict(),
        "distortion_definition": "sqrt(sum((x'-x)^2)/n), n = pixels; statistics over successful images",
        "trivial_definition": "images the model already sends to the target (target all: misclassified), left out",
        "c_convention": "c multiplies the distance term: the largest c whose minimiser reaches the target is kept",
    }
