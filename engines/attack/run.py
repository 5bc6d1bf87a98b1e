"""The attack operation: `run_attack(request, ctx)` and `resume_attack(folder, ctx)`.

The CLI's `blindspot attack` and the Attack screen both call these and nothing else. A run folder:
    run.json                 format, request, model and data identity, status, seconds
    chunks/SSSSSS-EEEEEE.safetensors   per-image results for images [S, E) of the run
    samples.safetensors      all per-image arrays (x, x_adv, label, target, success, distortion, l2, linf, c)
    summary.json             `AttackResult.to_json()`, what `--json` prints
    figure.png               Fig. 5/7 layout: original | difference ×10 | adversarial | equal-rms noise
Each finished chunk is announced as a `ChunkDone` event carrying its results, so a screen never
re-reads files to show them.

Over 400 lines on purpose: the request, the result, the chunk loop, resume's checks of chunks
and the summary are one run-folder format and change together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engines.attack.problems import AttackConfig, attack_problems, paper_distortion, validate_images
from engines.attack.targets import choose_targets, expand_all_targets, parse_target
from engines.core.checkpoint import LoadedModel, check_classifier, load_checkpoint
from engines.core.context import RunContext
from engines.core.data import Dataset, data_fingerprint, load_split
from engines.core.errors import InputError
from engines.core.events import ChunkDone, Event, EventSink, SolverStep
from engines.core.io import atomic_write, read_json, write_json_atomic
from engines.core.runs import RunFolder, open_run, read_run_record, reopen_run
from engines.report.figures import attack_figure

SUMMARY_FILE, SAMPLES_FILE, FIGURE_FILE, CHUNKS = "summary.json", "samples.safetensors", "figure.png", "chunks"
CHUNK_KEYS = ("x_adv", "target", "success", "trivial", "distortion", "l2", "linf", "c")


@dataclass(frozen=True)
class AttackRequest:
    """What to attack and how: everything that fixes the result. Stored in run.json for --resume."""

    model: str
    split: str = "test"
    n: int = 100
    offset: int = 0
    target: str = "random"
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    batch_size: int | None = None
    data_dir: str | None = None
    chunk_images: int | None = None  # images per saved chunk (at most); None: as many as batch_size allows

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError("--n must be at least 1")
        if self.offset < 0:
            raise InputError("--offset must be at least 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("--batch-size must be at least 1")
        if self.chunk_images is not None and self.chunk_images < 1:
            raise InputError("chunk_images must be at least 1")

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
            "chunk_images": self.chunk_images,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackRequest:
        try:
            return cls(
                model=str(d["model"]),
                split=str(d["split"]),
                n=int(d["n"]),
                offset=int(d["offset"]),
                target=str(d["target"]),
                seed=int(d["seed"]),
                config=AttackConfig(**d["config"]),
                batch_size=d.get("batch_size"),
                data_dir=d.get("data_dir"),
                chunk_images=d.get("chunk_images"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded attack request is damaged ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class AttackResult:
    """The outcome of a run: what `--json` prints, what summary.json holds, what the screen shows."""

    model: str
    model_sha256: str
    n: int
    target: str
    split: str
    offset: int
    success_rate: float
    n_success: int
    n_trivial: int
    mean_distortion: float | None
    median_distortion: float | None
    mean_l2: float | None
    mean_linf: float | None
    mean_c: float | None
    seconds: float
    device: str
    seed: int
    config: dict[str, Any]
    run: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "distortion_definition": "sqrt(sum((x'-x)^2)/n), n = pixels; statistics over successful images",
            "trivial_definition": "images the model already sends to the target (target all: misclassified), left out",
            "c_convention": "c multiplies the distance term: the largest c whose minimiser reaches the target is kept",
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackResult:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def auto_batch_size(n_pixels: int, history: int, device: torch.device) -> int:
    """Problems per chunk: bounded by free GPU memory on CUDA, a cache-friendly size on the CPU."""
    if device.type != "cuda":
        return 2048
    free, _ = torch.cuda.mem_get_info(device)
    per_problem = (4 * history + 64) * n_pixels * 4
    return int(max(64, min(65536, 0.5 * free // per_problem)))


def chunk_name(start: int, stop: int) -> str:
    return f"{start:06d}-{stop:06d}.safetensors"


def run_attack(request: AttackRequest, ctx: RunContext) -> AttackResult:
    """Start a new run in the context's folder (a new one under runs/ by default) and carry it to the end."""
    device = ctx.torch_device()
    with open_run(ctx, "attack", request.model, request.to_json()) as run:
        lm = load_checkpoint(request.model, device)
        data = _load_data(request)
        run.update(model={"id": lm.id, "path": str(lm.path), "sha256": lm.sha256}, data=_data_identity(request))
        return _carry_on(run, request, lm, data, ctx)


