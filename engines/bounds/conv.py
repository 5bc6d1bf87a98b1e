"""Exact singular values of strided 2-D convolutions and of linear layers (Szegedy et al. §4.3).

The convolution analysed is the layer's *circular* version on its actual input grid N_h × N_w,
bias left out, with one output per sampled position n·s < N (⌈N/s⌉ per axis):

    y[f, n] = Σ_{c, j} w[f, c, j] · x[c, (n·s + j) mod N].

Padding only shifts the input (a permutation, so a unitary change): it leaves singular values alone.

**s divides N**: the polyphase route, `engines.bounds.polyphase`.

**s does not divide N.** The sampled positions 0, s, …, (⌈N/s⌉−1)·s are no subgroup of Z_N, so the
operator is shift-invariant on no grid and has no per-frequency blocks. It is solved exactly by a dense
SVD (explicit matrix, or the Gram matrix of its smaller side) when that side has at most `dense_limit`
rows; beyond that the upper bound comes from power iteration on the exact operator and the lower bound
and spectrum from the nearest grid that the stride divides, flagged `exact=False`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engines.bounds.polyphase import ConvSpectrum, polyphase_spectrum
from engines.bounds.polyphase_blocks import fold_kernel
from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, never_cancel

DENSE_LIMIT = 4096  # largest smaller side of a dense operator we decompose exactly
DENSE_ENTRIES = 1 << 23  # above this many entries the dense path goes through the Gram matrix


@dataclass
class PowerResult:
    sigma: float  # ‖A x‖ for the final unit x: never above the true norm
    iterations: int
    converged: bool


def pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def dilate_kernel(weight: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """A dilated convolution is an ordinary one with zeros between the taps."""
    dh, dw = dilation
    if (dh, dw) == (1, 1):
        return weight
    f, c, kh, kw = weight.shape
    out = weight.new_zeros(f, c, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[:, :, ::dh, ::dw] = weight
    return out


def circular_conv(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """The circular operator y[n] = Σ_j w[j] x[(n·s + j) mod N], ⌈N/s⌉ outputs; weight already folded."""
    kh, kw = weight.shape[-2:]
    if kh > 1 or kw > 1:
        x = F.pad(x, (0, kw - 1, 0, kh - 1), mode="circular")
    return F.conv2d(x, weight, None, stride, 0, 1, groups)


def adjoint(op: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Aᵀy for a linear op, batched over y's first axis, through autograd."""
    x = torch.zeros((y.shape[0], *in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(op(x), x, grad_outputs=y)
    return g


def start_vector(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    """A power iteration's random start: drawn by a CPU generator and moved, so that every device starts from
    the same vector (a CUDA generator draws other numbers, and bounds.json would differ between devices)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=gen).to(device)


def power_iteration(
    op: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-7,
    cancel: CancelCheck = never_cancel,
    adjoint_op: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PowerResult:
    """Largest singular value of a linear op by power iteration on AᵀA (Aᵀ: `adjoint_op`, else autograd).

    Each estimate is ‖A x‖ for a unit x, so it approaches the norm from below and never exceeds it.
    An explicit adjoint (a transposed convolution) saves autograd's bookkeeping: 40 % of the time of a
    64-channel 56×56 layer.
    """
    x = (x0 / x0.norm()).unsqueeze(0).detach()
    sigma, prev = 0.0, -1.0
    for it in range(1, max_iter + 1):
        if cancel():
            raise Cancelled("power iteration")
        if adjoint_op is not None:
            with torch.no_grad():
                y = op(x)
                g = adjoint_op(y)
        else:
            x.requires_grad_(True)
            with torch.enable_grad():
                y = op(x)
                (g,) = torch.autograd.grad(y, x, grad_outputs=y)
        sigma = float(y.detach().norm())
        if abs(sigma - prev) <= tol * max(sigma, 1e-300) or float(g.norm()) == 0.0:
            return PowerResult(sigma, it, True)
        prev = sigma
        x = (g / g.norm()).detach()
    return PowerResult(sigma, max_iter, False)


def aliased_symbol_matrices(weight: torch.Tensor, n_hw: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The paper's A(ω): rows ŵ_{c,f}(ω + 2πl/s) from *unnormalised* N-point FFTs, (M_h, M_w, F, C·s_h·s_w).

    Its singular values are √(s_h·s_w) times the operator's (Δ times in 2-D): kept to show that factor.
    """
    (nh, nw), (sh, sw) = n_hw, stride
    w = fold_kernel(weight, n_hw)
    f, c = w.shape[:2]
    # cross-correlation y[n] = Σ_j w[j] x[n + j] has the symbol Σ_j w[j] e^{+iξj}: the conjugate of the FFT
    spec = torch.fft.fft2(w, s=(nh, nw)).conj().reshape(f, c, sh, nh // sh, sw, nw // sw)
    return spec.permute(3, 5, 0, 1, 2, 4).reshape(nh // sh, nw // sw, f, c * sh * sw)


def dense_circular_values(
    weight: torch.Tensor, n_hw: tuple[int, int], stride: tuple[int, int], groups: int = 1
) -> torch.Tensor:
    """Singular values of the circular operator from its explicit (or Gram) matrix: (groups, rank), descending.

    Exact for any grid and stride; cost grows with (C·N_h·N_w)·(F·M_h·M_w), so for small cases only.
    Groups never mix, so each group's block is decomposed on its own.
    """
    w = fold_kernel(weight, n_hw)
    f, cg = w.shape[:2]
    fg = f // groups
    nh, nw = n_hw
    mh, mw = -(-nh // stride[0]), -(-nw // stride[1])
    d_in, d_out = cg * nh * nw, fg * mh * mw
    out = []
    for g in range(groups):
        wg = w[g * fg : (g + 1) * fg]

        def op(x: torch.Tensor, wg: torch.Tensor = wg) -> torch.Tensor:
            return circular_conv(x, wg, stride)

        if d_in * d_out <= DENSE_ENTRIES:
            eye = torch.eye(d_in, dtype=w.dtype, device=w.device).reshape(d_in, cg, nh, nw)
            sv = torch.linalg.svdvals(op(eye).reshape(d_in, d_out))
        else:
            sv = torch.linalg.eigvalsh(_gram(op, (cg, nh, nw), (fg, mh, mw), w)).clamp_min(0).sqrt().flip(0)
        out.append(sv)
    return torch.stack(out).to("cpu", torch.float64)


def _gram(op, in_shape, out_shape, w, batch: int = 256) -> torch.Tensor:
    """AᵀA or AAᵀ, whichever is smaller, built column block by column block."""
    d_in, d_out = math.prod(in_shape), math.prod(out_shape)
    d = min(d_in, d_out)
    gram = torch.empty(d, d, dtype=w.dtype, device=w.device)
    for start in range(0, d, batch):
        stop = min(d, start + batch)
        basis = torch.zeros(stop - start, d, dtype=w.dtype, device=w.device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
        if d_in <= d_out:
            cols = adjoint(op, op(basis.reshape(-1, *in_shape)), in_shape).reshape(-1, d)
        else:
            cols = op(adjoint(op, basis.reshape(-1, *out_shape), in_shape)).reshape(-1, d)
        gram[:, start:stop] = cols.T
    return (gram + gram.T) / 2


def conv_spectrum(
    weight: torch.Tensor,
    n_hw: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    *,
    values: bool = True,
    dense_limit: int = DENSE_LIMIT,
    power_iters: int = 300,
    cancel: CancelCheck = never_cancel,
    keep_products: bool = False,
) -> ConvSpectrum:
    """Frame bounds and spectrum of a Conv2d's circular operator on an N_h×N_w input (see module docstring)."""
    w = dilate_kernel(weight, dilation)
    (nh, nw), (sh, sw) = n_hw, stride
    if nh % sh == 0 and nw % sw == 0:
        return polyphase_spectrum(w, n_hw, stride, groups, values=values, cancel=cancel, keep_products=keep_products)
    wf = fold_kernel(w, n_hw)
    f, cg = wf.shape[:2]
    fg = f // groups
    mh, mw = -(-nh // sh), -(-nw // sw)
    d_in, d_out = cg * nh * nw, fg * mh * mw
    if min(d_in, d_out) <= dense_limit:
        sv = dense_circular_values(wf, n_hw, stride, groups)
        return ConvSpectrum(
            upper=float(sv[:, 0].max()),
            lower=float(sv[:, -1].min()),
            exact=True,
            wide=d_out < d_in,
            values=sv.reshape(-1).sort(descending=True).values if values else None,
            grid=(d_out, d_in),
            block=(d_out, d_in),
            method=f"dense SVD ({d_out}×{d_in} per group; exact, circular; stride does not divide {nh}×{nw})",
        )
    # too large for a dense SVD: exact upper by power iteration, lower and spectrum from the nearest divisible grid
    near = (sh * mh, sw * mw)
    approx = polyphase_spectrum(w, near, stride, groups, values=values, cancel=cancel)
    x0 = start_vector((groups * cg, nh, nw), w.dtype, w.device)
    pw = power_iteration(lambda x: circular_conv(x, wf, stride, groups), x0, max_iter=power_iters, cancel=cancel)
    approx.upper = max(pw.sigma, 0.0)
    approx.exact = False
    approx.freq_max = approx.freq_min = approx.top_input = None
    approx.method = (
        f"upper: power iteration on the exact circular operator ({pw.iterations} it.); lower and spectrum: "
        f"Fourier on the {near[0]}×{near[1]} grid (approximate; stride does not divide {nh}×{nw})"
    )
    return approx


def linear_singular_values(weight: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Singular values of a Linear weight (out × in), descending, float64 on the CPU.

    "auto" takes the eigenvalues of the Gram matrix of the smaller side for big layers (BLAS-3: about
    twice as fast as an SVD for AlexNet's 4096×9216 FC. 1) and redoes a plain SVD when the condition
    number makes the Gram lose the smallest value (σ_min/σ_max below 1e-5 in float64, 3e-3 in float32).
    """
    m, n = weight.shape
    if method == "svd" or (method == "auto" and min(m, n) <= 512):
        sv = torch.linalg.svdvals(weight)
    else:
        gram = symmetric_gram(weight if m <= n else weight.T)
        sv = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)
        floor = 1e-5 if weight.dtype == torch.float64 else 3e-3
        if method == "auto" and float(sv[-1]) < floor * float(sv[0]):
            sv = torch.linalg.svdvals(weight)
    return sv.to("cpu", torch.float64)


def symmetric_gram(a: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """a·aᵀ from the blocks on and above the diagonal only (10 of 16 GEMMs for 4 parts: ~35 % less work).

    Each entry is the same dot product as in a·aᵀ; only the GEMMs that produce it differ.
    """
    n = a.shape[0]
    if n < 256 * parts:
        return a @ a.T
    edges = [n * i // parts for i in range(parts + 1)]
    out = a.new_empty(n, n)
    for i in range(parts):
        lo, hi = edges[i], edges[i + 1]
        rows = a[lo:hi] @ a[lo:].T  # the block row from the diagonal on
        out[lo:hi, lo:] = rows
        out[hi:, lo:hi] = rows[:, hi - lo :].T
    return out
