"""Rich output for the CLI: machine output on stdout, progress and logs on stderr."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engines.events import Progress as EngineProgress
from engines.events import ProgressCallback
from engines.io import json_text

# Piped or logged tables are read and copied from, not fitted to a screen: give them room unless COLUMNS says
PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
err = Console(stderr=True)
out = Console(width=PIPE_WIDTH)


def note(text: str) -> None:
    """A log line on stderr, printed as it is: paths and ids may hold brackets that Rich would read as markup."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def resumable(hint: str) -> Iterator[None]:
    """On Ctrl-C, say how to go on from what was kept, then exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        note(f"interrupted: {hint}")
        raise typer.Exit(130) from None


def print_json(obj: Any) -> None:
    """Plain, strict JSON on stdout (no Rich markup; NaN as null), for scripts."""
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


def _format_info(info: dict[str, Any]) -> str:
    parts = []
    for key, value in info.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _count(event: EngineProgress) -> str:
    return f"{event.done:g}/{event.total:g}" if event.total is not None else f"{event.done:g}"


@contextmanager
def progress_log(min_interval: float = 10.0) -> Iterator[ProgressCallback]:
    """Plain progress lines for logs and pipes, where live bars would print nothing until the end."""
    last: dict[str, float] = {}

    def on_progress(event: EngineProgress) -> None:
        now = time.monotonic()
        first = event.task not in last
        final = event.total is not None and event.done >= event.total
        if not (first or final) and now - last[event.task] < min_interval:
            return
        last[event.task] = now
        info = event.message or _format_info(event.info)
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {event.task}: {_count(event)} {info}".rstrip() + "\n")
        sys.stderr.flush()

    yield on_progress


@contextmanager
def progress_sink(min_interval: float = 0.1) -> Iterator[ProgressCallback]:
    """Engine progress on stderr: live Rich bars in a terminal, timestamped lines otherwise."""
    if not err.is_terminal:
        with progress_log() as on_progress:
            yield on_progress
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        transient=False,
    )
    tasks: dict[str, Any] = {}
    last = [0.0]

    def on_progress(event: EngineProgress) -> None:
        task_id = tasks.get(event.task)
        if task_id is None:
            task_id = tasks[event.task] = bars.add_task(event.task, total=event.total, info="")
        final = event.total is not None and event.done >= event.total
        now = time.monotonic()
        if not final and now - last[0] < min_interval:
            return
        last[0] = now
        bars.update(task_id, completed=event.done, total=event.total, info=event.message or _format_info(event.info))

    with bars:
        yield on_progress