def resume_attack(folder: Path, ctx: RunContext) -> AttackResult:
    """Finish an interrupted run with the settings it was started with; a finished run is left alone."""
    folder = Path(folder)
    record = read_run_record(folder)
    request = AttackRequest.from_json(record["request"])
    if record.get("status") == "done" and (folder / SUMMARY_FILE).is_file():
        return replace(AttackResult.from_json(read_json(folder / SUMMARY_FILE)), run=str(folder))
    with reopen_run(folder, "attack") as run:
        lm = load_checkpoint(request.model, ctx.torch_device())
        recorded = (record.get("model") or {}).get("sha256")
        if recorded and lm.sha256 != recorded:
            raise InputError(f"the model {request.model} changed since the run started (weights hash differs)")
        identity = record.get("data")
        if identity is not None and identity != _data_identity(request):
            raise InputError(f"the data files of {folder} changed since the run started (md5 differs)")
        return _carry_on(run, request, lm, _load_data(request), ctx)


def _load_data(request: AttackRequest) -> Dataset:
    data = load_split(request.split, request.data_dir).subset(request.offset, request.n)
    validate_images(data.images)
    return data


def _data_identity(request: AttackRequest) -> dict[str, Any]:
    return {"split": request.split, "md5": data_fingerprint(request.data_dir)}


