"""The bounds operation: `run_bounds(request, ctx)`, called alike by `blindspot bounds` and the Bounds screen.

It loads the model (a zoo id, a checkpoint path, 'alexnet' or a torchvision classifier name, via
`engines.bounds.models`), computes every weight layer's frame bounds (each finished layer is announced
as a `LayerBounded` event, and `ctx.cancelled` is polled between layers and inside long ones), and
writes the run folder through `open_run`:
    run.json                 format, kind, the request, the model's name and source, status, seconds
    bounds.json              `NetworkBounds.to_json()`, what `--json` prints (plus `spectra_file`)
    spectra.safetensors      each layer's singular values and, for convolutions, σ_max/σ_min per frequency
No figure is drawn: the CLI prints a table and the screen draws its own bars and histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engines.bounds.factors import Factor
from engines.bounds.models import BoundsModel, load_bounds_model
from engines.bounds.network import frame_bounds
from engines.bounds.results import SOURCE_NOTE, LayerBound, NetworkBounds
from engines.core.context import RunContext
from engines.core.errors import InputError
from engines.core.io import atomic_write, read_json, write_json_atomic
from engines.core.models import ModelRef
from engines.core.options import field_error, option
from engines.core.precision import float32_precision
from engines.core.runs import open_run

PRECISIONS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
BOUNDS_FILE, SPECTRA_FILE = "bounds.json", "spectra.safetensors"
MAX_SIDE = 16384


@dataclass(frozen=True)
class BoundsRequest:
    """Which model and how precisely: everything that fixes the result. Stored in run.json.

    `input_shape` None means the model's own (a checkpoint's spec, 224 px for torchvision, 299 for
    inception_v3); `seed` fixes a torchvision model's random initialisation.
    """

    model: ModelRef  # a str is turned into a ModelRef on construction
    weights: str | None = None  # folded into `model` (kept for records made before model references)
    input_shape: tuple[int, int, int] | None = option(
        None, flags=("--input",), label="input", help="CxHxW, e.g. 3x224x224 (default: the model's)."
    )
    power_iters: int = option(
        50, label="power iterations", min=0, help="Power iterations through each real conv layer (0: skip)."
    )
    precision: str = option("float64", choices=tuple(PRECISIONS), help="float64 (default) or float32 (faster).")
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, str) and not self.model.strip():
            raise InputError("say which model: --model ID|alexnet|TORCHVISION_NAME|PATH")
        model = ModelRef.from_json(self.model)
        if self.weights is not None:
            if model.weights is not None:
                raise InputError("the weights are given twice")
            model = replace(model, weights=str(self.weights))
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "weights", None)
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}: use float64 or float32")
        if self.power_iters < 0:
            raise field_error(BoundsRequest, "$power_iters must be 0 or more", "power_iters")
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if len(shape) != 3 or not all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in shape):
                raise field_error(
                    BoundsRequest,
                    f"$input_shape must be three sizes C, H, W in 1..{MAX_SIDE}, got {list(shape)}",
                    "input_shape",
                )
            object.__setattr__(self, "input_shape", shape)

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "weights": None,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "power_iters": self.power_iters,
            "precision": self.precision,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BoundsRequest:
        try:
            shape = d.get("input_shape")
            return cls(
                model=ModelRef.from_json(d["model"]),
                weights=d.get("weights"),
                input_shape=tuple(int(v) for v in shape) if shape is not None else None,  # type: ignore[arg-type]
                power_iters=int(d["power_iters"]),
                precision=str(d["precision"]),
                seed=int(d["seed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded bounds request is damaged ({type(exc).__name__}: {exc})") from None


def run_bounds(request: BoundsRequest, ctx: RunContext, *, save: bool = True) -> NetworkBounds:
    """Load, compute and (with `save`) write the run folder: `ctx.out`, or a new one under `ctx.runs_root`.

    `save=False` writes nothing at all (the CLI without --out prints only, as it always has).
    """
    device = ctx.torch_device()
    if not save:
        with float32_precision(ctx.tf32):
            return _compute(load_bounds_model(request.model), request, device, ctx)
    with open_run(ctx, "bounds", str(request.model), request.to_json()) as run, float32_precision(ctx.tf32) as used:
        loaded = load_bounds_model(request.model)
        identity: dict[str, Any] = {"name": loaded.name, "source": loaded.source}
        if loaded.normalization is not None:
            identity["normalization"] = loaded.normalization
        run.update(model=identity, precision=used)  # TF32 off unless --tf32: float32 bounds stay float32
        result = _compute(loaded, request, device, ctx)
        result.run = str(run.path)
        write_bounds(result, run.path)
    return result


def _compute(loaded: BoundsModel, request: BoundsRequest, device: torch.device, ctx: RunContext) -> NetworkBounds:
    result = frame_bounds(
        loaded.model,
        request.input_shape or loaded.input_shape,
        device=device,
        dtype=request.dtype,
        power_iters=request.power_iters,
        model_name=loaded.name,
        on_event=ctx.on_event,
        cancel=ctx.cancelled,
    )
    result.source = loaded.source
    result.notes.append(f"{SOURCE_NOTE}{loaded.source}")
    if loaded.normalization is not None:
        norm = loaded.normalization
        result.notes.append(
            f"input normalization {norm['name']} ((x - mean) / std in front of the network) is not in the table: "
            f"its operator norm is max 1/std = {norm['factor']:.4g}, so in pixel space multiply the product by it"
        )
    return result


def write_bounds(result: NetworkBounds, out_dir: str | Path) -> dict[str, Path]:
    """`bounds.json` and `spectra.safetensors` in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    tensors = result.spectra()
    spectra = atomic_write(out_dir / SPECTRA_FILE, lambda p: save_file(tensors, str(p)))
    payload = result.to_json()
    payload["spectra_file"] = spectra.name
    return {"json": write_json_atomic(out_dir / BOUNDS_FILE, payload), "spectra": spectra}


def read_bounds(folder: str | Path) -> tuple[NetworkBounds, list[dict[str, Any]]]:
    """A finished bounds run as the screen shows it (the table and each layer's spectrum histogram),
    from bounds.json alone: reopening a run never recomputes it."""
    path = Path(folder) / BOUNDS_FILE
    try:
        doc = read_json(path)
        layers = [_layer_from_json(d) for d in doc["layers"]]
        factors = [Factor(**f) for f in doc.get("factors", [])]
        source = next((n.removeprefix(SOURCE_NOTE) for n in doc.get("notes", []) if n.startswith(SOURCE_NOTE)), "")
        bounds = NetworkBounds(
            model=str(doc["model"]),
            input_shape=list(doc["input_shape"]),
            device=str(doc.get("device", "")),
            layers=layers,
            factors=factors,
            product_table=float(doc["product_table"]),
            lipschitz_upper=doc.get("lipschitz_upper"),
            lipschitz_note=str(doc.get("lipschitz_note", "")),
            chain=bool(doc.get("chain", True)),
            notes=list(doc.get("notes", [])),
            seconds=float(doc.get("seconds", 0.0)),
            source=source,
            run=str(folder),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path} is missing or damaged ({type(exc).__name__}: {exc}); compute the bounds again"
        ) from None
    return bounds, [d.get("histogram") or {} for d in doc["layers"]]


def _layer_from_json(d: dict[str, Any]) -> LayerBound:
    names = {f.name for f in fields(LayerBound)} - {"spectrum", "freq_max", "freq_min"}
    values = {k: v for k, v in d.items() if k in names}
    values["conv"] = values.get("conv") or {}
    values["folded"] = values.get("folded") or ""
    return LayerBound(**values)
