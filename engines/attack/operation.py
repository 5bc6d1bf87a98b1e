"""The attack operation: `run_attack(request, ctx)` and `resume_attack(folder, ctx)`.

The CLI's `blindspot attack` and the Attack screen both call these and nothing else. A run folder:
    run.json                 format, request, model and data identity, status, seconds
    chunks/SSSSSS-EEEEEE.safetensors   per-image results for images [S, E) of the run
    samples.safetensors      all per-image arrays (x, x_adv, label, target, success, distortion, l2, linf, c)
    summary.json             `AttackResult.to_json()`, what `--json` prints
    figure.png               Fig. 5/7 layout: original | difference ×10 | adversarial | equal-rms noise
Each finished chunk is announced as a `ChunkDone` event carrying its results, so a screen never
re-reads files to show them; a resumed run first announces the chunks finished before it stopped.

The request lives in `engines.attack.request`, the result type and the summary in `engines.attack.results`,
the chunk files in `engines.attack.chunks`, batch sizing and the solve of one chunk in `engines.attack.batching`;
resume here, follow, export and the run list read a run folder through `engines.attack.folder`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engines.attack.batching import BatchPlan, attack_chunk, auto_batch_size, balanced_size, problem_bytes
from engines.attack.chunks import (
    CHUNKS,
    SAMPLES_FILE,
    covered_images,
    read_chunk,
    remaining,
    save_chunk,
)
from engines.attack.figures import attack_figure
from engines.attack.folder import KIND, AttackFolder
from engines.attack.request import AttackRequest
from engines.attack.results import SUMMARY_FILE, AttackResult, RunTally, summarize
from engines.attack.search import validate_images
from engines.attack.targets import choose_targets, parse_target
from engines.core.checkpoint import LoadedModel, check_classifier, check_finite_logits, warn_if_trained_on_other_data
from engines.core.context import RunContext
from engines.core.data import Dataset
from engines.core.distributed import first_error, gather, on_main_first
from engines.core.errors import Cancelled, InputError
from engines.core.events import ChunkDone, Event, EventSink, SolverStep
from engines.core.io import atomic_write, write_json_atomic
from engines.core.memory import (
    activation_floats,
    is_out_of_memory,
    peak_memory,
    release_memory,
    reset_peak_memory,
)
from engines.core.model_data import check_labels, data_record, open_model_data, take_images
from engines.core.models import load_model
from engines.core.precision import float32_precision
from engines.core.runs import RunFolder, open_run, reopen_run

FIGURE_FILE, IMAGES_FILE = "figure.png", "images.json"


def run_attack(request: AttackRequest, ctx: RunContext) -> AttackResult:
    """Start a new run in the context's folder (a new one under runs/ by default) and carry it to the end.

    Under torchrun every rank calls this with the same request: rank 0 opens the folder, each rank attacks its
    shard of the images, rank 0 merges (see `engines.core.distributed`)."""
    return _run(request, ctx, None)


def resume_attack(folder: Path, ctx: RunContext) -> AttackResult:
    """Finish an interrupted run with the settings it was started with; a finished run is left alone.

    Chunks are named by image index, not by rank: a run started on 4 ranks finishes on 1 or on 8."""
    folder = Path(folder)
    attack = AttackFolder(folder, on_main_first(ctx.ranks, lambda: AttackFolder.read(folder).record))
    if attack.record.get("status") == "done":
        summary = attack.summary()  # a damaged one is rebuilt below
        if summary is not None:
            return summary
    return _run(AttackRequest.from_json(attack.request), ctx, (folder, attack.record))


def _run(request: AttackRequest, ctx: RunContext, resuming: tuple[Path, dict[str, Any]] | None) -> AttackResult:
    device = ctx.torch_device()
    with contextlib.ExitStack() as stack:
        precision = stack.enter_context(float32_precision(ctx.tf32))  # TF32 off unless asked (--tf32)
        opened: list[RunFolder] = []

        def open_folder() -> Path:  # rank 0 only: create (or reopen), lock and record the folder
            if resuming is None:
                opener = open_run(ctx, KIND, str(request.model), request.to_json())
            else:
                opener = reopen_run(resuming[0], "attack")
            opened.append(stack.enter_context(opener))
            if resuming is None:  # --overwrite: an earlier run's results must not pass for this run's
                shutil.rmtree(opened[0].path / CHUNKS, ignore_errors=True)
                for name in (SAMPLES_FILE, SUMMARY_FILE, FIGURE_FILE, IMAGES_FILE):
                    (opened[0].path / name).unlink(missing_ok=True)
            return opened[0].path

        out = on_main_first(ctx.ranks, open_folder)
        run = opened[0] if opened else RunFolder(out, "attack")  # other ranks only write chunks into it
        status: dict[str, Any] = {"rank": ctx.ranks.rank, "device": str(device), "images": 0, "chunks": []}
        status["precision"] = precision
        with _reported_to_the_other_ranks(ctx, status):  # every rank's failure reaches rank 0's one gather
            lm = load_model(request.model, device)
            data, identity = load_request_data(request, lm)
            if resuming is not None:
                _check_unchanged(resuming, request, lm, identity)
            elif ctx.ranks.main:
                warn_if_trained_on_other_data(lm, request.data_dir)
                run.update(model=lm.identity(), data=identity)
                if data.files is not None:
                    write_json_atomic(out / IMAGES_FILE, {"root": identity.get("root"), "files": list(data.files)})
            done = _attack_my_shard(run, request, lm, data, ctx, status, replay=resuming is not None)
        if not ctx.ranks.sharded:
            return _finish(run, lm, request, data, device, run.seconds(), done)
        return _merge_shards(run, request, lm, data, ctx, status)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_unchanged(
    resuming: tuple[Path, dict[str, Any]], request: AttackRequest, lm: LoadedModel, identity: dict[str, Any]
) -> None:
    """--resume carries on the same model and data, or nothing."""
    folder, record = resuming
    recorded = (record.get("model") or {}).get("sha256")
    if recorded and lm.sha256 != recorded:
        raise InputError(f"the model {request.model} changed since the run started (weights hash differs)")
    if record.get("data") is not None and not same_data(record["data"], identity):
        raise InputError(f"the data files of {folder} changed since the run started (md5 differs)")


def load_request_data(request: AttackRequest, lm: LoadedModel) -> tuple[Dataset, dict[str, Any]]:
    """The request's images as the model reads them, and what run.json records of them."""
    source = open_model_data(lm, request.data_dir, request.split, request.image_size, request.classes_file)
    data = take_images(source, request.offset, request.n)
    validate_images(data.images)
    return data, data_record(source)


