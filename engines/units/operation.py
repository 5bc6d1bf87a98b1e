"""The units operation (§3): `run_units(request, ctx)`, and `run_layers(request, ctx)` for the layer names.

`blindspot units` and the Gallery screen both call `run_units` and nothing else; `blindspot layers` and the
Gallery's layer list both call `run_layers`. A units run folder (`runs/units-<model>-<time>` unless the
context names one):
    run.json             format, kind, the request, the model's identity, status, seconds
    units.json           `UnitsResult.to_json(full=True)`: the comparison plus every direction's top-k and scores
    units_top.png, random_top.png, units_vs_random.png    top-k grids (Figures 1–4 style)
    units_bottom.png, random_bottom.png                   bottom-k grids, with `bottom`
`--json` prints `UnitsResult.to_json()` (the same document without the per-direction lists).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.core.checkpoint import LoadedModel, check_classifier, warn_if_trained_on_other_data
from engines.core.context import RunContext
from engines.core.data import SPLITS, Dataset
from engines.core.distributed import on_main_first
from engines.core.errors import FieldName, InputError
from engines.core.io import write_json_atomic
from engines.core.model_data import check_labels, data_record, open_model_data, take_images
from engines.core.models import ModelRef, load_model
from engines.core.options import field_error, option, option_spec
from engines.core.runs import open_run
from engines.units.activations import POOLINGS, LayerInfo, find_layer, layer_activations, list_layers
from engines.units.directions import UnitsComparison, all_directions_json, compare_units
from engines.units.figures import save_unit_figures

KIND = "units"
JSON_FILE = "units.json"
BOTTOM_FIGURES = ("units_bottom.png", "random_bottom.png")


# the layer is a required field, declared by no option: how the CLI and the workbench ask for it
LAYER = FieldName("--layer NAME (see `blindspot layers --model ID`)", "pick one of the model's layers")
FOLDER_DEFAULT_N = 2000  # images of a folder or CIFAR set compared when --n is not given (all are held in memory)


@dataclass(frozen=True)
class UnitsRequest:
    """What to compare: everything that fixes the result. Stored in run.json."""

    model: ModelRef  # a str is turned into a ModelRef on construction
    layer: str
    split: str = option("test", choices=SPLITS, help="Image set: test, train, p1 or p2.")
    n: int | None = option(  # the first n images of the split (all of them when it has fewer); None: all
        None,
        flags=("--n", "-n"),
        label="N images",
        min=1,
        cli_range=True,
        help="Use the first N images (default: all; 2000 of a folder).",
    )
    k: int = option(8, label="top-k", min=1, help="Images per direction: the top-k of ⟨φ(x), v⟩.")
    n_random: int | None = option(  # random directions for the statistics; None: max(units scored, 1000)
        None,
        flags=("--stat-random",),
        label="random directions",
        min=2,
        help="Random directions for the statistics (default: max(units, 1000)).",
    )
    max_units: int = option(  # score every unit up to this many, a seeded sample beyond
        5000, min=2, help="Score all units up to this many; a seeded sample beyond."
    )
    show_units: int = option(  # rows drawn in the figures
        16, flags=("--units",), label="units shown", min=0, help="Units drawn in the figure (a seeded sample)."
    )
    show_random: int = option(
        16, flags=("--random",), label="random shown", min=0, help="Random directions drawn in the figure."
    )
    pool: str = option(  # a unit of a layer with spatial axes is a channel (spatial max); "none": every position
        "auto",
        flags=("--reduce", "--pool"),
        label="reduce",
        choices=POOLINGS,
        help="A unit of a conv layer is a channel: its spatial max (auto, the default), mean or center value; "
        "none: φ = the flattened C×H×W output.",
    )
    space: str = option(  # where the label-free cosine is read: pixels or another layer's φ
        "pixel", help="Where the label-free cosine is read: 'pixel' or another layer's name."
    )
    bottom: bool = option(False, label="bottom-k too", help="Also find and draw the bottom-k images.")
    seed: int = 0
    data_dir: str | None = None
    use_cache: bool = True  # read and write the activation cache (the numbers are the same either way)
    image_size: int | None = None  # images resized and centre-cropped to this side; None: the model's own
    classes_file: str | None = None  # folder class names in the model's class order

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelRef.from_json(self.model))
        if self.k < 1:
            raise field_error(UnitsRequest, f"$k must be at least 1, got {self.k}", "k")
        if self.show_units < 0 or self.show_random < 0:
            raise field_error(
                UnitsRequest,
                "$show_units and $show_random count rows to draw and cannot be negative",
                "show_units",
                "show_random",
            )
        if self.n_random is not None and self.n_random < 2:
            raise field_error(UnitsRequest, f"$n_random must be at least 2, got {self.n_random}", "n_random")
        if self.max_units < 2:
            raise field_error(UnitsRequest, f"$max_units must be at least 2, got {self.max_units}", "max_units")
        if self.pool not in POOLINGS:
            pool = option_spec(UnitsRequest, "pool").field_name._replace(flag="--pool")  # the CLI's words
            raise InputError(f"unknown $pool {self.pool!r}: choose one of {', '.join(POOLINGS)}", fields={"pool": pool})
        if self.split not in SPLITS:
            raise field_error(
                UnitsRequest, f"unknown $split {self.split!r}: choose one of {', '.join(SPLITS)}", "split"
            )
        if self.n is not None and self.n < 1:
            raise InputError(f"the number of images must be at least 1, got {self.n}")
        if not self.layer:
            raise InputError("say which layer: $layer", fields={"layer": LAYER})
        if self.space == self.layer:
            raise field_error(
                UnitsRequest, f"$space {self.space!r} is the layer under study; pick another layer or 'pixel'", "space"
            )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self) | {"model": self.model.to_json()}
        for key in ("image_size", "classes_file"):  # absent when unset, as in records made before they existed
            if doc[key] is None:
                del doc[key]
        return doc

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UnitsRequest:
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise InputError(f"the recorded units request is damaged ({exc})") from None


@dataclass(frozen=True)
class UnitsResult:
    """The outcome of a units run: what `--json` prints, what units.json holds, what the Gallery shows.

    `comparison` holds the arrays (top-k positions in `data`, scores); `data` is the image set they index,
    kept for drawing and never written out.
    """

    request: UnitsRequest
    model: str
    checkpoint: str
    checkpoint_sha256: str
    split: str
    device: str
    comparison: UnitsComparison
    source_indices: np.ndarray  # position in the source file of each image of `data`
    files: dict[str, str]
    run: str
    notes: tuple[str, ...] = ()  # things the user should know that did not stop the run (an unusable cache)
    data: Dataset | None = field(default=None, repr=False, compare=False)

    def to_json(self, full: bool = False) -> dict[str, Any]:
        """The summary (`--json`); with `full`, every scored direction's top-k and scores too (units.json)."""
        doc = self.comparison.to_json(self.source_indices, full=False) | {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "split": self.split,
            "device": self.device,
            "files": dict(self.files),
            "run": self.run,
        }
        if full:
            doc["all"] = all_directions_json(self.comparison)
        return doc


