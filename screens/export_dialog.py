"""The export window (`e` on Attack, Transfer and Bounds): the user says where the file goes.

The field starts with a suggestion inside the run folder; `~` and relative paths work; an existing file
is replaced only after a second Enter. The screen that opens it writes the file (in a worker).
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class ExportDialog(ModalScreen[Path | None]):
    """Ask for the export's file name; dismissed with the path, or None (Esc)."""

    DEFAULT_CSS = """
    ExportDialog { align: center middle; }
    ExportDialog #box { width: 90%; max-width: 100; height: auto; border: round $accent; background: $surface;
                        padding: 0 1; }
    ExportDialog #where { width: 1fr; }
    ExportDialog #note { color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "Close")]

    def __init__(self, what: str, suggested: Path) -> None:
        super().__init__()
        self.what, self.suggested = what, suggested
        self.confirmed: Path | None = None  # an existing file the user already saw named

    def compose(self) -> ComposeResult:
        with Vertical(id="box") as box:
            box.border_title = f"export {self.what}"
            yield Input(str(self.suggested), id="where", compact=True)
            yield Static("Enter writes the file · Esc closes", id="note")

    def on_mount(self) -> None:
        self.query_one("#where", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text:
            self.query_one("#note", Static).update("give a file name")
            return
        path = Path(text).expanduser()
        if path.is_dir():
            self.query_one("#note", Static).update(f"{path} is a folder: give a file name")
            return
        if path.exists() and self.confirmed != path:
            self.confirmed = path
            self.query_one("#note", Static).update(f"{path} exists: Enter again replaces it · Esc closes")
            return
        self.dismiss(path)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
