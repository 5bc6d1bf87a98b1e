"""Screen 5, Frame bounds (§4.3, Table 5): per-layer bounds on a log scale and each layer's spectrum."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Sparkline, Static

from engines.bounds.results import PAPER_TABLE5, SOURCE_NOTE, LayerBound, NetworkBounds
from engines.core.events import Event, LayerBounded
from engines.core.models import ModelRef, as_model_ref
from screens.jobs import Job, WorkbenchScreen
from screens.widgets import NavBar, fmt_num, log_range_bar

WIDE = 110  # from this width on, the power-iteration and method columns are shown too


class BoundsScreen(WorkbenchScreen):
    """How much can a small change of the input move each layer's output? Upper bounds, layer by layer."""

    DEFAULT_CSS = """
    BoundsScreen #bar { height: 1; padding: 0 1; }
    BoundsScreen #table { height: auto; max-height: 60%; min-height: 4; }
    BoundsScreen #spectrum-title { height: 1; padding: 0 1; margin-top: 1; }
    BoundsScreen #spectrum { height: 1fr; min-height: 3; max-height: 16; margin: 0 1; }
    BoundsScreen #axis { height: 1; padding: 0 1; color: $text-muted; }
    BoundsScreen #notes { height: auto; max-height: 3; padding: 0 1; }
    """
    BINDINGS = [
        Binding("m", "use('active')", "Active"),
        Binding("a", "use('alexnet')", "AlexNet"),
        Binding("s", "recompute", "Start"),
        Binding("e", "export", "Export"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.target = "active"
        self.shown_for: tuple[str, Any] | None = None
        self.result: NetworkBounds | None = None
        self.histograms: list[dict[str, Any]] = []
        self.paper: dict[str, dict[str, Any]] = {}
        self.pinned = False  # a saved run reopened from Runs is on show: returning here does not recompute
        self.finished_layers = 0

    def compose(self) -> ComposeResult:
        yield NavBar("bounds")
        yield Static("", id="bar")
        table: DataTable = DataTable(id="table", cursor_type="row", zebra_stripes=True)
        table.border_title = "frame bounds"
        yield table
        yield Static("", id="spectrum-title")
        yield Sparkline([], id="spectrum")
        yield Static("", id="axis")
        yield Static("", id="notes")
        yield Static("", id="status", classes="status")
        yield Footer(compact=True)

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        want = (self.target, self.state.active_ref if self.target == "active" else "alexnet")
        if want != self.shown_for and not self.busy() and not self.pinned:
            self.compute()

    def focus_main(self) -> None:
        self.query_one("#table", DataTable).focus()

    def action_use(self, target: str) -> None:
        self.target = target
        self.compute()

    def action_recompute(self) -> None:
        self.compute()

    def show_saved(self, folder: Path) -> None:
        """A finished bounds run reopened from Runs: its table and spectra from bounds.json, nothing recomputed
        (a computation in progress here is cancelled); m, a or s compute again."""
        self.pinned = True
        self.query_one("#bar", Static).update(f"opening {folder.name} …")

        def work(job: Job) -> Any:
            from engines.bounds.operation import read_bounds

            return read_bounds(folder)

        def failed(message: str) -> None:
            self.pinned = False  # nothing is on show: returning here computes the active model again
            self.query_one("#bar", Static).update(f"[b]{folder.name}[/b] · cannot be opened")
            self.say(message, error=True)

        self.start("bounds", work, replace=True, on_done=self.show_result, on_error=failed)

    # ------------------------------------------------------------------ compute
    def compute(self) -> None:
        """Run the bounds operation (the request `blindspot bounds --model REF` builds) into a new run folder."""
        self.pinned = False
        ref = self.state.active_ref if self.target == "active" else "alexnet"
        self.shown_for = (self.target, ref)
        device = self.state.settings.device
        self.result, self.histograms, self.finished_layers = None, [], 0
        self.query_one("#bar", Static).update(f"[b]{Path(str(ref)).name}[/b] · computing …")
        self.start_layer_table()
        slow = " (AlexNet: about half a minute on a CPU)" if ref == "alexnet" else ""
        self.say(f"computing frame bounds{slow} · x cancels after the current layer")

        def work(job: Job) -> Any:
            from engines.bounds.operation import BoundsRequest, run_bounds

            result = run_bounds(BoundsRequest(model=as_model_ref(ref)), self.job_context(job, device=device))
            return result, [layer.histogram() for layer in result.layers]

        self.start(
            "bounds",
            work,
            replace=True,
            on_event=self.show_event,
            on_done=self.show_result,
            on_error=lambda m: self.failed(ref, m),
            on_cancel=lambda: self.show_cancelled(ref),
        )

    def start_layer_table(self) -> None:
        """An empty table (the previous model's rows go) that fills as layers finish."""
        table = self.query_one("#table", DataTable)
        table.clear(columns=True)
        table.add_column("layer", width=14)
        table.add_column("size", width=16)
        table.add_column(Text("lower", justify="right"), width=9)
        table.add_column(Text("upper", justify="right"), width=9)
        if self.size.width >= WIDE:
            table.add_column(Text("power", justify="right"), width=9)
            table.add_column("method", width=16)
        for sid in ("#notes", "#spectrum-title", "#axis"):
            self.query_one(sid, Static).update("")
        self.query_one("#spectrum", Sparkline).data = []

    def show_event(self, event: Event) -> None:
        if isinstance(event, LayerBounded):
            self.add_layer_row(event.bound)
        self.say(f"frame bounds: {int(event.done)}/{int(event.total or 0)} layers · {event.line()} · x cancels")

    def add_layer_row(self, layer: LayerBound) -> None:
        """A finished layer's row, straight from its `LayerBounded` event."""
        table = self.query_one("#table", DataTable)
        row: list[Any] = [
            f"{layer.label} {layer.name}",
            layer.size,
            Text(fmt_num(layer.lower) + ("†" if layer.wide else ""), justify="right"),
            Text(fmt_num(layer.upper), justify="right"),
        ]
        if len(table.columns) > len(row):
            row += [Text(fmt_num(layer.power["sigma"]) if layer.power else "—", justify="right"), layer.short_method]
        table.add_row(*row)
        self.finished_layers += 1

    def show_cancelled(self, ref: ModelRef | str) -> None:
        """After a cancel: the finished layers stay in the table, so that no finished work is lost from view."""
        kept = self.finished_layers
        self.query_one("#bar", Static).update(f"[b]{Path(str(ref)).name}[/b] · cancelled after {kept} layers")
        self.say(f"cancelled: {kept} finished layers kept above · s starts again")

    def failed(self, ref: ModelRef | str, message: str) -> None:
        self.query_one("#bar", Static).update(f"[b]{Path(str(ref)).name}[/b] · failed")
        self.say(message, error=True)

    # ------------------------------------------------------------------ render
    def show_result(self, result: tuple[NetworkBounds, list[dict[str, Any]]]) -> None:
        bounds, self.histograms = result
        self.result = bounds
        self.paper = {row["layer"]: row for row in PAPER_TABLE5} if bounds.model == "alexnet" else {}
        shape = "×".join(map(str, bounds.input_shape))
        origin = bounds.source.split(" (")[0]
        if origin.startswith("checkpoint "):
            origin = "checkpoint " + Path(origin.removeprefix("checkpoint ")).name
        self.query_one("#bar", Static).update(f"[b]{bounds.model}[/b] at {shape} · {origin}")
        table = self.query_one("#table", DataTable)
        table.clear(columns=True)
        wide = self.size.width >= WIDE
        fixed = 14 + 16 + 9 + 9 + (9 + 16 if wide else 0)
        bar_w = max(10, self.size.width - fixed - 2 * (7 if wide else 5) - 4)
        positives = [v for x in bounds.layers for v in (x.lower, x.upper) if v > 0]
        lo = min(positives) / 1.5 if positives else 1e-3
        hi = max(positives) * 1.5 if positives else 1.0
        table.add_column("layer", width=14)
        table.add_column("size", width=16)
        table.add_column(Text("lower", justify="right"), width=9)
        table.add_column(Text("upper", justify="right"), width=9)
        table.add_column(f"{fmt_num(lo)} ⟷ {fmt_num(hi)}", width=bar_w)
        if wide:
            table.add_column(Text("power", justify="right"), width=9)
            table.add_column("method", width=16)
        for layer in bounds.layers:
            row: list[Any] = [
                f"{layer.label} {layer.name}",
                layer.size,
                Text(fmt_num(layer.lower) + ("†" if layer.wide else ""), justify="right"),
                Text(fmt_num(layer.upper), justify="right"),
                log_range_bar(layer.lower, layer.upper, lo, hi, bar_w),
            ]
            if wide:
                row += [
                    Text(fmt_num(layer.power["sigma"]) if layer.power else "—", justify="right"),
                    layer.short_method,
                ]
            table.add_row(*row)
        lip = bounds.lipschitz_upper
        notes = [
            f"product of upper bounds {fmt_num(bounds.product_table)} · Lipschitz bound as it runs "
            f"{fmt_num(lip) if lip is not None else 'n/a'}"
            + (" · † wide layer: true lower bound 0" if any(x.wide for x in bounds.layers) else "")
        ] + [f"[yellow]note[/yellow] {n}" for n in bounds.notes if not n.startswith(SOURCE_NOTE)]  # the bar says it
        self.query_one("#notes", Static).update("\n".join(notes))
        self.say(f"{len(bounds.layers)} weight layers · ↑/↓ picks the layer whose spectrum is drawn")
        table.move_cursor(row=0)
        self.show_spectrum(0)
        table.focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_spectrum(event.cursor_row)

    def action_export(self) -> None:
        """Table 5 of the shown network as CSV (lower, upper, method, guaranteed bound as it runs)."""
        bounds = self.result
        if bounds is None:
            self.say("nothing to export yet: the bounds are still computing or failed", error=True)
            return
        doc = bounds.to_json()
        folder = Path(bounds.run) if bounds.run else Path(self.state.settings.runs_dir)

        def text() -> str:
            from engines.bounds.export import bounds_csv

            return bounds_csv(doc)

        self.ask_export("the frame bounds as CSV", folder / "bounds.csv", text)

    def show_spectrum(self, index: int) -> None:
        if self.result is None or not 0 <= index < len(self.result.layers):
            return
        layer, hist = self.result.layers[index], self.histograms[index]
        paper = self.paper.get(layer.label)
        ref = f" · paper {fmt_num(paper['lower'])} … {fmt_num(paper['upper'])}" if paper else ""
        power = f" · power {fmt_num(layer.power['sigma'])}" if layer.power else ""
        zeros = f", {hist['zeros']} zero" if hist.get("zeros") else ""
        self.query_one("#spectrum-title", Static).update(
            f"[b]{layer.label}[/b] {layer.name}: {hist.get('count', 0):,} singular values"
            f"{zeros}"
            f" · {layer.short_method}{power}{ref}"
        )
        counts = hist.get("counts") or []
        self.query_one("#spectrum", Sparkline).data = [math.log1p(c) for c in counts]
        if counts:
            self.query_one("#axis", Static).update(
                f"histogram, log-spaced σ: {fmt_num(hist['edges'][0])} ├{'─' * 8}┤ {fmt_num(hist['edges'][-1])}"
                "  (bar height: log count)"
            )
        else:
            self.query_one("#axis", Static).update("no spectrum stored for this layer")
