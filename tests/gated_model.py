"""A model factory for tests that watch a run another process writes: the writer is held, not raced.

`--model-factory tests.gated_model:gated` is n100-100-10. In a process whose environment names a run folder
(`GATED_RUN`) and a gate file (`GATED_GO`), its forward pass waits, once the run has `GATED_AFTER` finished chunk
files, until the gate file exists: the watching test opens the gate when it has seen what it came to see (the run
listed as running, live ticks), so the run cannot end before it is watched however fast the machine is. Without
those variables (the watching process itself) it is the plain network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from engines.core.checkpoint import load_checkpoint

HOLD_AT_MOST = 300.0  # seconds: only a guard, so that a test that never opens the gate fails instead of hanging


class Gated(nn.Module):
    def __init__(self, run: Path | None, go: Path | None, after: int) -> None:
        super().__init__()
        self.net = load_checkpoint("n100-100-10").model
        self.run, self.go, self.after = run, go, after
        self.open = run is None or go is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.open and self.run is not None and self.go is not None and self._chunks() >= self.after:
            deadline = time.monotonic() + HOLD_AT_MOST
            while not self.go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.open = True
        return self.net(x)

    def _chunks(self) -> int:
        assert self.run is not None
        return len(list((self.run / "chunks").glob("*.safetensors")))


def gated() -> nn.Module:
    run, go = os.environ.get("GATED_RUN"), os.environ.get("GATED_GO")
    return Gated(Path(run) if run else None, Path(go) if go else None, int(os.environ.get("GATED_AFTER", "1")))
