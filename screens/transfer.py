"""Screen 4, Transfer matrix (Tables 2 and 4): does an adversarial set made for one model fool another?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input, Static

from engines.core.errors import InputError
from engines.core.events import Event, SetReady, Step
from engines.core.options import option_spec
from engines.transfer.request import TransferRequest, csv_items, model_refs, named_models, numbers
from screens.forms import field_widget, in_words, initial_value, read_field
from screens.image_view import GridView
from screens.jobs import Job, WorkbenchScreen
from screens.widgets import GridItem, NavBar, fmt_num, heat_style

SECTIONS = (
    ("adversarial", ""),
    ("amplified", "── amplified ──"),
    ("scaled", "── scaled ──"),
    ("noise", "── noise ──"),
)
SORTS = ("as computed", "highest first", "lowest first")
NAME_W = 24
LABELS = {"weights": "weights (NAME=FILE)"}  # what the fields call the weights in error messages
MODELS_HELP = (
    "comma-separated models: zoo ids, checkpoint files, torchvision names, package.module:function; "
    "NAME=FILE gives a torchvision or factory model its weights (resnet18=~/w/resnet18.pth)"
)


def short(path: Path | None) -> str:
    """The run folder's name: enough to recognise a run without showing where it lives."""
    return Path(path).name if path else ""


def label(row: Any) -> str:
    """A short row name for the table: the source model, its amplified set, or the noise level."""
    if row.kind == "amplified" and row.source:
        return f"{row.source} ↑ rms {row.stddev:g}" if row.stddev is not None else row.name
    if row.kind == "noise" and row.stddev is not None:
        return f"Gaussian rms {row.stddev:g}" if getattr(row, "clipped", True) else f"Gaussian sd {row.stddev:g} raw"
    return row.name


