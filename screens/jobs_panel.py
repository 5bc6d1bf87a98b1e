"""The jobs panel (`j`): every running job of the workbench, whichever screen started it; `x` cancels one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

if TYPE_CHECKING:
    from screens.state import WorkbenchState


class JobsPanel(ModalScreen):
    """Running jobs with their latest progress; refreshed twice a second while open."""

    DEFAULT_CSS = """
    JobsPanel { align: center middle; }
    JobsPanel #frame { width: 90%; max-width: 110; height: auto; max-height: 80%; border: round $accent;
                       background: $surface; padding: 0 1; }
    JobsPanel DataTable { height: auto; max-height: 16; }
    """
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("j", "dismiss", "Close", show=False),
        Binding("x", "cancel", "Cancel job"),
    ]

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__()
        self.state = state
        self.shown: list[Any] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="frame") as frame:
            frame.border_title = "jobs"
            yield DataTable(id="jobs", cursor_type="row")
            yield Static("", id="note")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#jobs", DataTable)
        table.add_columns("screen", "job", "state", "progress")
        self.refresh_rows()
        self.set_interval(0.5, self.refresh_rows)
        table.focus()

    def refresh_rows(self) -> None:
        table = self.query_one("#jobs", DataTable)
        row = table.cursor_row
        table.clear()
        running = self.state.running_jobs()
        self.shown = [job for _, job in running]
        for where, job in running:
            state = "cancelling" if job.cancelled() else "running"
            table.add_row(where, job.name, state, job.last_line or "starting …")
        if self.shown:
            table.move_cursor(row=min(row, len(self.shown) - 1))
        self.query_one("#note", Static).update(
            "x cancels the highlighted job (finished work is kept) · Esc closes" if self.shown else "no job is running"
        )

    def action_cancel(self) -> None:
        row = self.query_one("#jobs", DataTable).cursor_row
        if 0 <= row < len(self.shown):
            self.shown[row].cancel()
            self.refresh_rows()
