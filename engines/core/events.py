"""Typed progress events: the one vocabulary the CLI (Rich) and the TUI (Textual) both render.

Every event says where its task stands (`done` of `total`) and how it reads as one plain line, so a
generic renderer (a progress bar, a log line, the jobs panel) needs no knowledge of the kind. A
screen that shows more (the attack's sparklines, a bounds table that fills as layers finish)
matches on the event's class and reads typed fields: nothing is parsed from strings.

Two sorts: *ticks* (`Step`, `SolverStep`, `EpochDone` …) may be dropped by a throttle when they
come faster than a screen can draw; *milestones* (`ChunkDone`, `LayerBounded`, `TableDone`, …)
carry results and always pass.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class Event:
    """News from a running operation: `done` of `total` units of `task` (total None: unknown)."""

    milestone: ClassVar[bool] = False
    task: str
    done: float = 0.0
    total: float | None = None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def line(self) -> str:
        """The event as a short plain-text line (logs, progress bars)."""
        return ""


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    """A loop advanced (images through a layer, directions scored, a stage of a table)."""

    message: str = ""

    def line(self) -> str:
        return self.message


@dataclass(frozen=True, kw_only=True)
class SolverStep(Event):
    """One L-BFGS-B iteration of the attack's c search, with the run's figures so far."""

    c_step: int
    c_steps: int
    iteration: int
    objective: float
    running: int
    images_done: int = 0
    images_total: int = 0
    chunk_images: int = 0
    success_rate: float | None = None
    mean_distortion: float | None = None
    evaluations: int = 0  # forward+backward passes so far, summed over the chunk's problems

    def line(self) -> str:
        parts = [f"c-step {self.c_step}/{self.c_steps}", f"iter {self.iteration}", f"running {self.running}"]
        if self.success_rate is not None:
            parts.append(f"success {100 * self.success_rate:.1f}%")
        if self.mean_distortion is not None and math.isfinite(self.mean_distortion):
            parts.append(f"distortion {self.mean_distortion:.4f}")
        return " · ".join(parts)


@dataclass(frozen=True, kw_only=True)
class ChunkDone(Event):
    """A chunk of the attack's images is finished and saved: images [start, stop) of the run.

    `x` and `label` are the chunk's originals; `results` its per-image arrays as saved
    (x_adv, target, success, trivial, distortion, l2, linf, c).
    """

    milestone: ClassVar[bool] = True
    start: int
    stop: int
    index: Any  # dataset indices of the chunk's images
    x: Any
    label: Any
    results: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        ok = int(self.results["success"].sum()) if "success" in self.results else 0
        return f"images {self.start}–{self.stop} saved ({ok} found)"


@dataclass(frozen=True, kw_only=True)
class EpochDone(Event):
    """An epoch (Adam) or a block of iterations (L-BFGS) of training is done; with a validation split, the
    model's validation error (%) at that checkpoint (nan without one)."""

    stage: str
    loss: float
    validation_error: float = math.nan

    def line(self) -> str:
        text = f"{self.stage} loss {self.loss:.4g}"
        return text + (f" · val err {self.validation_error:.2f}%" if math.isfinite(self.validation_error) else "")


@dataclass(frozen=True, kw_only=True)
class AdversarialEpoch(EpochDone):
    """An epoch of §4.2's adversarial training: clean error over the epoch's batches (%), the pool's error
    under the model at the epoch's end (%; nan before the pool is filled), its mean age in epochs, and how many
    of its examples were regenerated at the epoch's start."""

    clean_error: float
    pool_error: float
    pool_age: float
    refreshed: int = 0

    def line(self) -> str:
        parts = [super().line(), f"clean err {self.clean_error:.2f}%"]
        if math.isfinite(self.pool_error):
            parts += [f"pool err {self.pool_error:.1f}%", f"pool age {self.pool_age:.1f}"]
        if self.refreshed:
            parts.append(f"{self.refreshed} new")
        return " · ".join(parts)


@dataclass(frozen=True, kw_only=True)
class ModelTrained(Event):
    """One model of a training request is trained and saved."""

    milestone: ClassVar[bool] = True
    model_id: str
    path: str
    metrics: dict[str, float]

    def line(self) -> str:
        return f"{self.model_id} saved to {self.path}"


@dataclass(frozen=True, kw_only=True)
class LayerBounded(Event):
    """One layer's upper frame bound is known (`bound` is a `LayerBound`, spectrum included)."""

    milestone: ClassVar[bool] = True
    bound: Any

    def line(self) -> str:
        return f"{self.bound.name} {self.bound.label}: {self.bound.upper:.4g}"


@dataclass(frozen=True, kw_only=True)
class SetReady(Event):
    """An adversarial set of the transfer matrix is computed (or read from the cache)."""

    milestone: ClassVar[bool] = True
    source: str
    cached: bool

    def line(self) -> str:
        return f"set of {self.source} {'from cache' if self.cached else 'computed'}"


@dataclass(frozen=True, kw_only=True)
class TableDone(Event):
    """A table of `reproduce` is finished."""

    milestone: ClassVar[bool] = True
    name: str

    def line(self) -> str:
        return f"{self.name} done"


EventSink = Callable[[Event], None]
CancelCheck = Callable[[], bool]


def ignore_events(_: Event) -> None:
    """Default sink for callers that do not watch progress."""


def never_cancel() -> bool:
    return False


class Throttle:
    """Pass milestones and final ticks always; other ticks of a task at most every `interval` s.

    The one place where progress is rate-limited: the CLI's bars and the TUI's messages both sit
    behind one. Thread-safe: an operation may report from a worker thread.
    """

    def __init__(self, sink: EventSink, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.interval, self.clock = sink, interval, clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if not self.admits(event):
            return
        self.sink(event)

    def admits(self, event: Event) -> bool:
        if event.milestone:
            return True
        return self.due(event.task, force=event.finished)

    def due(self, task: str, force: bool = False) -> bool:
        """Whether a tick of `task` would pass now (and count it as passed): lets a producer skip
        building an event whose figures are costly to compute."""
        now = self.clock()
        with self._lock:
            last = self._last.get(task)
            if last is not None and not force and now - last < self.interval:
                return False
            self._last[task] = now
        return True


def fan_out(*sinks: EventSink) -> EventSink:
    """One sink that forwards to several (a run log and a screen, say)."""

    def emit(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return emit
