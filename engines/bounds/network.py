"""Per-layer frame bounds of a network and its upper Lipschitz bound (Szegedy et al. §4.3, Table 5).

`frame_bounds` runs one sample input through the model; hooks record every layer's actual input
size, so each Conv2d is analysed on the grid it really sees. Linear layers: singular values of W.
Conv2d layers: the paper's sup_ω ‖A(ω)‖ for the circular version of the layer (`engines.bounds.conv`),
plus power iteration through the real layer (zero padding) and a guaranteed upper bound for it.

Lower-bound convention (as in the paper's Table 5): `lower` is the smallest of the min(rows, cols)
singular values (per frequency block for a convolution). A wide operator (fewer outputs than inputs)
has a null space, so its true lower frame bound is 0: it is flagged `wide` and `lower_frame` is 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from engines.bounds.conv import (
    DENSE_LIMIT,
    conv_spectrum,
    dilate_kernel,
    linear_singular_values,
    pair,
    polyphase_spectrum,
    power_iteration,
)
from engines.bounds.factors import Factor, lipschitz_factor
from engines.bounds.trace import LayerCall, trace_layers
from engines.core.errors import Cancelled, InputError, ModelError
from engines.core.events import CancelCheck, EventSink, LayerBounded, Step, ignore_events, never_cancel
from engines.core.io import atomic_write, write_json_atomic

PAPER_TABLE5: list[dict[str, Any]] = [
    {"layer": "Conv. 1", "size": "3×11×11×96", "lower": 0.1, "upper": 20.0},
    {"layer": "Conv. 2", "size": "96×5×5×256", "lower": 0.06, "upper": 10.0},
    {"layer": "Conv. 3", "size": "256×3×3×384", "lower": 0.01, "upper": 7.0},
    {"layer": "Conv. 4", "size": "384×3×3×384", "lower": 5e-5, "upper": 7.3},
    {"layer": "Conv. 5", "size": "384×3×3×256", "lower": 0.03, "upper": 11.0},
    {"layer": "FC. 1", "size": "9216×4096", "lower": 0.09, "upper": 3.12},
    {"layer": "FC. 2", "size": "4096×4096", "lower": 1e-4, "upper": 4.0},
    {"layer": "FC. 3", "size": "4096×1000", "lower": 0.25, "upper": 4.0},
]
ALEXNET_NOTE = (
    "torchvision's AlexNet (64-192-384-256-256 filters, no groups) is not the network of the paper's Table 5 "
    "(96-256-384-384-256, trained, two-GPU groups): compare orders of magnitude only"
)
SPECTRUM_MAX = 1 << 21  # singular values stored per layer; more are stored as evenly spaced quantiles
HIST_BINS = 48


@dataclass
class LayerBound:
    """Frame bounds of one Linear or Conv2d layer (bias left out: it does not change differences)."""

    name: str
    label: str  # "Conv. 1", "FC. 2": the paper's row names, in forward order
    kind: str  # "conv" or "linear"
    size: str  # as the paper writes it: C×kh×kw×F, in×out
    input_shape: list[int]
    output_shape: list[int]
    lower: float
    upper: float
    method: str
    exact: bool
    wide: bool
    upper_real: float | None  # guaranteed upper bound on the norm of the layer as it runs (its padding)
    upper_real_method: str
    power: dict[str, Any] | None = None  # power iteration through the real layer: sigma, iterations, converged
    conv: dict[str, Any] = field(default_factory=dict)  # stride, padding, dilation, groups, padding_mode, grid, block
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    spectrum: torch.Tensor | None = None  # all singular values, descending (not in the JSON)
    freq_max: torch.Tensor | None = None  # σ_max(ω) on the frequency grid (conv, Fourier method)
    freq_min: torch.Tensor | None = None

    @property
    def lower_frame(self) -> float:
        return 0.0 if self.wide else self.lower

    @property
    def short_method(self) -> str:
        if self.kind == "linear":
            return "SVD"
        if not self.exact:
            return "approx."
        if self.method.startswith("dense"):
            return "dense SVD"
        grid = "×".join(map(str, self.conv.get("grid", [])))
        stride = self.conv.get("stride", [1, 1])
        return f"Fourier {grid}" + (
            f" Δ={'×'.join(map(str, stride)) if stride[0] != stride[1] else stride[0]}" if stride != [1, 1] else ""
        )

    def to_json(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "name",
                "label",
                "kind",
                "size",
                "input_shape",
                "output_shape",
                "lower",
                "upper",
                "method",
                "exact",
                "wide",
            )
        }
        d["lower_frame"] = self.lower_frame
        d["short_method"] = self.short_method
        d.update(
            upper_real=self.upper_real,
            upper_real_method=self.upper_real_method,
            power=self.power,
            conv=self.conv or None,
            notes=self.notes,
            seconds=round(self.seconds, 4),
        )
        if self.spectrum is not None:
            d["histogram"] = spectrum_histogram(self.spectrum)
            n = self.spectrum.numel()
            d["spectrum_stored"] = "all" if n <= SPECTRUM_MAX else f"{SPECTRUM_MAX} evenly spaced quantiles of {n}"
        return d


@dataclass
class NetworkBounds:
    """Table 5 for one network, the factors between its weight layers and the products."""

    model: str
    input_shape: list[int]
    device: str
    layers: list[LayerBound]
    factors: list[Factor]
    product_table: float  # Π table upper bounds × the paper's factors (max-pooling ×1)
    lipschitz_upper: float | None  # Π guaranteed bounds of the real layers × exact factors, if that is a bound
    lipschitz_note: str
    chain: bool  # the layers run one after another (no residual or branch): products bound the network
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "input_shape": self.input_shape,
            "device": self.device,
            "lower_convention": "smallest of the min(rows, cols) singular values; wide layers have true lower "
            "frame bound 0 (see lower_frame)",
            "table_shows": "Fourier bounds of the circular version of each convolution (the paper's method); "
            "'power' is power iteration through the real zero-padded layer",
            "layers": [layer.to_json() for layer in self.layers],
            "factors": [f.to_json() for f in self.factors],
            "product_table": self.product_table,
            "lipschitz_upper": self.lipschitz_upper,
            "lipschitz_note": self.lipschitz_note,
            "chain": self.chain,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }
        if self.model == "alexnet":
            out["paper_table5"] = PAPER_TABLE5
        return out

    def spectra(self) -> dict[str, torch.Tensor]:
        """Tensors for `spectra.safetensors`: `<layer>` (singular values) and `<layer>.freq_max/min`."""
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            if layer.spectrum is not None:
                tensors[layer.name] = _stored_spectrum(layer.spectrum).float().contiguous()
            for key in ("freq_max", "freq_min"):
                value = getattr(layer, key)
                if value is not None:
                    tensors[f"{layer.name}.{key}"] = value.float().contiguous()
        return tensors


def spectrum_histogram(values: torch.Tensor, bins: int = HIST_BINS) -> dict[str, Any]:
    """Counts over log-spaced bins of the non-zero singular values, plus min, max and the zero count."""
    v = values.double().cpu().numpy()
    vmax = float(v.max()) if v.size else 0.0
    positive = v[v > vmax * 1e-12] if vmax > 0 else v[:0]
    out: dict[str, Any] = {
        "scale": "log10",
        "count": int(v.size),
        "zeros": int(v.size - positive.size),
        "min": float(v.min()) if v.size else 0.0,
        "max": vmax,
    }
    if positive.size:
        lo, hi = float(positive.min()), float(positive.max())
        if hi <= lo * (1 + 1e-9):
            lo, hi = lo * 0.999, hi * 1.001
        edges = np.geomspace(lo, hi, bins + 1)
        counts, _ = np.histogram(positive, edges)
        out.update(edges=edges.tolist(), counts=counts.tolist())
    return out


def _stored_spectrum(values: torch.Tensor) -> torch.Tensor:
    if values.numel() <= SPECTRUM_MAX:
        return values
    idx = torch.linspace(0, values.numel() - 1, SPECTRUM_MAX).round().long()
    return values[idx]


def _conv_size(m: nn.Conv2d) -> str:
    c, (kh, kw), f = m.in_channels // m.groups, m.kernel_size, m.out_channels
    return f"{c}×{kh}×{kw}×{f}" + (f" (groups {m.groups})" if m.groups > 1 else "")


def _conv_padding(m: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """(left pad, total pad) per axis, also for padding='same' / 'valid'."""
    k = dilate_kernel(m.weight.new_zeros(1, 1, *m.kernel_size), pair(m.dilation)).shape[-2:]
    if isinstance(m.padding, str):
        total = tuple(k[i] - 1 for i in range(2)) if m.padding == "same" else (0, 0)
        return (total[0] // 2, total[1] // 2), (total[0], total[1])
    p = pair(m.padding)
    return p, (2 * p[0], 2 * p[1])


def _linear_bound(name: str, label: str, m: nn.Linear, device: torch.device, dtype: torch.dtype) -> LayerBound:
    sv = linear_singular_values(m.weight.detach().to(device, dtype))
    out_f, in_f = m.weight.shape
    layer = LayerBound(
        name=name,
        label=label,
        kind="linear",
        size=f"{in_f}×{out_f}",
        input_shape=[in_f],
        output_shape=[out_f],
        lower=float(sv[-1]),
        upper=float(sv[0]),
        exact=True,
        wide=out_f < in_f,
        method=f"SVD of W ({out_f}×{in_f}; exact)",
        upper_real=float(sv[0]),
        upper_real_method="exact",
        spectrum=sv,
    )
    if layer.wide:
        layer.notes.append(f"wide: W has a null space of dimension ≥ {in_f - out_f}, true lower frame bound 0")
    return layer


def _conv_bound(
    name: str,
    label: str,
    call: LayerCall,
    device: torch.device,
    dtype: torch.dtype,
    power_iters: int,
    dense_limit: int,
    cancel: CancelCheck = never_cancel,
) -> LayerBound:
    m: nn.Conv2d = call.module  # type: ignore[assignment]
    n_hw = (int(call.in_shape[-2]), int(call.in_shape[-1]))
    stride, dilation = pair(m.stride), pair(m.dilation)
    w = m.weight.detach().to(device, dtype)
    cs = conv_spectrum(w, n_hw, stride, dilation, m.groups, dense_limit=dense_limit, cancel=cancel)
    left, total = _conv_padding(m)
    layer = LayerBound(
        name=name,
        label=label,
        kind="conv",
        size=_conv_size(m),
        input_shape=list(call.in_shape),
        output_shape=list(call.out_shape),
        lower=cs.lower,
        upper=cs.upper,
        method=cs.method,
        exact=cs.exact,
        wide=cs.wide,
        upper_real=None,
        upper_real_method="",
        spectrum=cs.values,
        freq_max=cs.freq_max,
        freq_min=cs.freq_min,
        conv={
            "stride": list(stride),
            "padding": list(left),
            "dilation": list(dilation),
            "groups": m.groups,
            "padding_mode": m.padding_mode,
            "grid": list(cs.grid),
            "block": list(cs.block),
        },
    )
    if cs.wide:
        layer.notes.append(f"wide blocks ({cs.block[0]}×{cs.block[1]}): null space, true lower frame bound 0")
    out_hw = call.out_shape[-2:]
    if m.padding_mode == "zeros":
        # zero padding = restriction of the circular layer on a grid N'' ≥ N + padding that the stride divides
        grid = tuple(s * -(-(n + t) // s) for n, t, s in zip(n_hw, total, stride, strict=True))
        same = grid == n_hw and cs.exact
        real = (
            cs.upper
            if same
            else polyphase_spectrum(
                dilate_kernel(w, dilation), grid, stride, m.groups, values=False, cancel=cancel
            ).upper
        )
        layer.upper_real = real
        layer.upper_real_method = f"circular on {grid[0]}×{grid[1]} ⊇ the zero-padded layer" + (
            " (= the table's grid)" if same else ""
        )
        if real > cs.upper * (1 + 1e-9):
            layer.notes.append(f"the zero-padded layer may exceed the circular bound: guaranteed ≤ {real:.4g}")
    elif (
        m.padding_mode == "circular"
        and cs.exact
        and all(o <= -(-n // s) for o, n, s in zip(out_hw, n_hw, stride, strict=True))
    ):
        layer.upper_real, layer.upper_real_method = cs.upper, "the layer is (rows of) the circular operator"
    else:
        layer.upper_real_method = f"none for padding_mode={m.padding_mode!r}: see power iteration"
    if power_iters > 0:
        x0 = cs.top_input
        if x0 is None:
            x0 = torch.randn(
                *call.in_shape, dtype=dtype, device=device, generator=torch.Generator(device).manual_seed(0)
            )
        else:
            x0 = torch.roll(x0, shifts=(-left[0], -left[1]), dims=(-2, -1))  # align with the layer's padding

        def real_layer(x: torch.Tensor) -> torch.Tensor:
            return m._conv_forward(x, w, None)

        pw = power_iteration(real_layer, x0.to(device, dtype), max_iter=power_iters, tol=1e-6, cancel=cancel)
        layer.power = {
            "sigma": pw.sigma,
            "iterations": pw.iterations,
            "converged": pw.converged,
            "start": "circular top singular vector" if cs.top_input is not None else "random",
        }
    return layer


def frame_bounds(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    power_iters: int = 50,
    dense_limit: int = DENSE_LIMIT,
    model_name: str = "",
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> NetworkBounds:
    """Table 5 for `model` at `input_shape` (C, H, W, no batch): per-layer bounds, factors, products.

    The sample input runs where the model's parameters are; the spectra are computed on `device`.
    """
    started = time.perf_counter()
    shape = [int(v) for v in input_shape]
    if not shape or any(v <= 0 for v in shape):
        raise InputError(f"input shape must be positive sizes, got {shape}")
    device = torch.device(device)
    calls, chain_break = trace_layers(model, shape)
    weight_calls = [c for c in calls if isinstance(c.module, nn.Linear | nn.Conv2d)]
    if not weight_calls:
        raise ModelError("the model has no Linear or Conv2d layer: nothing to bound")
    layers: list[LayerBound] = []
    factors: list[Factor] = []
    counts = {"conv": 0, "linear": 0}
    seen: dict[str, int] = {}
    notes: list[str] = []
    for call in calls:
        seen[call.name] = seen.get(call.name, 0) + 1
        name = call.name if seen[call.name] == 1 else f"{call.name}#{seen[call.name]}"
        if not isinstance(call.module, nn.Linear | nn.Conv2d):
            factors.append(lipschitz_factor(name, call.module, call.in_shape))
            continue
        kind = "conv" if isinstance(call.module, nn.Conv2d) else "linear"
        counts[kind] += 1
        label = f"{'Conv.' if kind == 'conv' else 'FC.'} {counts[kind]}"
        if cancel():
            raise Cancelled("frame bounds")
        on_event(Step(task="frame bounds", done=len(layers), total=len(weight_calls), message=f"{name} {label}"))
        t0 = time.perf_counter()
        if kind == "conv":
            layer = _conv_bound(name, label, call, device, dtype, power_iters, dense_limit, cancel)
        else:
            layer = _linear_bound(name, label, call.module, device, dtype)  # type: ignore[arg-type]
        layer.seconds = time.perf_counter() - t0
        layers.append(layer)
        on_event(LayerBounded(task="frame bounds", done=len(layers), total=len(weight_calls), bound=layer))
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv3d | nn.ConvTranspose2d | nn.Bilinear):
            notes.append(f"{type(m).__name__} layers are not analysed")
            break
    product_table = math.prod(layer.upper for layer in layers) * math.prod(
        f.paper_factor if f.paper_factor is not None else 1.0 for f in factors
    )
    unknown = [f.name for f in factors if f.factor is None] + [x.name for x in layers if x.upper_real is None]
    if chain_break is not None:
        lipschitz, why = (
            None,
            (
                f"not a plain chain of layers (first break at {chain_break}: residual, branch or "
                "functional op): the product of layer bounds is not a Lipschitz bound"
            ),
        )
    elif unknown:
        lipschitz, why = None, f"no guaranteed bound for {', '.join(unknown[:4])}"
    else:
        lipschitz = math.prod(layer.upper_real for layer in layers) * math.prod(f.factor for f in factors)
        why = (
            "product of guaranteed bounds of the layers as they run (zero padding included) and of the exact "
            "factors between them (overlapping max-pooling √m)"
        )
    if model_name == "alexnet":
        notes.append(ALEXNET_NOTE)
    return NetworkBounds(
        model=model_name,
        input_shape=shape,
        device=str(device),
        layers=layers,
        factors=factors,
        product_table=product_table,
        lipschitz_upper=lipschitz,
        lipschitz_note=why,
        chain=chain_break is None,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def write_bounds(result: NetworkBounds, out_dir: str | Path) -> dict[str, Path]:
    """`bounds.json` and `spectra.safetensors` in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    tensors = result.spectra()
    spectra = atomic_write(out_dir / "spectra.safetensors", lambda p: save_file(tensors, str(p)))
    payload = result.to_json()
    payload["spectra_file"] = spectra.name
    return {"json": write_json_atomic(out_dir / "bounds.json", payload), "spectra": spectra}
