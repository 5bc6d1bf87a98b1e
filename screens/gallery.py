"""Screen 2, Gallery (§3): top-k images of natural-basis units beside those of random directions, scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Select, Static

from engines.core.errors import BlindspotError
from engines.core.events import Event, Step
from engines.core.models import ModelRef
from engines.units.operation import UnitsRequest
from screens.forms import in_words
from screens.image_grid import change_zoom
from screens.image_view import ImageView
from screens.jobs import Job, WorkbenchScreen
from screens.widgets import GridItem, ImageGrid, NavBar

K = UnitsRequest.k  # images per direction, as `blindspot units` takes by default
MIN_RANDOM_ROWS = 16
ACTIVATIONS = ("Sigmoid", "ReLU", "Tanh")


def default_layer(layers: list[Any]) -> str:
    """The first hidden activation (the paper's φ), else the first layer with more than one value."""
    for info in layers[:-1]:
        if info.kind in ACTIVATIONS:
            return info.name
    usable = [i for i in layers if i.size > 1 and i.kind != "Flatten"]
    return (usable or layers)[0].name


def thumbnails(images: Any, indices: set[int]) -> dict[int, np.ndarray]:
    """uint8 pictures of the images the grids will show (built in the worker, not on the UI thread)."""
    from engines.report.figures import to_uint8

    return {i: to_uint8(images[i]) for i in sorted(indices)}


class GalleryScreen(WorkbenchScreen):
    """Are single units more interpretable than random directions? Look, and read the measured answer."""

    DEFAULT_CSS = """
    GalleryScreen #bar { height: 1; padding: 0 1; }
    GalleryScreen #bar Static { width: auto; }
    GalleryScreen #layer { width: 24; }
    GalleryScreen #info { width: 1fr; padding-left: 2; color: $text-muted; }
    GalleryScreen #grids { height: 1fr; }
    GalleryScreen ImageGrid { width: 1fr; }
    GalleryScreen #verdict { height: auto; max-height: 4; padding: 0 1; }
    """
    BINDINGS = [
        Binding("f", "focus_layer", "Layer"),
        Binding("n", "page(1)", "Next"),
        Binding("p", "page(-1)", "Prev", show=False),
        Binding("tab", "swap", "Grid"),
        Binding("z", "zoom(1)", "Zoom"),
        Binding("Z", "zoom(-1)", "Zoom out", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.model_ref: ModelRef | None = None  # the model the gallery shows
        self.layer_infos: list[Any] = []
        self.result: Any = None  # the UnitsComparison shown
        self.labels: np.ndarray | None = None
        self.thumbs: dict[int, np.ndarray] = {}
        self.split = UnitsRequest.split
        self.computing = ""

    def compose(self) -> ComposeResult:
        yield NavBar("gallery")
        with Horizontal(id="bar"):
            yield Static("layer ")
            yield Select([], prompt="loading layers…", compact=True, id="layer")
            yield Static("", id="info")
        with Horizontal(id="grids"):
            zoom = self.state.settings.zoom.get("gallery", 0)
            yield ImageGrid(id="units", label="natural basis: units", zoom=zoom, empty="computing…")
            yield ImageGrid(id="random", label="random directions", zoom=zoom, empty="computing…")
        yield Static("", id="verdict")
        yield Static("", id="status", classes="status")
        yield Footer(compact=True)

    def on_screen_resume(self) -> None:
        retry = not self.layer_infos and not self.busy("layers")  # the last attempt failed: try again
        if self.model_ref != self.state.active_ref or retry:
            self.model_ref = self.state.active_ref
            self.load_layers()

    def focus_main(self) -> None:
        self.query_one("#units", ImageGrid).focus()

    # ----------------------------------------------------------------- layers
    def load_layers(self) -> None:
        ref = self.model_ref
        assert ref is not None, "on_screen_resume sets the model before it loads"
        self.clear_results(f"reading the layers of {Path(str(ref or '')).name} …")
        self.query_one("#layer", Select).set_options([])
        self.layer_infos = []
        self.say(f"reading the layers of {Path(str(ref or '')).name} …")

        def work(job: Job) -> Any:
            from engines.units.operation import LayersRequest, run_layers

            return run_layers(LayersRequest(model=ref), self.job_context(job)).layers

        self.start("layers", work, replace=True, on_done=self.show_layers, on_error=self.failed)

    def show_layers(self, layers: list[Any]) -> None:
        self.layer_infos = layers
        select = self.query_one("#layer", Select)
        options = [(f"{i.name} ({i.kind}, {'×'.join(map(str, i.shape))})", i.name) for i in layers if i.size > 1]
        select.set_options(options)
        select.value = default_layer(layers)
        self.compute(default_layer(layers))

    def action_focus_layer(self) -> None:
        self.query_one("#layer", Select).focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and (self.result is None or event.value != self.result.layer):
            if not (self.busy("units") and self.computing == event.value):
                self.compute(event.value)
            self.focus_main()

    # ------------------------------------------------------------------ units
    def request_for(self, layer: str) -> UnitsRequest:
        """The request `blindspot units --model M --layer L` builds, with the workbench's sizes (the rest: the
        request's declared defaults, as the command's)."""
        settings = self.state.settings
        assert self.model_ref is not None, "a layer is picked once the layers of the model are read"
        return UnitsRequest(
            model=self.model_ref,
            layer=layer,
            split=self.split,
            n=settings.units_images or None,
            n_random=settings.units_random,
            data_dir=settings.data_dir,
        )

    def compute(self, layer: str) -> None:
        try:
            request = self.request_for(layer)
        except BlindspotError as exc:
            self.say(in_words(exc), error=True)
            return
        self.computing = layer
        self.clear_results(f"computing the top-{K} images of {layer} …")
        self.say(f"scoring every unit of {layer} and random directions … (x cancels)")

        def work(job: Job) -> Any:
            from engines.units.operation import run_units

            res = run_units(request, self.job_context(job))
            assert res.data is not None  # run_units keeps the images it scored
            units, rand = _rows(res.comparison.units), _rows(res.comparison.random)
            rand = rand[: max(len(units), MIN_RANDOM_ROWS)]
            top_u, top_r = res.comparison.units.top, res.comparison.random.top
            used = {int(i) for r in units for i in top_u[r]} | {int(i) for r in rand for i in top_r[r]}
            return res, units, rand, thumbnails(res.data.images, used)

        self.start(
            "units",
            work,
            replace=True,
            on_event=self.show_event,
            on_done=self.show_result,
            on_error=self.failed,
            on_cancel=lambda: self.clear_results("cancelled: nothing was scored for this layer (pick it to retry)"),
        )

    def clear_results(self, why: str) -> None:
        """Empty grids, verdict and figures saying why: never another model's or layer's results under this name."""
        self.result = None
        for gid in ("#units", "#random"):
            grid = self.query_one(gid, ImageGrid)
            grid.empty = why
            grid.set_items([])
        self.query_one("#verdict", Static).update("")
        self.query_one("#info", Static).update("")

    def failed(self, message: str) -> None:
        self.clear_results("nothing to show: the job failed (see below); fix it and pick the layer again")
        self.say(message, error=True)

    def show_event(self, event: Event) -> None:
        if isinstance(event, Step):
            self.say(f"{event.task}: {int(event.done)}/{int(event.total or 0)} {event.message} · x cancels".strip())

    def show_result(self, result: Any) -> None:
        full, units, rand, self.thumbs = result
        res = full.comparison
        self.result, self.labels = res, full.data.labels.numpy()
        self.query_one("#units", ImageGrid).set_items([self._item(res.units, r, "unit") for r in units])
        self.query_one("#random", ImageGrid).set_items([self._item(res.random, r, "dir") for r in rand])
        shape = "×".join(map(str, res.layer_shape))
        degenerate = int(res.units.degenerate.sum())
        self.query_one("#info", Static).update(
            f"{res.layer_kind} {shape} · {res.n_images} {self.split} images · top-{res.k} · "
            f"{len(res.random)} random dirs" + (f" · {degenerate} dead units" if degenerate else "")
        )
        self.query_one("#verdict", Static).update(Text.assemble(("verdict ", "bold"), res.brief()))
        notes = "".join(f" · {n}" for n in full.notes)  # e.g. an unusable cache; none in a normal run
        self.say(f"{len(units)} units and {len(rand)} random directions shown · n/p page · Enter enlarges{notes}")

    def _item(self, scores: Any, row: int, kind: str) -> GridItem:
        top = [int(i) for i in scores.top[row]]
        tags = [str(int(self.labels[i])) for i in top] if self.labels is not None else None
        title = f"{kind} {int(scores.ids[row])} · purity {scores.purity[row]:.2f}"
        return GridItem(title, [self.thumbs[i] for i in top], payload=(kind, row, top), tags=tags)

    # ---------------------------------------------------------------- actions
    def action_page(self, delta: int) -> None:
        for gid in ("#units", "#random"):
            self.query_one(gid, ImageGrid).action_page(delta)

    def action_zoom(self, delta: int) -> None:
        grids = [self.query_one(gid, ImageGrid) for gid in ("#units", "#random")]
        zoom = change_zoom(self.state, "gallery", grids, delta)
        self.say(f"zoom {zoom}: z larger tiles, Z smaller" + (" (the smallest legible size)" if zoom == 0 else ""))

    def action_swap(self) -> None:
        units, rand = self.query_one("#units", ImageGrid), self.query_one("#random", ImageGrid)
        (rand if units.has_focus else units).focus()

    def on_image_grid_opened(self, event: ImageGrid.Opened) -> None:
        if self.result is None or self.labels is None:
            return
        kind, row, top = event.grid.items[event.item].payload
        scores = self.result.units if kind == "unit" else self.result.random
        values = scores.top_values[row]
        names = [f"rank {j + 1}" for j in range(len(top))]
        what = f"unit {int(scores.ids[row])}" if kind == "unit" else f"random direction {int(scores.ids[row])}"
        captions = [
            f"{names[j]} · {what} of {self.result.layer} · {self.split} #{i} · label {int(self.labels[i])}"
            f" · ⟨φ(x), v⟩ = {float(values[j]):.4g} · purity {float(scores.purity[row]):.2f}"
            for j, i in enumerate(top)
        ]
        self.app.push_screen(ImageView([self.thumbs[t] for t in top], captions, event.index, names))


def _rows(scores: Any) -> list[int]:
    """Rows worth drawing: directions whose top-k is defined, in their natural order."""
    return [int(r) for r in np.flatnonzero(~scores.degenerate)]
