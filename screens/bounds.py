"""Screen 5, Frame bounds (§4.3, Table 5): per-layer bounds on a log scale and each layer's spectrum."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Sparkline, Static

from engines.core.events import Progress
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
        Binding("m", "use('active')", "Active model"),
        Binding("a", "use('alexnet')", "AlexNet"),
        Binding("r", "recompute", "Recompute"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.target = "active"
        self.shown_for: tuple[str, str] | None = None
        self.result: Any = None
        self.histograms: list[dict[str, Any]] = []
        self.paper: dict[str, dict[str, Any]] = {}

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
        want = (self.target, self.state.active_model if self.target == "active" else "alexnet")
        if want != self.shown_for and not self.busy():
            self.compute()

    def focus_main(self) -> None:
        self.query_one("#table", DataTable).focus()

    def action_use(self, target: str) -> None:
        self.target = target
        self.compute()

    def action_recompute(self) -> None:
        self.compute()

    # ------------------------------------------------------------------ compute
    def compute(self) -> None:
        ref = self.state.active_model if self.target == "active" else "alexnet"
        self.shown_for = (self.target, ref)
        device = self.state.settings.device
        partial: list[dict[str, Any]] = []  # this job's finished layers (a replaced job keeps its own list)
        self.query_one("#bar", Static).update(f"[b]{Path(ref).name}[/b] · computing …")
        slow = " (AlexNet: about half a minute on a CPU)" if ref == "alexnet" else ""
        self.say(f"computing frame bounds{slow} · x cancels after the current layer")

        def work(job: Job) -> Any:
            from engines.bounds.network import frame_bounds, spectrum_histogram
            from engines.bounds.models import load_bounds_model
            from engines.core.device import resolve_device

            loaded = load_bounds_model(ref)

            def on_progress(event: Progress) -> None:
                if "upper" in event.info:
                    partial.append({"name": event.message, **event.info})
                job.progress(event)

            result = frame_bounds(
                loaded.model,
                loaded.input_shape,
                device=resolve_device(device),
                model_name=loaded.name,
                on_progress=on_progress,
                cancel=job.cancelled,
            )
            hists = [spectrum_histogram(x.spectrum) if x.spectrum is not None else {} for x in result.layers]
            return result, hists, loaded.source

        self.start(
            "bounds",
            work,
            replace=True,
            on_progress=self.show_progress,
            on_done=self.show_result,
            on_error=lambda m: self.say(m, error=True),
            on_cancel=lambda _: self.show_partial(ref, partial),
        )

    def show_progress(self, event: Progress) -> None:
        self.say(f"frame bounds: {int(event.done)}/{int(event.total or 0)} layers · {event.message} · x cancels")

    def show_partial(self, ref: str, partial: list[dict[str, Any]]) -> None:
        """After a cancel: the layers that finished, in the table, so that no finished work is lost."""
        self.result, self.histograms = None, []
        self.query_one("#bar", Static).update(f"[b]{Path(ref).name}[/b] · cancelled after {len(partial)} layers")
        table = self.query_one("#table", DataTable)
        table.clear(columns=True)
        table.add_column("layer", width=30)
        table.add_column(Text("lower", justify="right"), width=9)
        table.add_column(Text("upper", justify="right"), width=9)
        for p in partial:
            table.add_row(
                p["name"], Text(fmt_num(p["lower"]), justify="right"), Text(fmt_num(p["upper"]), justify="right")
            )
        self.query_one("#notes", Static).update("")
        self.query_one("#spectrum-title", Static).update("")
        self.query_one("#spectrum", Sparkline).data = []
        self.say(f"cancelled: {len(partial)} finished layers kept above · r recomputes")

    # ------------------------------------------------------------------ render
    def show_result(self, result: Any) -> None:
        bounds, self.histograms, source = result
        self.result = bounds
        from engines.bounds.network import PAPER_TABLE5

        self.paper = {row["layer"]: row for row in PAPER_TABLE5} if bounds.model == "alexnet" else {}
        shape = "×".join(map(str, bounds.input_shape))
        origin = source.split(" (")[0]
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
        ] + [f"[yellow]note[/yellow] {n}" for n in bounds.notes]
        self.query_one("#notes", Static).update("\n".join(notes))
        self.say(f"{len(bounds.layers)} weight layers · ↑/↓ picks the layer whose spectrum is drawn")
        table.move_cursor(row=0)
        self.show_spectrum(0)
        table.focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_spectrum(event.cursor_row)

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
