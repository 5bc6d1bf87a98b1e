"""A kernel split into its stride phases: a strided circular convolution's frequency blocks and their Gram matrices.

With stride s dividing the grid N, the layer is a stride-1 circular convolution on the M = N/s grid with C·s² input
channels (the kernel's phases h_p[q] = w[q·s + p]), block-diagonal in frequency: one block Ĥ(ω) per output
frequency. This module builds those blocks, or directly their smaller Gram matrices (from the kernel's tap products
when cheaper); `engines.bounds.polyphase` decomposes them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAG_ENTRIES = 1 << 25  # largest product table built for the Gram matrices' lag terms (256 MB in float64)
LAG_ADVANTAGE = 1.0  # lag terms are used when their flop count is below this times the blocks' Gram's


def fold_kernel(weight: torch.Tensor, n_hw: tuple[int, int]) -> torch.Tensor:
    """On a circular N grid taps j and j + N act alike: sum them so the kernel is at most N wide."""
    for axis, n in ((2, n_hw[0]), (3, n_hw[1])):
        k = weight.shape[axis]
        if k > n:
            w = weight.movedim(axis, -1)
            w = F.pad(w, (0, (-k) % n))
            weight = w.reshape(*w.shape[:-1], -1, n).sum(-2).movedim(-1, axis)
    return weight


def phase_matrix(
    freqs: torch.Tensor, taps: int, m: int, device: torch.device, dtype: torch.dtype, first: int = 0
) -> torch.Tensor:
    """exp(−2πi·k·q/M) for the given frequencies k and taps q = first, first + 1, … (phases exact mod M)."""
    q = torch.arange(first, first + taps, device=device)
    phase = (freqs[:, None] * q[None, :]) % m
    angle = phase.to(dtype) * (-2 * math.pi / m)
    return torch.polar(torch.ones_like(angle), angle)


def block_gram(blocks: torch.Tensor) -> torch.Tensor:
    """B·Bᴴ or Bᴴ·B, whichever is smaller, in float64 / complex128 whatever the blocks' precision."""
    b = blocks.to(torch.complex128 if blocks.is_complex() else torch.float64)
    return b @ b.mH if b.shape[-2] <= b.shape[-1] else b.mH @ b


@dataclass
class Polyphase:
    """A kernel split into its stride phases: what every frequency block and its Gram matrix are built from."""

    taps: torch.Tensor  # (q_h, q_w, F, C/groups · p_h · p_w): the real polyphase taps h[q]
    grid: tuple[int, int]  # (M_h, M_w)
    groups: int
    rows: int  # frequency rows with distinct blocks: 1 when no kernel tap lies one stride down (q_h = 1)
    cols: int  # distinct frequency columns of the rfft half-plane: 1 when q_w = 1
    block: tuple[int, int]  # (F/groups, C/groups·s_h·s_w): one block of the operator, zero columns included
    kept: int  # columns that can be non-zero: phases p < k (a kernel narrower than its stride leaves the rest 0)
    phases: tuple[int, int]  # (p_h, p_w) phases kept per axis
    lags: torch.Tensor | None = None  # (2q_h − 1, m_w', groups, side, side): the Gram's lag terms, rfft over w
    spec: torch.Tensor | None = None  # without lags, (q_h, m_w', F, kept): Σ_{q_w} h[q] e^{−2πi k_w q_w / M_w}
    products: LagProducts | None = None  # what the lag terms were summed from (to reuse on another grid)

    @property
    def side(self) -> int:
        """The side of each block's smaller Gram matrix: its number of singular values."""
        return min(self.block[0], self.kept)


