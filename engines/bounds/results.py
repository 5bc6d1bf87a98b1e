"""What a frame-bounds computation returns: per-layer bounds, the network's table, spectrum histograms.

`LayerBound` travels in each `LayerBounded` event as soon as its layer is done; `NetworkBounds` is the
operation's result, whose `to_json()` is what `--json` prints and what `bounds.json` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engines.bounds.factors import Factor

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
SOURCE_NOTE = (
    "model: "  # prefix of the note saying where the model came from (the CLI prints it, the TUI's bar shows it)
)


@dataclass
class LayerBound:
    """Frame bounds of one Linear or Conv2d layer (bias left out: it does not change differences)."""

    name: str
    label: str  # "Conv. 1", "FC. 2": the paper's row names, in forward order; "Conv. 1+BN" with a folded BatchNorm
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
    folded: str = ""  # the eval-mode BatchNorm folded into this layer (its name in the model), if any

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

    def histogram(self) -> dict[str, Any]:
        """The spectrum's log-binned histogram (empty when no spectrum is kept)."""
        return spectrum_histogram(self.spectrum) if self.spectrum is not None else {}

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
            folded=self.folded or None,
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
    """Table 5 for one network, the factors between its weight layers and the products.

    `source` (where the model came from) and `run` (the run folder, "" when nothing was saved) are
    for the CLI's log and the screen's bar; the JSON carries the source as a note, as it always has.
    """

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
    source: str = ""
    run: str = ""

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
