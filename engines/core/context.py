"""The run context: how and where an operation runs, as opposed to what it computes.

A request (one frozen dataclass per operation, stored in run.json) fixes the result: model, data,
slice, seed, budget. The context fixes everything else: the device, threads, the output folder
policy, where progress goes and how a user cancels. The CLI and the TUI each build one and hand it
to the same operation, so neither can drift from the other in what gets computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engines.core.device import resolve_device, threads_for_shared_cpu
from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, Event, EventSink, ignore_events, never_cancel


@dataclass(frozen=True)
class RunContext:
    """Device, output policy, progress sink and cancel check for one operation call."""

    device: str = "auto"
    out: Path | None = None  # the run folder; None: a new one under runs_root named for the run
    runs_root: Path = Path("runs")
    overwrite: bool = False  # allow an --out that already holds results
    threads: int | None = None  # CPU threads for torch (None: leave torch's setting)
    on_event: EventSink = ignore_events
    cancelled: CancelCheck = never_cancel

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def emit(self, event: Event) -> None:
        self.on_event(event)

    def check_cancel(self) -> None:
        """Raise `Cancelled` when the user asked to stop; call between units of work."""
        if self.cancelled():
            raise Cancelled()

    def applied(self) -> RunContext:
        """Put the context's process-wide settings in force and return it: CPU threads as asked, or
        for a CPU run one per core that other processes leave idle (see `threads_for_shared_cpu`)."""
        if self.threads is not None or self.torch_device().type == "cpu":
            torch.set_num_threads(threads_for_shared_cpu(self.threads))
        return self

    def with_out(self, out: Path | None) -> RunContext:
        return replace(self, out=out)