def load_units_data(request: UnitsRequest, lm: LoadedModel | None = None) -> tuple[Dataset, dict[str, Any]]:
    """The request's image set as the model reads it (the first `n` images when it asks for fewer; for a
    folder or CIFAR set at most FOLDER_DEFAULT_N unless --n says), and what run.json records of it."""
    source = open_model_data(lm, request.data_dir, request.split, request.image_size, request.classes_file)
    n = request.n
    if n is None and source.kind != "idx":
        n = FOLDER_DEFAULT_N
    return take_images(source, 0, min(n, len(source)) if n is not None else None), data_record(source)


def run_units(request: UnitsRequest, ctx: RunContext) -> UnitsResult:
    """Activations (cached), every unit vs random directions, statistics, figures and units.json, in one run folder."""
    device = ctx.torch_device()
    with contextlib.ExitStack() as stack:
        opened: list[Any] = []

        def open_folder() -> Path:  # rank 0 only under torchrun: the others help with the activations pass
            opened.append(stack.enter_context(open_run(ctx, KIND, str(request.model), request.to_json())))
            return opened[0].path

        out = on_main_first(ctx.ranks, open_folder)
        run = opened[0] if opened else None
        lm = load_model(request.model, device)
        if ctx.ranks.main:
            warn_if_trained_on_other_data(lm, request.data_dir)
        data: Dataset | None = None
        if lm.input_shape is None:  # the user's factory: probe the layers with the data's own shape
            data, identity = load_units_data(request, lm)
        shape = model_input_shape(lm, request) if data is None else tuple(data.images.shape[1:])
        find_layer(lm.model, request.layer, shape, device)  # a bad name fails before the data are read
        if request.space != "pixel":
            find_layer(lm.model, request.space, shape, device)
        if data is None:
            data, identity = load_units_data(request, lm)
        check_labels(data, check_classifier(lm.model, tuple(data.images.shape[1:]), device), lm.id)
        if request.k > len(data):
            raise field_error(
                UnitsRequest, f"$k must be between 1 and the {len(data)} images of {data.name}, got {request.k}", "k"
            )
        if run is not None:
            run.update(model=lm.identity(), data=identity, images=len(data))
        common: dict[str, Any] = {
            "device": device,
            "use_cache": request.use_cache,
            "on_event": ctx.on_event,
            "cancel": ctx.cancelled,
            "batch_size": 1000 if data.images[0].numel() <= 4096 else 32,  # ImageNet-sized activations are large
            "ranks": ctx.ranks,
        }
        acts = layer_activations(lm, request.layer, data, pool=request.pool, **common)
        notes = [acts.note] if acts.note else []
        space_feats = None
        if request.space != "pixel":
            space_acts = layer_activations(lm, request.space, data, pool="none", **common)
            space_feats = space_acts.features
            if space_acts.note and space_acts.note not in notes:
                notes.append(space_acts.note)
        return on_main_first(
            ctx.ranks,
            lambda: _compare_and_write(request, ctx, out, lm, data, acts, space_feats, notes),
            share=lambda result: replace(result, data=None),  # the images stay with rank 0
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _compare_and_write(
    request: UnitsRequest,
    ctx: RunContext,
    out: Path,
    lm: LoadedModel,
    data: Dataset,
    acts: Any,
    space_feats: Any,
    notes: list[str],
) -> UnitsResult:
    """Units against random directions, the statistics, the figures and units.json (rank 0's part)."""
    device = ctx.torch_device()
    comparison = compare_units(
        acts,
        data.labels,
        k=request.k,
        seed=request.seed,
        n_random=request.n_random,
        max_units=request.max_units,
        show_units=request.show_units,
        show_random=request.show_random,
        bottom=request.bottom,
        space=space_feats,
        space_name=request.space,
        images=data.images,
        device=device,
        on_event=ctx.on_event,
        cancel=ctx.cancelled,
    )
    ctx.check_cancel()
    files = _write_figures(out, comparison, data)
    files["json"] = out / JSON_FILE
    result = UnitsResult(
        request=request,
        model=lm.id,
        checkpoint=str(lm.path) if lm.path else lm.source,
        checkpoint_sha256=lm.sha256,
        split=data.name,
        device=str(device),
        comparison=comparison,
        source_indices=data.indices,
        files={name: str(p) for name, p in files.items()},
        run=str(out),
        notes=tuple(notes),
        data=data,
    )
    write_json_atomic(files["json"], result.to_json(full=True))
    return result


def _write_figures(folder: Path, comparison: UnitsComparison, data: Dataset) -> dict[str, Path]:
    """The PNG grids; bottom-k grids left by an earlier run in the same folder are removed when not redrawn."""
    files = save_unit_figures(comparison, data.images, folder, labels=data.labels)
    if "units_bottom" not in files:
        for name in BOTTOM_FIGURES:
            (folder / name).unlink(missing_ok=True)
    return files


@dataclass(frozen=True)
class LayersRequest:
    """Which model's layers to list (the names `units --layer` takes)."""

    model: ModelRef  # a str is turned into a ModelRef on construction
    image_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelRef.from_json(self.model))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "image_size": self.image_size}


@dataclass(frozen=True)
class LayersResult:
    """A model's named layers in forward order, with kinds and per-image output shapes."""

    model: str
    layers: tuple[LayerInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "layers": [info.to_dict() for info in self.layers]}


def run_layers(request: LayersRequest, ctx: RunContext) -> LayersResult:
    """Load the model and run one dummy image through it to read each layer's output shape (writes nothing)."""
    device = ctx.torch_device()
    lm = load_model(request.model, device)
    return LayersResult(lm.id, tuple(list_layers(lm.model, model_input_shape(lm, request), device)))


def model_input_shape(lm: LoadedModel, request: UnitsRequest | LayersRequest) -> tuple[int, ...]:
    """The (C, H, W) the model is probed with: its own, at the request's --image-size when given.

    A model that declares none (the user's factory) is probed as an RGB image of the requested size
    (224 px without one)."""
    c, _, side = lm.input_shape or (3, 224, 224)
    side = request.image_size or side
    return (int(c), int(side), int(side))
