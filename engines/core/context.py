"""The run context: how and where an operation runs, as opposed to what it computes.

A request (one frozen dataclass per operation, stored in run.json) fixes the result: model, data,
slice, seed, budget. The context fixes everything else: the device, its float32 precision (TF32), threads,
the output folder policy, where progress goes and how a user cancels. The CLI and the TUI each build one and hand it
to the same operation, so neither can drift from the other in what gets computed or written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.core.device import resolve_device, threads_for_shared_cpu
from engines.core.distributed import Ranks
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
    ranks: Ranks = Ranks()  # this process's rank in a torchrun job (one rank without torchrun)
    tf32: bool = False  # let float32 products and convolutions run in TF32 on GPUs (faster, ~1e-3 relative error)

    def torch_device(self) -> torch.device:
        """The device asked for; under torchrun each rank's CUDA device is its LOCAL_RANK (`--device cuda`)."""
        device = resolve_device(self.device)
        if self.ranks.sharded and device.type == "cuda" and self.device in ("auto", "cuda"):
            device = resolve_device(f"cuda:{self.ranks.local_rank}")
        return device

    def emit(self, event: Event) -> None:
        self.on_event(event)

    def check_cancel(self) -> None:
        """Raise `Cancelled` when the user asked to stop; call between units of work."""
        if self.cancelled():
            raise Cancelled()

    def applied(self) -> RunContext:
        """Put the context's process-wide settings in force and return it: CPU threads as asked, or
        for a CPU run one per core that other processes leave idle (see `threads_for_shared_cpu`)."""
        if self.threads is None and self.ranks.sharded and self.torch_device().type == "cpu":
            # the ranks of one node share its cores: probing for idle ones at once, each would take them all
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
        elif self.threads is not None or self.torch_device().type == "cpu":
            torch.set_num_threads(threads_for_shared_cpu(self.threads))
        return self
