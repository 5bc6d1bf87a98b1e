"""What the screens share: the workbench's settings and its active model, in one declared place.

The app owns one `WorkbenchState`; screens reach it as `self.state` (see `WorkbenchScreen`), never
through ad-hoc attributes of the app, so what a screen may read and change is written down here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Settings:
    """Where things are and how jobs run; tests shrink these to keep the app fast."""

    device: str = "auto"
    model: str = "n100-100-10"
    runs_dir: Path = Path("runs")
    data_dir: str | None = None
    models_folder: Path | None = None
    train_epochs: int | None = None
    train_max_iter: int | None = None
    attack: dict[str, Any] = field(default_factory=lambda: {"n": 64, "c_steps": 9, "max_iter": 100})
    matrix_path: Path | None = None  # a transfer matrix (matrix.json or its folder) to open first
    units_random: int | None = None
    units_images: int | None = None


class WorkbenchState:
    """Settings, the active model, checkpoints loaded by hand, and a cache of loaded models."""

    def __init__(self, settings: Settings, on_change: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.active_model = settings.model
        self.extra_models: list[dict[str, Any]] = []
        self.on_change = on_change
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def set_active_model(self, ref: str) -> None:
        """Make `ref` (zoo id or checkpoint path) the model the other screens use."""
        self.active_model = ref
        self.on_change()

    def set_device(self, device: str) -> None:
        self.settings.device = device
        self.on_change()

    def load_model(self, ref: str | None = None, device: str | None = None) -> Any:
        """Load (once) a checkpoint on a device. Call from a worker thread only."""
        from engines.core.checkpoint import load_checkpoint
        from engines.core.device import resolve_device

        ref = ref or self.active_model
        dev = resolve_device(device or self.settings.device)
        key = (ref, str(dev))
        with self._lock:
            if key not in self._models:
                self._models[key] = load_checkpoint(ref, dev)
            return self._models[key]

    def forget_models(self) -> None:
        """Drop cached models (after training wrote a checkpoint)."""
        with self._lock:
            self._models.clear()


class HasState(Protocol):
    """An app that hosts the workbench screens."""

    state: WorkbenchState
