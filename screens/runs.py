"""Screen 6, Runs: every run folder under the runs root, newest first; reopen, resume or watch one.

Rows come from `engines.kinds.list_runs` (run.json, each kind's result files' names and figures; no
arrays are read), refreshed every two seconds, so a run written by another process (a CLI job, torchrun
ranks) shows its progress here. Enter hands the folder to the screen that shows its kind: an attack to the
Attack screen (all its examples, live while it runs, read-only), a matrix to Transfer, bounds to Bounds,
a checkpoint to Models; other kinds open their report in a window. `R` resumes an interrupted attack.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from screens.jobs import WorkbenchScreen
from screens.widgets import NavBar, cursor_item

if TYPE_CHECKING:
    from engines.core.run_index import RunEntry

REFRESH_S = 2.0
WIDE = 110  # from this width the table has a data column (the details line always names the data)
STATUS_STYLE = {"running": "bold yellow", "interrupted": "red", "finished": "green", "damaged": "bold red"}
S = TypeVar("S", bound=Screen)


def _when(started: float) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(started)) if started else "—"


class RunsScreen(WorkbenchScreen):
    """What has been run, what is running, what stopped half-way: one list, one key to go on."""

    DEFAULT_CSS = """
    RunsScreen #runs { height: 1fr; }
    RunsScreen #details { height: auto; max-height: 4; padding: 0 1; border-top: solid $panel-lighten-2; }
    """
    BINDINGS = [
        Binding("enter", "open_run", "Open"),
        Binding("R", "resume", "Resume"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[RunEntry] = []
        self._listing = False
        self.wide = False

    def compose(self) -> ComposeResult:
        yield NavBar("runs")
        table: DataTable = DataTable(id="runs", cursor_type="row", zebra_stripes=True, fixed_columns=1)
        table.border_title = "runs"
        yield table
        yield Static("", id="details")
        yield Static("Enter opens the highlighted run · R resumes an interrupted attack", id="status", classes="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        self.wide = self.app.size.width >= WIDE
        for label, key, width in (
            ("started", "when", 11),
            ("kind", "kind", 9),
            ("model", "model", 12 if not self.wide else 16),
            *((("data", "data", 14),) if self.wide else ()),
            ("status", "status", 11),
            ("figures", "figures", None),
        ):
            table.add_column(label, key=key, width=width)
        self.action_refresh()
        self.set_interval(REFRESH_S, self.refresh_if_shown)
        table.focus()

    def refresh_if_shown(self) -> None:
        if self.is_current:
            self.action_refresh()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.action_refresh()

    def focus_main(self) -> None:
        self.query_one("#runs", DataTable).focus()

    # ---------------------------------------------------------------- listing
    def action_refresh(self) -> None:
        """Read the runs root again (in a thread: a shared file system may be slow); one listing at a time."""
        if self._listing or not self.is_attached:
            return
        self._listing = True
        root = Path(self.state.settings.runs_dir).expanduser()

        def work() -> None:
            from engines.kinds import list_runs

            try:
                entries = list_runs(root)
            finally:
                self._listing = False
            self.app.call_from_thread(self.show_entries, entries)

        self.run_worker(work, thread=True, group="runs-list", exit_on_error=False)

    def show_entries(self, entries: list[RunEntry]) -> None:
        table = self.query_one("#runs", DataTable)
        if entries and entries == self.entries:
            return  # nothing changed on disk: keep the table (and where the user scrolled it) as it is
        keep = self.highlighted()
        self.entries = entries
        table.clear()
        for e in entries:
            progress = f"{e.done}/{e.total} images" if e.status in ("running", "interrupted") and e.total else ""
            cells: list[str | Text] = [_when(e.started), e.kind, e.model, *([e.data] if self.wide else [])]
            cells += [
                Text(e.status, style=STATUS_STYLE.get(e.status, "")),
                " · ".join(p for p in (progress, self.why(e) or e.figures) if p),
            ]
            table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells), key=str(e.path))  # no markup
        if keep is not None:
            row = next((i for i, e in enumerate(entries) if e.path == keep.path), 0)
            table.move_cursor(row=row)
        self.show_details()
        if not entries:
            self.query_one("#details", Static).update(
                f"no runs under {self.state.settings.runs_dir} yet: start an attack (3), a matrix (4), bounds (5) …"
            )

    @staticmethod
    def why(entry: RunEntry) -> str:
        """Why a run is damaged, without its folder's path (the row and the details line name the folder)."""
        return entry.error.replace(f"{entry.path}/", "").replace(str(entry.path), "the folder")

    def highlighted(self) -> RunEntry | None:
        return cursor_item(self.query_one("#runs", DataTable), self.entries)

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self.show_details()

    def show_details(self) -> None:
        e = self.highlighted()
        if e is None:
            return
        took = f" · {e.seconds:.1f} s" if e.seconds else ""
        what = {
            "running": "Enter watches it live (read-only: x stops watching, the run goes on)",
            "interrupted": "R resumes it here" if e.kind == "attack" else "start it again from its screen",
            "finished": "Enter opens it",
            "damaged": "cannot be opened",
        }.get(e.status, "")
        figures = f" · {self.why(e) or e.figures}" if (e.error or e.figures) else ""
        self.query_one("#details", Static).update(
            f"[b]{escape(e.path.name)}[/b]{took}\n{escape(e.model)} on {escape(e.data or '—')}{escape(figures)}\n"
            f"{e.kind} · {e.status} · {what}"
        )

    # ---------------------------------------------------------------- actions
    async def go_to(self, mode: str, kind: type[S]) -> S:
        """Switch to `mode` with its own screen on top (a window left open there, help or an image, is closed);
        that screen."""
        await self.app.switch_mode(mode)
        while len(self.app.screen_stack) > 1:
            await self.app.pop_screen()
        screen = self.app.screen
        assert isinstance(screen, kind), f"the {mode} mode shows {type(screen).__name__}"
        return screen

    async def on_data_table_row_selected(self, _: DataTable.RowSelected) -> None:
        await self.action_open_run()

    async def action_open_run(self) -> None:
        """Hand the run to the screen that shows its kind."""
        e = self.highlighted()
        if e is None:
            return
        if e.status == "damaged":
            self.say(f"{e.path.name} is damaged: {self.why(e)}", error=True)
            return
        if e.kind == "attack":
            from screens.attack import AttackScreen

            (await self.go_to("attack", AttackScreen)).show_run(e.path)
        elif e.kind == "transfer" and e.status == "finished":
            from screens.transfer import TransferScreen

            (await self.go_to("transfer", TransferScreen)).open(str(e.path))
        elif e.kind == "bounds" and e.status == "finished":
            from screens.bounds import BoundsScreen

            (await self.go_to("bounds", BoundsScreen)).show_saved(e.path)
        elif e.kind == "train":
            from screens.models import ModelsScreen

            self.state.set_active_model(str(e.path))
            models = await self.go_to("models", ModelsScreen)
            models.action_refresh()
            models.say(f"active model: {e.path.name} (from Runs)")
        elif e.status == "finished":
            from screens.run_report import RunReport

            self.app.push_screen(RunReport(e.path, e.kind))
        else:
            self.say(f"{e.kind} runs can be opened once finished; this one is {e.status}", error=e.status != "running")

    async def action_resume(self) -> None:
        e = self.highlighted()
        if e is None:
            return
        if e.kind != "attack" or e.status != "interrupted":
            why = "it is not an attack" if e.kind != "attack" else f"it is {e.status}"
            self.say(f"R resumes interrupted attack runs; {why}", error=True)
            return
        from screens.attack import AttackScreen

        (await self.go_to("attack", AttackScreen)).resume_run(e.path)