class TransferScreen(WorkbenchScreen):
    """Rows are the sets fed in (adversarial per source, noise apart), columns the models fed to."""

    DEFAULT_CSS = """
    TransferScreen .row { height: 1; padding: 0 1; }
    TransferScreen .row Static { width: auto; }
    TransferScreen #path { width: 1fr; }
    TransferScreen #sources, TransferScreen #targets { width: 1fr; }
    TransferScreen #n, TransferScreen #noise { width: 8; }
    TransferScreen #matrix { height: 1fr; min-height: 5; }
    TransferScreen #cell { height: auto; max-height: 3; padding: 0 1; }
    """
    BINDINGS = [
        Binding("enter", "examples", "Examples"),
        Binding("l", "focus_open", "Load"),
        Binding("s", "compute", "Start"),
        Binding("o", "sort", "Order"),
        Binding("e", "export", "Export"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.matrix: Any = None
        self.order: list[int | None] = []  # table row -> matrix row (None: a section heading)
        self.sort_mode, self.sort_col = 0, 0
        self.last_row = 0

    def compose(self) -> ComposeResult:
        yield NavBar("transfer")
        with Horizontal(classes="row"):
            yield Static("matrix.json ")
            yield Input(self._latest(), placeholder="path to a matrix.json or its run folder", id="path", compact=True)
        with Horizontal(classes="row"):
            yield Static("compute: sources ")
            yield Input(Path(self.state.active_model).stem, id="sources", compact=True, tooltip=MODELS_HELP)
            yield Static(" targets ")
            yield Input("", placeholder="default: the sources", id="targets", compact=True, tooltip=MODELS_HELP)
            yield Static(f" {option_spec(TransferRequest, 'n').label} ")
            yield field_widget(TransferRequest, "n", initial_value(TransferRequest, "n"))  # `blindspot transfer`'s
            yield Static(" noise ")
            yield Input("0.1", id="noise", compact=True)
        table: DataTable = DataTable(id="matrix", cursor_type="cell")
        table.border_title = "rows: example sets · columns: target models · % misclassified"
        yield table
        yield Static("", id="cell")
        yield Static("l loads a matrix.json · s starts one from the fields above", id="status", classes="status")
        yield Footer(compact=True)

    def _latest(self) -> str:
        runs = Path(self.state.settings.runs_dir)
        # `blindspot transfer` runs and the tables of `blindspot reproduce` runs, newest last
        candidates = [*runs.glob("*/matrix.json"), *runs.glob("*/table*/matrix.json")] if runs.is_dir() else []
        found = sorted(candidates, key=lambda p: p.stat().st_mtime)
        return str(found[-1]) if found else ""

    def on_mount(self) -> None:
        """Open the chosen matrix, else the newest one under the runs folder (never a blank screen when one exists)."""
        path = str(self.state.settings.matrix_path or self.query_one("#path", Input).value)
        if path:
            self.open(path, show_path=False)

    def focus_main(self) -> None:
        self.query_one("#matrix", DataTable).focus()

    # ------------------------------------------------------------------- open
    def action_focus_open(self) -> None:
        self.query_one("#path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "path":
            self.open(event.value.strip())
        else:
            self.action_compute()

    def open(self, path: str, show_path: bool = True) -> None:
        if not path:
            self.say("type the path of a matrix.json (or its run folder) first", error=True)
            return

        def work(job: Job) -> Any:
            from engines.transfer.store import load_matrix

            return load_matrix(path)

        if show_path:
            self.query_one("#path", Input).value = path
        self.start(
            "open matrix", work, replace=True, on_done=self.show_matrix, on_error=lambda m: self.say(m, error=True)
        )

    def action_compute(self) -> None:
        try:
            request = self.request()
        except InputError as exc:
            self.say(in_words(exc), error=True)
            return
        self.say("computing the matrix … (x cancels; finished adversarial sets stay cached)")
        self.matrix, self.order = None, []
        table = self.query_one("#matrix", DataTable)
        table.clear(columns=True)  # the old matrix must not pass for the new one while it computes
        table.border_subtitle = (
            f"computing {', '.join(map(str, request.sources))} → {', '.join(map(str, request.targets))} …"
        )
        self.query_one("#cell", Static).update("")
        self.focus_main()

        def work(job: Job) -> Any:
            from engines.transfer.operation import run_transfer

            return run_transfer(request, self.job_context(job))

        self.start(
            "transfer",
            work,
            on_event=self.show_event,
            on_done=self.computed,
            on_error=lambda m: self.say(m, error=True),
            on_cancel=lambda: self.say("cancelled: finished adversarial sets stay in the cache for the next try"),
        )

    def request(self) -> TransferRequest:
        """The fields as a request: models are comma-separated, each may carry its weights as NAME=FILE."""
        from engines.attack.search import AttackConfig

        def field(wid: str) -> str:
            return self.query_one(wid, Input).value

        sources, source_weights = named_models(csv_items(field("#sources")))
        targets, target_weights = named_models(csv_items(field("#targets")))
        weights = list(dict.fromkeys([*source_weights, *target_weights]))  # a model named in both: once
        attack = self.state.settings.attack  # the Attack form's budget (its declared defaults until changed)
        return TransferRequest(
            sources=model_refs(sources, weights, labels=LABELS),
            targets=model_refs(targets, weights, labels=LABELS),
            n=read_field(self, TransferRequest, "n"),
            config=AttackConfig(**{k: initial_value(AttackConfig, k, attack) for k in ("c_steps", "max_iter")}),
            data_dir=self.state.settings.data_dir,
            noise=tuple(numbers(field("#noise"), "noise")),
        )

    def show_event(self, event: Event) -> None:
        """One status line per event: which set is being made, the attack's c search, the evaluation."""
        if isinstance(event, SetReady):
            text = f"adversarial sets: {int(event.done)}/{int(event.total or 0)} · {event.line()}"
        elif isinstance(event, Step):
            text = f"{event.task}: {int(event.done)}/{int(event.total or 0)} {event.message}".rstrip()
        else:  # the attack making a set: its c search, its finished chunks
            text = f"{event.task}: {event.line()}"
        self.say(f"{text} · x cancels")

    def computed(self, matrix: Any) -> None:
        """A new matrix: shown, and its folder in the path field (what `o` reopens)."""
        if matrix.folder is not None:
            self.query_one("#path", Input).value = str(matrix.folder)
        self.show_matrix(matrix)

    # ------------------------------------------------------------------ table
    def show_matrix(self, matrix: Any) -> None:
        self.matrix = matrix
        self.sort_mode = 0
        self.rebuild()
        self.query_one("#matrix", DataTable).border_subtitle = f"{matrix.split}, n={matrix.n} · {short(matrix.folder)}"
        self.say(
            f"opened {short(matrix.folder)}: {len(matrix.rows)} sets × {len(matrix.columns)} models · "
            "arrows move · Enter shows examples · o orders rows · e exports CSV"
        )
        self.focus_main()

    def rebuild(self) -> None:
        m = self.matrix
        table = self.query_one("#matrix", DataTable)
        cursor = table.cursor_coordinate
        before = self.order[cursor.row] if 0 <= cursor.row < len(self.order) else None
        table.clear(columns=True)
        table.add_column("set", width=NAME_W)
        for name in m.columns:
            table.add_column(Text(name, justify="right"), width=max(6, len(name)))
        table.add_column(Text("rms", justify="right"), width=6)
        values = m.values
        self.order = []
        for kind, heading in SECTIONS:
            members = [i for i, r in enumerate(m.rows) if r.kind == kind]
            if not members:
                continue
            if self.sort_mode and 1 <= self.sort_col <= len(m.columns):
                members.sort(key=lambda i: values[i, self.sort_col - 1], reverse=self.sort_mode == 1)
            if heading and self.order:
                table.add_row(Text(heading, style="dim"), *[""] * (len(m.columns) + 1))
                self.order.append(None)
            for i in members:
                row = m.rows[i]
                cells = [Text(f" {v:5.1f} ", style=heat_style(v), justify="right") for v in values[i]]
                table.add_row(
                    Text(label(row), style="bold" if kind == "adversarial" else ""),
                    *cells,
                    Text(fmt_num(row.distortion), justify="right"),
                )
                self.order.append(i)
        row = self.order.index(before) if before is not None and before in self.order else 0
        table.move_cursor(row=row, column=max(1, cursor.column))

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        table_row = event.coordinate.row
        if 0 <= table_row < len(self.order) and self.order[table_row] is None:  # a heading: step over it
            step = 1 if table_row >= self.last_row else -1
            target = table_row + step if 0 <= table_row + step < len(self.order) else table_row - step
            self.last_row = table_row
            self.query_one("#matrix", DataTable).move_cursor(row=target, column=event.coordinate.column)
            return
        self.last_row = table_row
        row, col = self.cell(table_row, event.coordinate.column)
        panel = self.query_one("#cell", Static)
        if row is None:
            panel.update("")
            return
        m, r = self.matrix, self.matrix.rows[row]
        what = f"{r.name} ({r.kind}, rms {fmt_num(r.distortion)}, n={r.n})"
        if col is None:
            panel.update(what)
            return
        lo, hi = m.intervals[row, col]
        panel.update(
            f"{what} → [b]{m.columns[col]}[/b]: {int(m.errors[row, col])} misclassified = "
            f"{m.values[row, col]:.1f}% (95% CI {lo:.1f}–{hi:.1f}) · Enter shows them"
        )

    def on_data_table_cell_selected(self, _: DataTable.CellSelected) -> None:
        self.action_examples()

    def cell(self, table_row: int, table_col: int) -> tuple[int | None, int | None]:
        """(matrix row, matrix column) under the cursor; None for headings, names and the rms column."""
        if self.matrix is None or not 0 <= table_row < len(self.order):
            return None, None
        col = table_col - 1 if 1 <= table_col <= len(self.matrix.columns) else None
        return self.order[table_row], col

    # ---------------------------------------------------------------- actions
    def action_examples(self) -> None:
        table = self.query_one("#matrix", DataTable)
        row, col = self.cell(table.cursor_coordinate.row, table.cursor_coordinate.column)
        if row is None or col is None:
            self.say("move the cursor onto a model's column of a set's row", error=True)
            return
        matrix, device = self.matrix, self.state.settings.device
        self.say(f"finding examples of {matrix.rows[row].name} that fool {matrix.columns[col]} …")

        def work(job: Job) -> Any:
            from engines.core.device import resolve_device
            from engines.report.figures import to_uint8
            from engines.transfer.cells import cell_examples
            from screens.pictures import difference_picture, scale_label

            found = cell_examples(matrix, row, col, k=12, device=resolve_device(device))
            items = []
            for e in found:
                diff, scale = difference_picture(e["x"], e["x_pert"])  # blue −, white 0, red +, its own scale
                label = f"#{e['index']} {e['label']}→{e['pred']} {scale_label(scale)}"
                items.append(GridItem(label, [to_uint8(e["x"]), diff, to_uint8(e["x_pert"])]))
            return items

        def show(items: list[GridItem]) -> None:
            r = matrix.rows[row]
            note = (
                f"{len(items)} of {int(matrix.errors[row, col])} images of '{r.name}' that {matrix.columns[col]} "
                "misclassifies (label→prediction): original | difference r (blue −, white 0, red +) | fed to the model"
            )
            self.say("Escape closes the examples")
            self.app.push_screen(
                GridView(f"{r.name} → {matrix.columns[col]}", items, note, ["original", "difference r", "perturbed"])
            )

        self.start("examples", work, on_done=show, on_error=lambda m: self.say(m, error=True))

    def action_sort(self) -> None:
        if self.matrix is None:
            return
        table = self.query_one("#matrix", DataTable)
        col = table.cursor_coordinate.column
        if not 1 <= col <= len(self.matrix.columns):
            self.say("sorting goes by a model's column: move the cursor onto one", error=True)
            return
        self.sort_mode = (self.sort_mode + 1) % len(SORTS) if col == self.sort_col else 1
        self.sort_col = col
        self.rebuild()
        self.say(f"rows sorted by {self.matrix.columns[col - 1]}: {SORTS[self.sort_mode]} (noise rows stay apart)")

    def action_export(self) -> None:
        if self.matrix is None or self.matrix.folder is None:
            self.say("open or compute a matrix first", error=True)
            return
        matrix = self.matrix

        def text() -> str:
            from engines.transfer.store import matrix_csv

            return matrix_csv(matrix)

        self.ask_export("the matrix as CSV", Path(matrix.folder) / "matrix-export.csv", text)