def split_phases(
    weight: torch.Tensor,
    n_hw: tuple[int, int],
    stride: tuple[int, int],
    groups: int,
    products: LagProducts | None = None,
) -> Polyphase:
    """`weight` (F, C/groups, k_h, k_w) on the `n_hw` grid split into its `stride` phases (strides divide the grid)."""
    (nh, nw), (sh, sw) = n_hw, stride
    if nh % sh or nw % sw:
        raise ValueError(f"strides {stride} do not divide the grid {n_hw}")
    mh, mw = nh // sh, nw // sw
    w = fold_kernel(weight, n_hw)
    f, cg, kh, kw = w.shape
    qh, qw = -(-kh // sh), -(-kw // sw)
    w = F.pad(w, (0, qw * sw - kw, 0, qh * sh - kh)).reshape(f, cg, qh, sh, qw, sw)
    ph, pw = min(kh, sh), min(kw, sw)  # phases p ≥ k hold no tap: their columns are zero
    w = w[:, :, :, :ph, :, :pw]
    cols = 1 if qw == 1 else mw // 2 + 1
    taps = w.permute(2, 4, 0, 1, 3, 5).reshape(qh, qw, f, cg * ph * pw)
    pp = Polyphase(
        taps, (mh, mw), groups, 1 if qh == 1 else mh, cols, (f // groups, cg * sh * sw), cg * ph * pw, (ph, pw)
    )
    pp.lags = lag_terms(pp, products)
    if pp.lags is None:
        spec = torch.fft.rfft(w, n=mw, dim=4)[:, :, :, :, :cols]  # (f, cg, qh, ph, cols, pw)
        pp.spec = spec.permute(2, 4, 0, 1, 3, 5).reshape(qh, cols, f, cg * ph * pw).contiguous()
    return pp


@dataclass
class LagProducts:
    """All products h_q·h_q'ᵀ of a kernel's polyphase taps (one table per group): grid-independent, so the
    table's grid and the zero-padded layer's larger one share them."""

    taps: torch.Tensor
    table: torch.Tensor  # (groups, taps·side, taps·side) float64


def lag_terms(pp: Polyphase, products: LagProducts | None = None) -> torch.Tensor | None:
    """The Gram matrices' lag terms, when building them that way is cheaper than from the blocks.

    With the blocks B(ω) = Σ_q h_q e^{−iω·q}, B(ω)B(ω)ᴴ = Σ_d T_d e^{−iω·d} with T_d = Σ_{q−q'=d} h_q h_q'ᵀ
    (and with h_qᵀ h_q' for BᴴB, the complex conjugate, which has the same eigenvalues). All products
    h_q h_q'ᵀ come from one real GEMM, independent of the grid: for ResNet-18's 3×3 layers it costs
    (9·side)²·K real flops, against M_h·M_w'·side²·K complex ones for all the Gram matrices of the blocks.
    Lags are folded modulo M along w (taps j and j + M act alike) and transformed there; along h the
    phase matrix takes them as they are. None when the direct route is cheaper or the products too large.
    """
    qh, qw, f, kept = pp.taps.shape
    g, fg, side = pp.groups, pp.block[0], pp.side
    other = max(fg, kept)
    taps = qh * qw
    lag_cost = 2 * g * (taps * side) ** 2 * other
    direct_cost = 8 * pp.rows * pp.cols * g * side * side * other
    if lag_cost >= LAG_ADVANTAGE * direct_cost or g * (taps * side) ** 2 > LAG_ENTRIES:
        return None
    if products is not None and products.taps.shape == pp.taps.shape and torch.equal(products.taps, pp.taps):
        table = products.table
    else:
        s = pp.taps.to(torch.float64).reshape(taps, g, fg, kept).permute(1, 0, 2, 3)  # (g, taps, fg, kept)
        if fg > kept:
            s = s.transpose(-1, -2)  # rows of side `kept`: hᵀ h
        x = s.reshape(g, taps * side, other)
        table = x @ x.transpose(-1, -2)
    pp.products = LagProducts(pp.taps, table)
    prod = table.reshape(g, qh, qw, side, qh, qw, side)
    mw = pp.grid[1]
    lags = prod.new_zeros(2 * qh - 1, mw, g, side, side)
    for i, i2, j, j2 in itertools.product(range(qh), range(qh), range(qw), range(qw)):
        lags[i - i2 + qh - 1, (j - j2) % mw] += prod[:, i, j, :, i2, j2, :]
    lags = torch.fft.rfft(lags, dim=1)[:, : pp.cols]
    return lags.contiguous()


def blocks(pp: Polyphase, rows: torch.Tensor) -> torch.Tensor:
    """The blocks Ĥ(ω) of the given frequency rows: (rows, cols, groups, F/groups, kept), one complex GEMM."""
    assert pp.spec is not None
    qh, cols, f, kept = pp.spec.shape
    e = phase_matrix(rows, qh, pp.grid[0], pp.spec.device, pp.spec.real.dtype).to(pp.spec.dtype)
    return (e @ pp.spec.reshape(qh, -1)).reshape(len(rows), cols, pp.groups, f // pp.groups, kept)


def blocks_at(pp: Polyphase, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The blocks at the frequencies (rows[i], cols[i]): (n, groups, F/groups, kept), straight from the taps."""
    qh, qw, f, kept = pp.taps.shape
    (mh, mw), dev = pp.grid, pp.taps.device
    ph = (rows[:, None] * torch.arange(qh, device=dev)) % mh  # exact integer phases
    pw = (cols[:, None] * torch.arange(qw, device=dev)) % mw
    real = pp.taps.real.dtype if pp.taps.is_complex() else pp.taps.dtype
    angle = -2 * math.pi * (ph.to(real)[:, :, None] / mh + pw.to(real)[:, None, :] / mw)
    e = torch.polar(torch.ones_like(angle), angle).reshape(len(rows), qh * qw)
    taps = pp.taps.reshape(qh * qw, -1).to(e.dtype)
    return (e @ taps).reshape(len(rows), pp.groups, f // pp.groups, kept)


def grams(pp: Polyphase, rows: torch.Tensor) -> torch.Tensor:
    """The blocks' smaller Gram matrices for the given rows: (rows, cols, groups, side, side), complex128."""
    if pp.lags is None:
        return block_gram(blocks(pp, rows))
    lh = pp.lags.shape[0]
    first = -(lh // 2)
    e = phase_matrix(rows, lh, pp.grid[0], pp.lags.device, torch.float64, first).to(pp.lags.dtype)
    return (e @ pp.lags.reshape(lh, -1)).reshape(len(rows), *pp.lags.shape[1:])


def row_chunks(pp: Polyphase, chunk_elements: int) -> list[torch.Tensor]:
    per_row = pp.cols * pp.groups * pp.side**2 if pp.spec is None else pp.spec[0].numel()
    step = max(1, min(pp.rows, chunk_elements // max(1, per_row)))
    return [torch.arange(s, min(pp.rows, s + step), device=pp.taps.device) for s in range(0, pp.rows, step)]