def _carry_on(run: RunFolder, request: AttackRequest, lm: LoadedModel, data: Dataset, ctx: RunContext) -> AttackResult:
    device = ctx.torch_device()
    out = run.path
    classes = check_classifier(lm.model, tuple(data.images.shape[1:]), device)
    if len(data) and int(data.labels.max()) >= classes:
        raise InputError(f"the data has label {int(data.labels.max())} but {lm.id} has only {classes} classes")
    mode = parse_target(request.target, classes)
    targets = None if mode == "all" else choose_targets(mode, data.labels, classes, request.seed, lm.model, data.images)
    per_image = classes - 1 if mode == "all" else 1
    batch = request.batch_size or auto_batch_size(int(data.images[0].numel()), request.config.history, device)
    chunk = max(1, batch // per_image)
    if request.chunk_images is not None:  # a screen streams finished examples: several chunks per run
        chunk = min(chunk, request.chunk_images)
    done = valid_chunks(out, len(data))
    tally = RunTally.from_chunks(out, done)
    finished = sum(b - a for a, b in done)
    for a, b in _remaining(done, len(data)):
        pos = a
        while pos < b:
            stop = min(pos + chunk, b)
            ctx.check_cancel()
            on_step = tally.progress(ctx.on_event, finished, stop - pos, len(data))
            try:
                part = _attack_chunk(lm, data, pos, stop, targets, classes, request, device, on_step, ctx)
            except torch.cuda.OutOfMemoryError:
                if stop - pos == 1:
                    raise
                chunk = max(1, (stop - pos) // 2)
                torch.cuda.empty_cache()
                continue
            atomic_write(out / CHUNKS / chunk_name(pos, stop), lambda p, part=part: save_file(part, str(p)))
            tally.add(part)
            finished += stop - pos
            ctx.emit(
                ChunkDone(
                    task=f"attack {lm.id}",
                    done=finished,
                    total=len(data),
                    start=pos,
                    stop=stop,
                    index=data.indices[pos:stop],
                    x=data.images[pos:stop],
                    label=data.labels[pos:stop],
                    results=part,
                )
            )
            pos = stop
    return _finish(run, lm, request, data, device, run.seconds())


def _attack_chunk(
    lm: LoadedModel,
    data: Dataset,
    start: int,
    stop: int,
    targets: torch.Tensor | None,
    classes: int,
    request: AttackRequest,
    device: torch.device,
    on_event: EventSink,
    ctx: RunContext,
) -> dict[str, torch.Tensor]:
    """Attack images [start, stop) (one chunk); for --target all keep each image's closest success."""
    x, y = data.images[start:stop], data.labels[start:stop]
    if targets is None:
        image, tgt = expand_all_targets(y, classes)
    else:
        image, tgt = torch.arange(len(y)), targets[start:stop]
    res = attack_problems(
        lm.model,
        x[image].to(device),
        tgt.to(device),
        request.config,
        on_event=on_event,
        cancel=ctx.cancelled,
        task=f"attack {lm.id}",
        groups=image.to(device),
    )
    sq = res.sq_dist.cpu()
    if targets is None:
        best = sq.view(len(y), classes - 1).argmin(1)
        pick = torch.arange(len(y)) * (classes - 1) + best
    else:
        pick = torch.arange(len(y))
    reached = res.success.cpu()[pick]
    # the model already sends x itself to the target (for --target all: it misclassifies x): nothing to find
    trivial = reached & (sq[pick] == 0)
    success = reached & ~trivial
    x_adv = torch.where(success.view(-1, *([1] * (x.dim() - 1))), res.x_adv.cpu()[pick], x)
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


def valid_chunks(out: Path, n: int) -> list[tuple[int, int]]:
    """Finished chunks that can be trusted: a name that parses, a range inside the run, no overlap,
    a readable header with every per-image array of the right length. Others are recomputed."""
    ranges: list[tuple[int, int]] = []
    for path in sorted((out / CHUNKS).glob("*.safetensors")):
        try:
            a, b = (int(s) for s in path.stem.split("-"))
        except ValueError:
            continue
        if not (0 <= a < b <= n) or any(a < d and c < b for c, d in ranges):
            continue
        try:
            with safe_open(str(path), "pt") as fh:
                keys = set(fh.keys())
                if not set(CHUNK_KEYS) - {"trivial"} <= keys:
                    continue
                if any(fh.get_slice(k).get_shape()[0] != b - a for k in keys):
                    continue
        except (SafetensorError, OSError, ValueError, RuntimeError):
            continue
        ranges.append((a, b))
    return ranges


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
    def from_chunks(cls, out: Path, ranges: list[tuple[int, int]]) -> RunTally:
        """Read back only the small per-image tensors of a resumed run's finished chunks, not its images."""
        tally = cls()
        for a, b in ranges:
            with safe_open(str(out / CHUNKS / chunk_name(a, b)), "pt") as chunk:
                names = set(chunk.keys())
                tally.add({k: chunk.get_tensor(k) for k in ("success", "distortion", "trivial") if k in names})
        return tally

    def add(self, part: dict[str, torch.Tensor]) -> None:
        ok = part["success"].bool()
        self.images += int(ok.numel()) - int(trivial_mask(part).sum())
        self.successes += int(ok.sum())
        self.distortion_sum += float(part["distortion"][ok].sum())

    def progress(self, sink: EventSink, finished: int, chunk: int, total: int) -> EventSink:
        """Forward a chunk's solver steps with the run's figures: finished chunks plus this one so far."""

        def emit(event: Event) -> None:
            if not isinstance(event, SolverStep):
                sink(event)
                return
            rate, dist = event.success_rate, event.mean_distortion
            mean = self.distortion_sum / self.successes if self.successes else None
            if rate is not None:
                found = rate * chunk
                rate = (self.successes + found) / max(self.images + chunk, 1)
                if dist is not None and math.isfinite(dist) and found:
                    mean = (self.distortion_sum + dist * found) / (self.successes + found)
            sink(
                replace(
                    event,
                    images_done=finished,
                    images_total=total,
                    chunk_images=chunk,
                    success_rate=rate,
                    mean_distortion=mean,
                )
            )

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


def load_samples(out: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / SAMPLES_FILE))


def _finish(
    run: RunFolder, lm: LoadedModel, request: AttackRequest, data: Dataset, device: torch.device, seconds: float
) -> AttackResult:
    out = run.path
    parts = [load_file(str(out / CHUNKS / chunk_name(a, b))) for a, b in sorted(valid_chunks(out, len(data)))]
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    samples = {
        "x": data.images.contiguous(),
        "label": data.labels.contiguous(),
        "index": torch.as_tensor(data.indices).contiguous(),
        **merged,
    }
    atomic_write(out / SAMPLES_FILE, lambda p: save_file(samples, str(p)))
    result = summarize(samples, model_id=lm.id, model_sha256=lm.sha256, request=request, seconds=seconds, device=device)
    result = replace(result, run=str(out))
    write_json_atomic(out / SUMMARY_FILE, result.to_json())
    attack_figure(samples, lm.model, device, out / FIGURE_FILE, seed=request.seed)
    return result


def summarize(
    samples: dict[str, torch.Tensor],
    *,
    model_id: str,
    model_sha256: str = "",
    request: AttackRequest,
    seconds: float,
    device: torch.device,
) -> AttackResult:
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

    return AttackResult(
        model=model_id,
        model_sha256=model_sha256,
        n=n,
        target=request.target,
        split=request.split,
        offset=request.offset,
        success_rate=int(ok.sum()) / attacked if attacked else 0.0,
        n_success=int(ok.sum()),
        n_trivial=n_trivial,
        mean_distortion=stat("distortion"),
        median_distortion=stat("distortion", "median"),
        mean_l2=stat("l2"),
        mean_linf=stat("linf"),
        mean_c=stat("c"),
        seconds=round(seconds, 3),
        device=str(device),
        seed=request.seed,
        config=request.config.as_dict(),
    )
