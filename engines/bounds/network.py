"""Per-layer frame bounds of a network and its upper Lipschitz bound (Szegedy et al. §4.3, Table 5).

`frame_bounds` runs one sample input through the model; hooks record every layer's actual input
size, so each Conv2d is analysed on the grid it really sees. Linear layers: singular values of W.
Conv2d layers: the paper's sup_ω ‖A(ω)‖ for the circular version of the layer (`engines.bounds.conv`),
plus power iteration through the real layer (zero padding) and a guaranteed upper bound for it.

Lower-bound convention (as in the paper's Table 5): `lower` is the smallest of the min(rows, cols)
singular values (per frequency block for a convolution). A wide operator (fewer outputs than inputs)
has a null space, so its true lower frame bound is 0: it is flagged `wide` and `lower_frame` is 0.

BatchNorm folding: an eval-mode BatchNorm whose input is the output of the Conv2d (Linear) called just
before it is a per-output-channel affine map y ↦ γ/√(var+ε)·y + shift. The shift enters no difference;
the scale multiplies the kernel's rows, so conv∘BN is one convolution with weight s_f·w[f] and its exact
norm (row `conv1+bn1`, label `Conv. 1+BN`) replaces the product ‖conv‖·max_f |s_f|, which is never smaller.
A BatchNorm anywhere else (after a ReLU, a sum, or in train mode) stays a per-channel factor.

Residual networks: the product of layer bounds bounds nothing there (`chain` is False, no Lipschitz
bound). The exact composition rule would be, per block y = act(S x + B x) with shortcut S (identity, or
a folded 1×1 conv+BN) and branch B (a chain), Lip(block) ≤ Lip(act)·(‖S‖ + Π‖B's layers‖·Π factors),
and the network's bound the product over blocks; it needs the block structure, which a trace of leaf
calls does not give, so it is not computed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engines.bounds.conv import (
    DENSE_LIMIT,
    conv_spectrum,
    dilate_kernel,
    linear_singular_values,
    pair,
    power_iteration,
    start_vector,
)
from engines.bounds.factors import Factor, batchnorm_scale, lipschitz_factor
from engines.bounds.polyphase import ConvSpectrum, polyphase_norm
from engines.bounds.results import (
    ALEXNET_NOTE,
    PAPER_TABLE5,
    LayerBound,
    NetworkBounds,
    spectrum_histogram,
)
from engines.bounds.trace import LayerCall, trace_layers
from engines.core.errors import Cancelled, InputError, ModelError
from engines.core.events import CancelCheck, EventSink, LayerBounded, Step, ignore_events, never_cancel

# the result types live in engines.bounds.results; these names stay importable from here
__all__ = ["ALEXNET_NOTE", "PAPER_TABLE5", "LayerBound", "NetworkBounds", "frame_bounds", "spectrum_histogram"]


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


def _linear_bound(
    name: str,
    label: str,
    m: nn.Linear,
    device: torch.device,
    dtype: torch.dtype,
    scale: torch.Tensor | None = None,
) -> LayerBound:
    w = m.weight.detach().to(device, dtype)
    if scale is not None:  # a folded BatchNorm1d: its scale multiplies W's rows
        w = w * scale.to(device, dtype)[:, None]
    sv = linear_singular_values(w)
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
    scale: torch.Tensor | None = None,
) -> LayerBound:
    m: nn.Conv2d = call.module  # type: ignore[assignment]
    n_hw = (int(call.in_shape[-2]), int(call.in_shape[-1]))
    stride, dilation = pair(m.stride), pair(m.dilation)
    w = m.weight.detach().to(device, dtype)
    if scale is not None:  # a folded BatchNorm2d: its scale multiplies the kernel's rows (output channels)
        w = w * scale.to(device, dtype)[:, None, None, None]
    cs = conv_spectrum(w, n_hw, stride, dilation, m.groups, dense_limit=dense_limit, cancel=cancel, keep_products=True)
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
        gh, gw = (s * -(-(n + t) // s) for n, t, s in zip(n_hw, total, stride, strict=True))
        grid = (gh, gw)
        same = grid == n_hw and cs.exact
        real = (
            cs.upper
            if same
            else polyphase_norm(
                dilate_kernel(w, dilation), grid, stride, m.groups, near=_peaks(cs), products=cs.products, cancel=cancel
            )
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
    cs.products = None  # up to hundreds of MB: not kept past this layer
    if power_iters > 0:
        x0 = cs.top_input
        if x0 is None:
            x0 = start_vector(call.in_shape, dtype, device)
        else:
            x0 = torch.roll(x0, shifts=(-left[0], -left[1]), dims=(-2, -1))  # align with the layer's padding

        def real_layer(x: torch.Tensor) -> torch.Tensor:
            return m._conv_forward(x, w, None)

        pw = power_iteration(
            real_layer,
            x0.to(device, dtype),
            max_iter=power_iters,
            tol=1e-6,
            cancel=cancel,
            adjoint_op=_conv_adjoint(m, w, n_hw),
        )
        layer.power = {
            "sigma": pw.sigma,
            "iterations": pw.iterations,
            "converged": pw.converged,
            "start": "circular top singular vector" if cs.top_input is not None else "random",
        }
    return layer


def _conv_adjoint(
    m: nn.Conv2d, w: torch.Tensor, in_hw: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The zero-padded layer's transpose onto the input's size (None: use autograd).

    For padding_mode 'zeros' with numeric padding. Stride 1: a convolution with the flipped, transposed
    kernel and padding d·(k−1) − p (half the time of `conv_transpose2d` in float64 on the CPU); otherwise
    a transposed convolution whose output_padding restores the rows the stride drops.
    """
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    stride, pad, dil = pair(m.stride), pair(m.padding), pair(m.dilation)
    f, cg, kh, kw = w.shape
    g = m.groups
    back = tuple(d * (k - 1) - p for d, k, p in zip(dil, (kh, kw), pad, strict=True))
    if stride == (1, 1) and min(back) >= 0:
        flipped = (
            w.flip(-2, -1).reshape(g, f // g, cg, kh, kw).transpose(1, 2).reshape(g * cg, f // g, kh, kw).contiguous()
        )

        def by_conv(y: torch.Tensor) -> torch.Tensor:
            return F.conv2d(y, flipped, None, 1, back, dil, g)

        return by_conv

    def by_transpose(y: torch.Tensor) -> torch.Tensor:
        extra = tuple(
            in_hw[i] - ((y.shape[-2 + i] - 1) * stride[i] - 2 * pad[i] + dil[i] * ((kh, kw)[i] - 1) + 1)
            for i in range(2)
        )
        return F.conv_transpose2d(y, w, None, stride, pad, extra, g, dil)

    return by_transpose


def _peaks(cs: ConvSpectrum, count: int = 8) -> list[tuple[float, float]]:
    """The `count` frequencies (in cycles) with the largest σ_max(ω) on the table's grid: where to look first
    for the norm on a nearby grid."""
    if cs.freq_max is None:
        return []
    mh, mw = cs.freq_max.shape
    top = cs.freq_max.reshape(-1).topk(min(count, mh * mw)).indices.tolist()
    return [((i // mw) / mh, (i % mw) / mw) for i in top]


def _foldable_batchnorm(layer: LayerCall, nxt: LayerCall) -> torch.Tensor | None:
    """The per-channel scale of `nxt` when it is an eval-mode BatchNorm applied directly to `layer`'s output.

    Directly: its input is the layer's output (no activation, sum or other op in between), channel for
    channel (BatchNorm2d after a Conv2d, BatchNorm1d on the (N, F) output of a Linear).
    """
    bn = nxt.module
    if not nxt.follows or bn.training or not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
        return None
    m = layer.module
    if isinstance(m, nn.Conv2d):
        fits = isinstance(bn, nn.BatchNorm2d) and bn.num_features == m.out_channels
    else:
        fits = isinstance(bn, nn.BatchNorm1d) and tuple(layer.out_shape) == (bn.num_features,)
    return batchnorm_scale(bn) if fits else None


def folded_name(layer: str, bn: str) -> str:
    """'conv1' + 'bn1' -> 'conv1+bn1'; 'layer1.0.conv1' + 'layer1.0.bn1' -> 'layer1.0.conv1+bn1'.

    The BatchNorm's path shared with the layer's is dropped, unless what is left is a bare index
    ('features.0.0' + 'features.0.1' stays whole: '…0+1' would read as a sum).
    """
    a, b = layer.split("."), bn.split(".")
    k = 0
    while k < min(len(a), len(b)) - 1 and a[k] == b[k]:
        k += 1
    rest = ".".join(b[k:])
    return f"{layer}+{bn if rest[:1].isdigit() else rest}"


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
    names = []
    for call in calls:
        seen[call.name] = seen.get(call.name, 0) + 1
        names.append(call.name if seen[call.name] == 1 else f"{call.name}#{seen[call.name]}")
    notes: list[str] = []
    folded: set[int] = set()  # indices of BatchNorm calls folded into the layer before them
    for i, call in enumerate(calls):
        name = names[i]
        if i in folded:
            continue
        if not isinstance(call.module, nn.Linear | nn.Conv2d):
            factors.append(lipschitz_factor(name, call.module, call.in_shape))
            continue
        kind = "conv" if isinstance(call.module, nn.Conv2d) else "linear"
        counts[kind] += 1
        label = f"{'Conv.' if kind == 'conv' else 'FC.'} {counts[kind]}"
        scale = _foldable_batchnorm(call, calls[i + 1]) if i + 1 < len(calls) else None
        if scale is not None:
            folded.add(i + 1)
            name, label = folded_name(name, names[i + 1]), f"{label}+BN"
        if cancel():
            raise Cancelled("frame bounds")
        on_event(Step(task="frame bounds", done=len(layers), total=len(weight_calls), message=f"{name} {label}"))
        t0 = time.perf_counter()
        if kind == "conv":
            layer = _conv_bound(name, label, call, device, dtype, power_iters, dense_limit, cancel, scale)
        else:
            layer = _linear_bound(name, label, call.module, device, dtype, scale)  # type: ignore[arg-type]
        if scale is not None:
            bn = names[i + 1]
            layer.folded = bn
            layer.method += f"; eval-mode BatchNorm {bn} folded in (kernel rows × γ/√(var+ε))"
            layer.notes.append(
                f"{bn} folded in: the exact norm of {names[i]}∘{bn}, never above the product of their two bounds"
            )
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
        reals = [layer.upper_real for layer in layers if layer.upper_real is not None]  # all of them: none unknown
        lipschitz = math.prod(reals) * math.prod(f.factor for f in factors if f.factor is not None)
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
