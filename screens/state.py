"""What the screens share: the workbench's settings and its active model, in one declared place.

The app owns one `WorkbenchState`; screens reach it as `self.state` (see `WorkbenchScreen`), never
through ad-hoc attributes of the app, so what a screen may read and change is written down here.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from screens.jobs import Job


@dataclass
class Settings:
    """Where things are and how jobs run; tests shrink these to keep the app fast."""

    device: str = "auto"
    model: str | dict[str, Any] = "n100-100-10"  # a ModelRef's JSON: zoo id, path, torchvision name (+ weights)
    runs_dir: Path = Path("runs")
    data_dir: str | None = None
    models_folder: Path | None = None
    train_epochs: int | None = None
    train_max_iter: int | None = None
    attack: dict[str, Any] = field(default_factory=dict)  # the attack form's values; unset: the declared defaults
    matrix_path: Path | None = None  # a transfer matrix (matrix.json or its folder) to open first
    units_random: int | None = None
    units_images: int | None = None
    zoom: dict[str, int] = field(default_factory=dict)  # image grid zoom per screen (z / Z): 0 is the legible minimum


REMEMBERED = ("model", "device", "data_dir", "runs_dir", "attack", "zoom")  # what the workbench keeps across restarts


def settings_file() -> Path:
    """`$XDG_CONFIG_HOME/blindspot/workbench.json` (default `~/.config/blindspot/workbench.json`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "blindspot" / "workbench.json"


def read_remembered(path: Path) -> tuple[dict[str, Any], str]:
    """The choices saved by the last session, and a note when the file was unusable (then nothing is used)."""
    if not path.is_file():
        return {}, ""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"ignored the saved workbench settings in {path} ({type(exc).__name__})"
    if not isinstance(saved, dict):
        return {}, f"ignored the saved workbench settings in {path} (not a JSON object)"
    return {k: v for k, v in saved.items() if k in REMEMBERED}, ""


def remembered_settings(path: Path) -> tuple[Settings, str]:
    """Default settings with the last session's choices applied (wrongly typed values are skipped)."""
    saved, note = read_remembered(path)
    settings = Settings()
    for key, value in saved.items():
        if key == "runs_dir" and isinstance(value, str):
            settings.runs_dir = Path(value)
        elif key == "attack" and isinstance(value, dict):
            settings.attack = {**settings.attack, **value}
        elif key == "model" and isinstance(value, (str, dict)):
            settings.model = value
        elif key == "device" and isinstance(value, str):
            settings.device = value
        elif key == "data_dir" and (value is None or isinstance(value, str)):
            settings.data_dir = value
        elif key == "zoom" and isinstance(value, dict):
            settings.zoom = {str(k): int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
    return settings, note


class WorkbenchState:
    """Settings, the active model, checkpoints loaded by hand, and a cache of loaded models.

    With a `store` (a settings file: `blindspot tui` passes one, tests do not), each choice made in
    the app (model, device, the attack form) is written there and restored at the next start;
    options given on the command line hold for their session only, unless changed in the app.
    """

    def __init__(
        self, settings: Settings, on_change: Callable[[], None] = lambda: None, store: Path | None = None
    ) -> None:
        from engines.core.models import as_model_ref

        self.settings = settings
        self.store = store
        self.active_ref = as_model_ref(settings.model)
        self.extra_models: list[dict[str, Any]] = []
        self.jobs: list[tuple[str, Job]] = []  # (screen label, Job) of every job started, for the jobs panel
        self.on_change = on_change
        self._models: dict[tuple[str, str], Any] = {}
        self._loading: dict[tuple[str, str], threading.Lock] = {}  # one per model: loads of others go on meanwhile
        self._lock = threading.Lock()  # guards the two dicts

    @property
    def active_model(self) -> str:
        """The active model's name as screens show it (zoo id, path, torchvision name or factory)."""
        return str(self.active_ref)

    def set_active_model(self, ref: Any) -> None:
        """Make `ref` (a ModelRef, or its JSON: zoo id, checkpoint path, torchvision name) the model every screen uses."""
        from engines.core.models import as_model_ref

        self.active_ref = as_model_ref(ref)
        self.remember(model=self.active_ref.to_json())
        self.on_change()

    def set_data(self, path: str | None) -> None:
        """The data every screen attacks, scores and trains on (None: the shipped MNIST)."""
        self.settings.data_dir = path
        self.remember(data_dir=path)
        self.on_change()

    def set_device(self, device: str) -> None:
        self.settings.device = device
        self.remember(device=device)
        self.on_change()

    def track_job(self, where: str, job: Job) -> None:
        """A job started on screen `where`; finished ones are dropped as new ones come."""
        self.jobs = [(w, j) for w, j in self.jobs if j.running] + [(where, job)]
        self.on_change()

    def running_jobs(self) -> list[tuple[str, Any]]:
        return [(w, j) for w, j in self.jobs if j.running]

    def remember(self, **choices: Any) -> None:
        """Keep choices made in the app for the next session (merged into the settings file, atomically)."""
        if self.store is None:
            return
        from engines.core.io import write_json_atomic

        saved, _ = read_remembered(self.store)
        saved.update({k: str(v) if isinstance(v, Path) else v for k, v in choices.items() if k in REMEMBERED})
        with contextlib.suppress(OSError):  # an unwritable config folder costs the memory of choices, not the session
            write_json_atomic(self.store, saved)

    def load_model(self, ref: Any = None, device: str | None = None) -> Any:
        """Load (once) any model the CLI can load (zoo id, checkpoint, torchvision name, factory) on a device,
        through the same `engines.core.models.load_model`. Call from a worker thread only.

        Worker threads share the cache: two asking for one model get one copy, loaded once (the second waits
        for the first), while a model asked for meanwhile loads in parallel. A cached model is in eval mode
        and only read (forward passes), which PyTorch allows from several threads at once."""
        from engines.core.device import resolve_device
        from engines.core.models import as_model_ref, load_model

        model_ref = as_model_ref(ref if ref is not None else self.active_ref)
        dev = resolve_device(device or self.settings.device)
        key = (json.dumps(model_ref.to_json(), sort_keys=True), str(dev))
        with self._lock:
            if key in self._models:
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:  # loaded by the thread this one waited for
                    return self._models[key]
            loaded = load_model(model_ref, dev)
            with self._lock:
                self._models[key] = loaded
                self._loading.pop(key, None)
            return loaded

    def forget_models(self) -> None:
        """Drop cached models (after training wrote a checkpoint), and the GPU memory they held."""
        from engines.core.memory import release_memory

        with self._lock:
            devices = {device for _, device in self._models}
            self._models.clear()
        for device in devices:
            release_memory(device)


class HasState(Protocol):
    """An app that hosts the workbench screens."""

    state: WorkbenchState