def same_data(recorded: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a run's recorded data is the data now: the files' fingerprints and the decoded shape agree."""
    keys = ("md5", "fingerprint", "image_shape", "split")
    return all(recorded.get(k) == now.get(k) for k in keys if k in recorded or k in now)


@contextlib.contextmanager
def _reported_to_the_other_ranks(ctx: RunContext, status: dict[str, Any]) -> Iterator[None]:
    """Under torchrun a rank that fails says so in the gather its partners wait in, then fails itself."""
    try:
        yield
    except BaseException as exc:
        if ctx.ranks.sharded:
            status["error"] = "interrupted" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else str(exc)
            with contextlib.suppress(RuntimeError):  # a partner already gone
                gather(status, ctx.ranks)
        raise


def _attack_my_shard(
    run: RunFolder,
    request: AttackRequest,
    lm: LoadedModel,
    data: Dataset,
    ctx: RunContext,
    status: dict[str, Any],
    replay: bool = False,
) -> list[tuple[int, int]]:
    """Check the model on the images, plan the chunks, attack this rank's unfinished images; the finished ranges.

    With `replay` (a resumed run) the main rank first announces the chunks finished before, so a screen shows
    their examples too and its progress starts where the run stands."""
    device = ctx.torch_device()
    out = run.path
    classes = check_classifier(lm.model, tuple(data.images.shape[1:]), device)
    check_finite_logits(lm.model, data.images, device)
    check_labels(data, classes, lm.id)
    mode = parse_target(request.target, classes)
    targets = None if mode == "all" else choose_targets(mode, data.labels, classes, request.seed, lm.model, data.images)
    per_image = classes - 1 if mode == "all" else 1
    floats = activation_floats(lm.model, data.images[:1], device)
    batch = request.batch_size or auto_batch_size(int(data.images[0].numel()), request.config.history, device, floats)
    plan = BatchPlan(
        batch,
        per_image,
        request.chunk_images,
        problem_bytes(int(data.images[0].numel()), request.config.history, floats),
        chosen="--batch-size" if request.batch_size else "auto",
    )
    shape = tuple(data.images.shape[1:])
    done = AttackFolder(out, run.record()).verified_chunks(len(data), shape)  # read and checked once, here
    if replay and ctx.ranks.main:
        _replay_chunks(out, done, lm, data, ctx)
    todo = _my_ranges(remaining(done, len(data)), ctx.ranks.shard(len(data)))
    reset_peak_memory(device)
    _attack_ranges(out, todo, done, plan, lm, data, targets, classes, request, device, ctx, status)
    status["batch"], status["peak_memory"] = plan.to_json(), peak_memory(device)
    if ctx.ranks.main:  # this process's batch and peak; under torchrun each rank's are in ranks.per_rank
        run.update(precision=status["precision"], batch=status["batch"], peak_memory=status["peak_memory"])
    return done


def chunk_event(task: str, data: Dataset, start: int, stop: int, part: dict[str, Any], done: int) -> ChunkDone:
    """The `ChunkDone` of images [start, stop) of a run on `data`: one builder for the run, its replay and followers."""
    x, label, index = data.images[start:stop], data.labels[start:stop], data.indices[start:stop]
    return ChunkDone(
        task=task, done=done, total=len(data), start=start, stop=stop, index=index, x=x, label=label, results=part
    )


def _replay_chunks(out: Path, done: list[tuple[int, int]], lm: LoadedModel, data: Dataset, ctx: RunContext) -> None:
    """A `ChunkDone` for each chunk a resumed run finished before (verified ones), in image order."""
    finished = 0
    for a, b in sorted(done):
        finished += b - a
        ctx.emit(chunk_event(f"attack {lm.id}", data, a, b, read_chunk(out, a, b), finished))


def _merge_shards(
    run: RunFolder, request: AttackRequest, lm: LoadedModel, data: Dataset, ctx: RunContext, status: dict[str, Any]
) -> AttackResult:
    """After every rank's work: rank 0 checks that every image has its chunk, merges, and hands out the result."""
    out = run.path
    try:
        statuses = gather(status, ctx.ranks)
    except RuntimeError as exc:  # a rank died (the collective lost its peer)
        raise InputError(
            f"a rank stopped ({' '.join(str(exc).split())[:160]}); the finished chunks are kept: "
            f"finish with `blindspot attack --resume {out}`"
        ) from exc
    failed = first_error(statuses)
    if failed is not None:
        raise InputError(f"{failed}; the finished chunks are kept: finish with `blindspot attack --resume {out}`")

    def merge() -> dict[str, Any]:
        shape = tuple(data.images.shape[1:])
        merged = AttackFolder(out, run.record()).verified_chunks(len(data), shape)  # every rank's, checked
        if remaining(merged, len(data)):
            raise InputError(f"images {remaining(merged, len(data))} of {out} have no valid chunk; resume the run")
        run.update(ranks={"world_size": ctx.ranks.world, "per_rank": statuses})
        return _finish(run, lm, request, data, ctx.torch_device(), run.seconds(), merged).to_json()

    return AttackResult.from_json(on_main_first(ctx.ranks, merge))


def _my_ranges(gaps: list[tuple[int, int]], shard: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of the run's unfinished ranges that fall in this rank's shard."""
    lo, hi = shard
    return [(max(a, lo), min(b, hi)) for a, b in gaps if max(a, lo) < min(b, hi)]


def _attack_ranges(
    out: Path,
    todo: list[tuple[int, int]],
    done: list[tuple[int, int]],
    plan: BatchPlan,
    lm: LoadedModel,
    data: Dataset,
    targets: torch.Tensor | None,
    classes: int,
    request: AttackRequest,
    device: torch.device,
    ctx: RunContext,
    status: dict[str, Any],
) -> None:
    """Attack the ranges `todo`, a balanced chunk at a time, each saved as it finishes (and appended to `done`).

    A chunk that runs out of memory is retried with half the problems per solver call; the failure is left
    (its traceback holds the chunk's tensors) before memory is released."""
    tally = RunTally.from_chunks(out, done)
    finished = sum(b - a for a, b in done)
    sink = _whole_run_progress(ctx.on_event, out) if ctx.ranks.sharded else ctx.on_event
    for a, b in todo:
        pos = a
        while pos < b:
            stop = pos + balanced_size(b - pos, plan.chunk)
            ctx.check_cancel()
            on_step = tally.progress(sink, finished, stop - pos, len(data))
            try:
                part = attack_chunk(
                    lm.model,
                    data.images[pos:stop],
                    data.labels[pos:stop],
                    None if targets is None else targets[pos:stop],
                    classes,
                    request.config,
                    device,
                    plan.batch,
                    on_event=on_step,
                    cancel=ctx.cancelled,
                    task=f"attack {lm.id}",
                )
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
                if not is_out_of_memory(exc):
                    raise
                part = None
            if part is None:  # out of memory: outside the handler, so the failed chunk's tensors can go
                release_memory(device)
                plan.back_off(stop - pos, device)
                continue
            save_chunk(out, pos, stop, part)
            done.append((pos, stop))
            status["images"] += stop - pos
            status["chunks"].append([pos, stop])
            tally.add(part)
            finished += stop - pos
            sink(chunk_event(f"attack {lm.id}", data, pos, stop, part, finished))
            pos = stop


def _whole_run_progress(sink: EventSink, out: Path, every: float = 1.0) -> EventSink:
    """Progress of the whole run under torchrun: images done counted from every rank's chunk files
    (their names are image ranges), read at most once a second."""
    seen = {"at": 0.0, "done": 0}

    def emit(event: Event) -> None:
        now = time.monotonic()
        if now - seen["at"] >= every or isinstance(event, ChunkDone):
            seen["at"], seen["done"] = now, covered_images(out)
        if isinstance(event, SolverStep) and event.images_done is not None:
            event = replace(event, images_done=max(event.images_done, int(seen["done"])))
        elif isinstance(event, ChunkDone):
            event = replace(event, done=max(event.done, seen["done"]))
        sink(event)

    return emit


def _finish(
    run: RunFolder,
    lm: LoadedModel,
    request: AttackRequest,
    data: Dataset,
    device: torch.device,
    seconds: float,
    chunks: list[tuple[int, int]],
) -> AttackResult:
    """Merge the run's chunks (checked when the run started, or written by it under its lock)."""
    out = run.path
    parts = [read_chunk(out, a, b) for a, b in sorted(chunks)]
    shared = [k for k in parts[0] if all(k in p for p in parts)]  # a run resumed across versions: common arrays
    merged = {k: torch.cat([p[k] for p in parts]) for k in shared}
    samples = {
        "x": data.images.contiguous(),
        "label": data.labels.contiguous(),
        "index": torch.as_tensor(data.indices).contiguous(),
        **merged,
    }
    atomic_write(out / SAMPLES_FILE, lambda p: save_file(samples, str(p)))
    result = summarize(
        samples,
        model_id=lm.id,
        model_sha256=lm.sha256,
        request=request,
        seconds=seconds,
        device=device,
        model_source=lm.source,
        random_init=lm.random_init,
    )
    result = replace(result, run=str(out))
    write_json_atomic(out / SUMMARY_FILE, result.to_json())
    attack_figure(samples, lm.model, device, out / FIGURE_FILE, seed=request.seed)
    return result
