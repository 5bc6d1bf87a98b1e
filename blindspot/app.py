"""The Textual workbench shell: five screens on number keys, shared settings, the active model.

`run_app` imports textual-image first (its terminal detection only works before Textual owns the
terminal), then builds and runs the app. Screens are thin: every engine call runs in a worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from screens import graphics

SCREENS = (
    ("models", "1", "Models", "the model zoo and loaded checkpoints; pick the active model, train"),
    ("gallery", "2", "Gallery", "top images of units and random directions of a layer (§3)"),
    ("attack", "3", "Attack", "the box-constrained L-BFGS attack, streamed live (§4.1)"),
    ("transfer", "4", "Transfer", "cross-model generalisation of adversarial examples (Table 2)"),
    ("bounds", "5", "Bounds", "per-layer frame bounds and singular-value spectra (Table 5)"),
)


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
    matrix: Path | None = None
    units_random: int | None = None
    units_images: int | None = None


class BlindspotApp(App):
    """Find and explain the blind spots of neural networks (Szegedy et al. 2013)."""

    TITLE = "blindspot"
    CSS = """
    Screen { layout: vertical; }
    .status { height: auto; max-height: 3; color: $text-muted; padding: 0 1; }
    .error { color: $error; }
    .title { text-style: bold; padding: 0 1; }
    """
    MODES = {}  # filled in __init__ (imports stay lazy)
    BINDINGS = [Binding("q", "quit", "Quit", show=False)]  # the screens show 1–5, x and q in their footers

    def __init__(self, settings: Settings | None = None, graphics_mode: str | None = None) -> None:
        from screens.attack import AttackScreen
        from screens.bounds import BoundsScreen
        from screens.gallery import GalleryScreen
        from screens.models import ModelsScreen
        from screens.transfer import TransferScreen

        self.MODES = {
            "models": ModelsScreen,
            "gallery": GalleryScreen,
            "attack": AttackScreen,
            "transfer": TransferScreen,
            "bounds": BoundsScreen,
        }
        super().__init__()
        if graphics_mode is not None or not graphics.configured():
            graphics.configure(graphics_mode or "halfblock")  # before App.run: textual-image must not ask later
        self.settings = settings or Settings()
        self.active_model = self.settings.model
        self.extra_models: list[dict[str, Any]] = []
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def on_mount(self) -> None:
        self.switch_mode("models")
        self.update_subtitle()

    def update_subtitle(self) -> None:
        """Show the active model and device (window title and the screens' top line)."""
        self.sub_title = f"model {Path(self.active_model).name} · device {self.settings.device}"
        from screens.widgets import NavBar

        for nav in self.screen.query(NavBar):
            nav.refresh()

    # -------------------------------------------------------------- models
    def set_active_model(self, ref: str) -> None:
        """Make `ref` (zoo id or checkpoint path) the model the other screens use."""
        self.active_model = ref
        self.update_subtitle()

    def load_model(self, ref: str | None = None, device: str | None = None) -> Any:
        """Load (once) a checkpoint on a device. Call from a worker thread only."""
        from engines.checkpoint import load_checkpoint
        from engines.device import resolve_device

        ref = ref or self.active_model
        dev = resolve_device(device or self.settings.device)
        key = (ref, str(dev))
        with self._lock:
            if key not in self._models:
                self._models[key] = load_checkpoint(ref, dev)
            return self._models[key]

    def forget_models(self) -> None:
        """Drop cached models (after training rewrote a checkpoint)."""
        with self._lock:
            self._models.clear()

    # ------------------------------------------------------------- palette
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette lists the screens and every action of the current screen."""
        for mode, key, label, help_text in SCREENS:
            yield SystemCommand(f"{label} screen ({key})", help_text, lambda m=mode: self.switch_mode(m))
        seen = set()
        for cls in type(screen).__mro__:
            for binding in cls.__dict__.get("BINDINGS", []):
                if not isinstance(binding, Binding) or not binding.show or binding.action in seen:
                    continue
                seen.add(binding.action)
                yield SystemCommand(
                    f"{binding.description} ({binding.key})",
                    f"{screen.__class__.__name__.removesuffix('Screen')}: {binding.description}",
                    lambda a=binding.action, s=screen: self.run_action(a, s),
                )
        yield from super().get_system_commands(screen)

    async def action_quit(self) -> None:
        """Cancel every running job (engines stop between iterations), then leave."""
        for stack in self._screen_stacks.values():
            for screen in stack:
                cancel = getattr(screen, "cancel_all", None)
                if cancel:
                    cancel()
        self.exit()


def run_app(graphics: str = "auto", settings: Settings | None = None) -> None:
    """Entry point of `blindspot tui`: detect the terminal's graphics, then run the workbench."""
    from screens import graphics as gfx

    gfx.configure(graphics)  # imports textual-image while the terminal can still answer its queries
    BlindspotApp(settings).run()
