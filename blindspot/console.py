"""Rich output for the CLI: machine output on stdout, progress and logs on stderr."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engines.core.context import RunContext
from engines.core.distributed import close_distributed, init_distributed, wait_for_ranks
from engines.core.errors import BlindspotError, Cancelled
from engines.core.events import Event, EventSink, Throttle, ignore_events
from engines.core.io import json_text

EXIT_BAD_INPUT = 2
# Piped or logged tables are read and copied from, not fitted to a screen: give them room unless COLUMNS says
PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
err = Console(stderr=True)
out = Console(width=PIPE_WIDTH)


def note(text: str) -> None:
    """A log line on stderr, printed as it is: paths and ids may hold brackets that Rich would read as markup."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


class _EngineLogLines(logging.Handler):
    """Engine warnings (cache fallback, a checkpoint met with other data) as plain lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        note(record.getMessage())


def route_engine_warnings(to_stderr: bool = True) -> None:
    """Send the engines' warnings to stderr as log lines (once per process), or stop (the workbench owns
    the terminal and shows them itself)."""
    log = logging.getLogger("engines")
    mine = [h for h in log.handlers if isinstance(h, _EngineLogLines)]
    if not to_stderr:
        for handler in mine:
            log.removeHandler(handler)
    elif not mine:
        log.addHandler(_EngineLogLines(logging.WARNING))


def quiet_rank() -> None:
    """Under torchrun only rank 0 speaks: the other ranks' tables, JSON and notes would repeat it N times."""
    out.quiet = True
    err.quiet = True


def print_json(obj: Any) -> None:
    """Plain, strict JSON on stdout (no Rich markup; NaN as null), for scripts."""
    if out.quiet:
        return
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


def _count(event: Event) -> str:
    return f"{event.done:g}/{event.total:g}" if event.total is not None else f"{event.done:g}"


@contextmanager
def progress_log(min_interval: float = 10.0) -> Iterator[EventSink]:
    """Plain progress lines for logs and pipes, where live bars would print nothing until the end."""

    def write(event: Event) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {event.task}: {_count(event)} {event.line()}".rstrip() + "\n")
        sys.stderr.flush()

    yield Throttle(write, min_interval, clock=lambda: time.monotonic())


@contextmanager
def progress_sink(min_interval: float = 0.1) -> Iterator[EventSink]:
    """Operation events on stderr: live Rich bars in a terminal, timestamped lines otherwise."""
    if not err.is_terminal:
        with progress_log() as on_event:
            yield on_event
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

    def draw(event: Event) -> None:
        task_id = tasks.get(event.task)
        if task_id is None:
            task_id = tasks[event.task] = bars.add_task(event.task, total=event.total, info="")
        bars.update(task_id, completed=event.done, total=event.total, info=event.line())

    with bars:
        yield Throttle(draw, min_interval)


class CtrlC:
    """First Ctrl-C asks the running operation to stop (it keeps finished work); a second one aborts."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None
        self._previous_term: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._previous_term = signal.signal(signal.SIGTERM, self._terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            signal.signal(signal.SIGTERM, self._previous_term)

    def _terminate(self, _sig: int, _frame: Any) -> None:
        """SIGTERM (torchrun stopping the ranks when one died, a batch system's time limit): stop now, with the
        run marked interrupted and the line that says how to resume."""
        raise KeyboardInterrupt

    def _handle(self, _sig: int, _frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        note("stopping after the current step (Ctrl-C again aborts at once)")

    def __call__(self) -> bool:
        return self.pressed


@contextmanager
def cli_context(
    device: str,
    *,
    out: Path | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    hint: str = "finished results were kept",
) -> Iterator[RunContext]:
    """The run context of a CLI command: progress on stderr, Ctrl-C cancels; an interruption says
    how to go on (`hint`) and exits 130.

    Under torchrun (`torchrun --nproc-per-node N -m blindspot …`) each process joins the job as its rank;
    rank 0 shows the progress of the whole run and prints the result, the others stay quiet."""
    ranks = init_distributed(device)
    if not ranks.main:
        quiet_rank()
    try:
        with progress_sink() if ranks.main else nullcontext(ignore_events) as on_event, CtrlC() as ctrl_c:
            yield RunContext(
                device=device,
                out=out,
                overwrite=overwrite,
                threads=threads,
                on_event=on_event,
                cancelled=ctrl_c,
                ranks=ranks,
            ).applied()
    except (Cancelled, KeyboardInterrupt):
        note(f"interrupted: {hint}")
        raise typer.Exit(130) from None
    except Exception as exc:
        if not ranks.sharded:
            raise
        # under torchrun: rank 0 says what went wrong (a failed rank's error reaches it through the
        # operation), the others end quietly; nobody leaves before rank 0 has said it
        bad_input = isinstance(exc, BlindspotError)
        note(f"error: {' '.join(str(exc).split())}" if bad_input else f"error: {type(exc).__name__}: {exc}")
        wait_for_ranks()
        raise typer.Exit(EXIT_BAD_INPUT if bad_input else 1) from None
    else:
        wait_for_ranks()  # no rank tears the group down while a partner still talks to it (gloo may abort)
    finally:
        close_distributed()
