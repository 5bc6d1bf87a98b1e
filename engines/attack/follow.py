"""Watch or reopen an attack run folder without touching it: `follow_attack(folder, ctx)`.

A screen opening a run it did not start (a CLI job, torchrun ranks, a finished run from last week) gets
the same `ChunkDone` events the run itself emits, so it draws examples and progress one way for both:
- a finished run replays samples.safetensors, slice by slice;
- a running run is polled: each chunk file that appears (from any rank) is announced once it is valid;
- an interrupted run announces the chunks it finished.
Read-only: the lock is never taken and nothing in the folder is written, so the writer is never disturbed
and a folder on a read-only mount can be followed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.attack.chunks import CHUNK_KEYS, chunk_files, chunk_is_sound, remaining
from engines.attack.folder import AttackFolder
from engines.attack.operation import AttackRequest, chunk_event, load_request_data, same_data
from engines.attack.results import AttackResult
from engines.core.context import RunContext
from engines.core.data import Dataset
from engines.core.errors import InputError
from engines.core.events import Step
from engines.core.models import load_model

REPLAY_SLICE = 64  # images per ChunkDone when a finished run's chunk files are gone


@dataclass(frozen=True)
class FollowOutcome:
    """How a followed run stands when following ends: finished (with its result) or interrupted."""

    status: str  # "finished" | "interrupted"
    result: AttackResult | None
    done: int
    total: int
    folder: Path


def follow_attack(folder: Path, ctx: RunContext, poll: float = 0.5) -> FollowOutcome:
    """Announce an attack run's finished chunks as `ChunkDone` events, and keep watching while another process
    writes it; return when it is finished or its writer is gone. A cancel (`ctx.cancelled`) stops watching."""
    attack = AttackFolder.read(folder)
    record = attack.record
    request = AttackRequest.from_json(record["request"])
    loaded = record.get("model")
    try:
        samples = attack.finished_samples()
    except InputError:
        samples = None  # damaged: announce the chunk files instead
    if samples is not None:
        model = loaded.get("id") if isinstance(loaded, dict) and loaded.get("id") else request.model
        return _replay_finished(attack, samples, f"attack {model}", ctx)
    lm = load_model(request.model, "cpu")  # for the images as the model reads them; it never runs here
    data, identity = load_request_data(request, lm)
    if record.get("data") is not None and not same_data(record["data"], identity):
        raise InputError(f"the data files of {attack.path} changed since the run started: its examples cannot be shown")
    return _watch(attack, data, f"attack {lm.id}", ctx, poll)  # the writer's task


def _replay_finished(attack: AttackFolder, samples: dict[str, Any], task: str, ctx: RunContext) -> FollowOutcome:
    """A finished run: its samples, slice by slice (the chunk files' ranges where they tile the run)."""
    data = _samples_dataset(samples)
    n = len(data)
    done = 0
    for a, b in tiling(_chunk_ranges(attack.path, n), n):
        ctx.check_cancel()
        done += b - a
        ctx.emit(chunk_event(task, data, a, b, _results(samples, a, b), done))
    return FollowOutcome("finished", attack.summary(), n, n, attack.path)


def _watch(attack: AttackFolder, data: Dataset, task: str, ctx: RunContext, poll: float) -> FollowOutcome:
    """Poll a run's chunk files until its record says done or its writer is gone."""
    folder, checksummed = attack.path, attack.checksummed
    n, shape = len(data), tuple(data.images.shape[1:])
    accepted: list[tuple[int, int]] = []
    rejected: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) of a file found unsound
    while True:
        ctx.check_cancel()
        status = _status(attack)  # read before the sweep: chunks written before "done" are all swept after
        new = _new_chunks(folder, n, shape, checksummed, accepted, rejected)
        for a, b in new:
            ctx.check_cancel()
            accepted.append((a, b))
            ctx.emit(chunk_event(task, data, a, b, attack.chunk(a, b), _covered(accepted)))
        if status == "finished":
            _announce_gaps(attack, data, task, accepted, ctx)
            return FollowOutcome("finished", attack.summary(), _covered(accepted), n, folder)
        if status != "running":
            return FollowOutcome("interrupted", None, _covered(accepted), n, folder)
        done = _covered(accepted)  # a tick per poll while the writer runs: "following", whether or not chunks came
        ctx.emit(Step(task=task, done=done, total=n, message=f"following {folder.name}: {done}/{n} images"))
        time.sleep(poll)


def _status(attack: AttackFolder) -> str:
    """finished | running | interrupted; a record that turned unreadable means the writer is gone."""
    try:
        return AttackFolder.read(attack.path).status()
    except InputError:
        return "interrupted"


def _new_chunks(
    folder: Path,
    n: int,
    shape: tuple[int, ...],
    checksummed: bool,
    accepted: list[tuple[int, int]],
    rejected: dict[str, tuple[int, int]],
) -> list[tuple[int, int]]:
    """Chunk files not announced yet that pass `valid_chunks`' checks, each file read only when new or changed."""
    found: list[tuple[int, int]] = []
    for path, a, b in chunk_files(folder):
        try:
            stat = path.stat()
        except OSError:
            continue
        taken = accepted + found
        if (a, b) in accepted or not (0 <= a < b <= n) or any(a < d and c < b for c, d in taken):
            continue
        key = (stat.st_mtime_ns, stat.st_size)
        if rejected.get(path.name) == key:
            continue
        if chunk_is_sound(path, b - a, shape, checksummed):
            found.append((a, b))
            rejected.pop(path.name, None)
        else:
            rejected[path.name] = key  # damaged: looked at again only if it is rewritten (a resume)
    return found


def _announce_gaps(
    attack: AttackFolder, data: Dataset, task: str, accepted: list[tuple[int, int]], ctx: RunContext
) -> None:
    """A finished run's images no chunk file covered (files removed or damaged since), from its samples."""
    gaps = remaining(accepted, len(data))
    if not gaps:
        return
    try:
        samples = attack.samples()
    except InputError:
        return
    for a, b in tiling([], len(data), gaps):
        accepted.append((a, b))
        ctx.emit(chunk_event(task, data, a, b, _results(samples, a, b), _covered(accepted)))


def tiling(
    ranges: list[tuple[int, int]], n: int, within: list[tuple[int, int]] | None = None, step: int = REPLAY_SLICE
) -> list[tuple[int, int]]:
    """Slices covering `within` (default [0, n)) once each: the given ranges where they fit, `step` images elsewhere."""
    spans = within if within is not None else [(0, n)]
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        pos = lo
        for a, b in sorted(r for r in ranges if lo <= r[0] and r[1] <= hi):
            if a < pos:
                continue  # overlaps one already taken
            out += _steps(pos, a, step)
            out.append((a, b))
            pos = b
        out += _steps(pos, hi, step)
    return out


def _steps(a: int, b: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(s + step, b)) for s in range(a, b, step)]


def _chunk_ranges(folder: Path, n: int) -> list[tuple[int, int]]:
    """The image ranges the chunk files' names say (names only: the arrays come from the samples)."""
    return [(a, b) for _, a, b in chunk_files(folder) if 0 <= a < b <= n]


def _samples_dataset(samples: dict[str, Any]) -> Dataset:
    index = samples.get("index")
    indices = index.numpy() if index is not None else np.arange(len(samples["label"]))
    return Dataset(samples["x"], samples["label"], "", indices)


def _results(samples: dict[str, Any], a: int, b: int) -> dict[str, Any]:
    return {k: samples[k][a:b] for k in CHUNK_KEYS if k in samples}


def _covered(ranges: list[tuple[int, int]]) -> int:
    return sum(b - a for a, b in ranges)
