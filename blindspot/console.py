"""Rich output for the CLI: machine output on stdout, progress and logs on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engines.events import Progress as EngineProgress
from engines.events import ProgressCallback

err = Console(stderr=True)
out = Console()


def print_json(obj: Any) -> None:
    """Plain JSON on stdout (no Rich markup), for scripts."""
    sys.stdout.write(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n")
    sys.stdout.flush()


def _format_info(info: dict[str, Any]) -> str:
    parts = []
    for key, value in info.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key}={value}")
    return " ".join(parts)


@contextmanager
def progress_sink(min_interval: float = 0.1) -> Iterator[ProgressCallback]:
    """A callback that renders engine progress events as Rich bars on stderr."""
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
