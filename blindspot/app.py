"""The Textual workbench shell: six screens on number keys, shared settings, the active model.

`run_app` imports textual-image first (its terminal detection only works before Textual owns the
terminal), then builds and runs the app. Screens are thin: every engine call runs in a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from screens import graphics
from screens.state import Settings, WorkbenchState

SCREENS = (
    ("models", "1", "Models", "the model zoo and loaded checkpoints; pick the active model, train"),
    ("gallery", "2", "Gallery", "top images of units and random directions of a layer (§3)"),
    ("attack", "3", "Attack", "the box-constrained L-BFGS attack, streamed live (§4.1)"),
    ("transfer", "4", "Transfer", "cross-model generalisation of adversarial examples (Table 2)"),
    ("bounds", "5", "Bounds", "per-layer frame bounds and singular-value spectra (Table 5)"),
    ("runs", "6", "Runs", "every run folder: reopen, resume an interrupted attack, watch a running one"),
)


class _EngineWarnings(logging.Handler):
    """Engine warnings reach the workbench from worker threads; without this they went to a hidden stderr."""

    def __init__(self, app: BlindspotApp) -> None:
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        self.app.post_message(EngineWarning(record.getMessage()))  # thread-safe, and never waits for the app


class EngineWarning(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


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
    BINDINGS = [Binding("q", "quit", "Quit", show=False)]  # the screens show 1–6, x and q in their footers

    def __init__(
        self,
        settings: Settings | None = None,
        graphics_mode: str | None = None,
        store: Path | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        from screens.attack import AttackScreen
        from screens.bounds import BoundsScreen
        from screens.gallery import GalleryScreen
        from screens.models import ModelsScreen
        from screens.runs import RunsScreen
        from screens.transfer import TransferScreen

        self.MODES = {  # type: ignore[misc]  # set here, not on the class: the screens import only when an app is made
            "models": ModelsScreen,
            "gallery": GalleryScreen,
            "attack": AttackScreen,
            "transfer": TransferScreen,
            "bounds": BoundsScreen,
            "runs": RunsScreen,
        }
        super().__init__()
        if graphics_mode is not None or not graphics.configured():
            graphics.configure(graphics_mode or "halfblock")  # before App.run: textual-image must not ask later
        self.state = WorkbenchState(settings or Settings(), on_change=self.update_subtitle, store=store)
        self.startup_notes = notes

    def on_mount(self) -> None:
        self.warnings: list[str] = []
        self._warning_lines = _EngineWarnings(self)
        logging.getLogger("engines").addHandler(self._warning_lines)
        self.switch_mode("models")
        self.update_subtitle()
        for note in self.startup_notes:
            self.notify(note, severity="warning", timeout=10)

    def on_unmount(self) -> None:
        logging.getLogger("engines").removeHandler(self._warning_lines)

    def on_engine_warning(self, event: EngineWarning) -> None:
        """An engine's warning (cache fallback, a checkpoint met with other data): kept and shown as a toast."""
        message = event.text
        self.warnings.append(message)
        self.notify(message.removeprefix("warning: "), title="warning", severity="warning", timeout=10)

    def update_subtitle(self) -> None:
        """Show the active model and device (window title and the screens' top line)."""
        self.sub_title = f"model {Path(self.state.active_model).name} · device {self.state.settings.device}"
        from screens.widgets import NavBar

        for nav in self.screen.query(NavBar):
            nav.refresh()

    # ------------------------------------------------------------- palette
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette lists the screens and every action of the current screen."""
        for mode, key, label, help_text in SCREENS:
            yield SystemCommand(f"{label} screen ({key})", help_text, lambda m=mode: self.switch_mode(m))
        if hasattr(screen, "action_help"):
            yield SystemCommand("Help (?)", "what this screen shows and its keys", lambda s=screen: s.action_help())
        seen = set()
        for cls in type(screen).__mro__:
            for binding in cls.__dict__.get("BINDINGS", []):
                if not isinstance(binding, Binding) or not binding.show or binding.action in seen:
                    continue
                if binding.action.startswith("app.switch_mode"):
                    continue  # the screens are listed above, once
                seen.add(binding.action)
                yield SystemCommand(
                    f"{binding.description} ({binding.key})",
                    f"{screen.__class__.__name__.removesuffix('Screen')}: {binding.description}",
                    lambda a=binding.action, s=screen: self.run_action(a, s),
                )
        for command in super().get_system_commands(screen):
            if command.title not in ("Keys", "Quit"):  # our Help (?) and Quit (q) are listed above
                yield command

    async def action_quit(self) -> None:
        """Cancel every running job (engines stop between iterations), then leave."""
        for stack in self._screen_stacks.values():
            for screen in stack:
                cancel = getattr(screen, "cancel_all", None)
                if cancel:
                    cancel()
        self.exit()


def create_app(
    settings: Settings | None = None,
    graphics_mode: str | None = None,
    store: Path | None = None,
    notes: tuple[str, ...] = (),
) -> BlindspotApp:
    """The one way to build the workbench: used by `blindspot tui`, the tests and the screenshot script.

    `store`: the settings file that keeps choices across sessions (None: remember nothing, as in tests)."""
    return BlindspotApp(settings, graphics_mode, store, notes)


def run_app(
    graphics: str = "auto", settings: Settings | None = None, store: Path | None = None, notes: tuple[str, ...] = ()
) -> None:
    """Entry point of `blindspot tui`: detect the terminal's graphics, then run the workbench."""
    from screens import graphics as gfx

    gfx.configure(graphics)  # imports textual-image while the terminal can still answer its queries
    notes = (*notes, gfx.notice()) if gfx.notice() else notes
    create_app(settings, store=store, notes=notes).run()
