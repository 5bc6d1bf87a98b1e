"""The polyphase route to the exact spectrum of a strided circular convolution whose stride divides the grid.

**s divides N: polyphase.** Split each kernel into its s_h·s_w phases h_p[q] = w[q·s + p]. The layer is
then a stride-1 circular convolution on the M = N/s grid with C·s² input channels, block-diagonal in
frequency: one F × C·s² block Ĥ(ω) per output frequency ω (M_h·M_w blocks, half of them by conjugate
symmetry). The paper's A(ω), rows (ŵ_{c,f}(ω + 2πl/s))_{c,l} built from unnormalised N-point FFTs at the
s² aliased frequencies, equals Ĥ(ω)·diag(phases)·(DFT_s ⊗ DFT_s); an unnormalised DFT_s has norm √s, so
A(ω)'s singular values are √(s_h·s_w) = Δ times too large in 2-D (`engines.bounds.conv.aliased_symbol_matrices` shows it).

The blocks (built in `engines.bounds.polyphase_blocks`) are decomposed in chunks across worker threads,
through their Gram matrices (from the kernel's tap products when cheaper) except where they are
ill-conditioned; `polyphase_norm` finds the largest singular value alone, near given frequencies first.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from engines.bounds.polyphase_blocks import (
    LagProducts,
    Polyphase,
    block_gram,
    blocks_at,
    grams,
    row_chunks,
    split_phases,
)
from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, never_cancel

CHUNK_ELEMENTS = 1 << 22  # complex entries of frequency blocks decomposed per batch
EIG_FLOOR = 1e-4  # blocks with σ_min/σ_max below this are decomposed by svdvals, not through the Gram matrix
REFINE = 8  # blocks holding the least singular value (within 1e-4) that are redone by svdvals


@dataclass
class ConvSpectrum:
    """All singular values of one convolution operator and where its extremes sit."""

    upper: float
    lower: float  # smallest of the min(rows, cols) singular values of each block, over all ω
    method: str
    exact: bool
    wide: bool  # blocks have fewer rows than columns: the operator has a null space (true lower bound 0)
    values: torch.Tensor | None  # the multiset of singular values, descending, float64 on the CPU
    grid: tuple[int, int]  # frequency grid (M_h, M_w); the dense matrix's shape for the dense method
    block: tuple[int, int]  # (rows, columns) of one frequency block per group
    freq_max: torch.Tensor | None = None  # σ_max(ω) on the full (M_h, M_w) grid, unshifted (ω = 0 at [0, 0])
    freq_min: torch.Tensor | None = None
    top_input: torch.Tensor | None = None  # real (C, N_h, N_w) input reaching σ_max (for warm starts)
    products: LagProducts | None = None  # the kernel's tap products, to reuse for the same kernel on another grid


def _workers(device: torch.device, batch: int) -> int:
    """Threads for a batch of small decompositions: LAPACK's batched eigvalsh and Cholesky decompose one
    matrix after the other, each too small to keep two cores busy, so on the CPU the batch is split."""
    return 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), batch))


def _in_threads(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """fn over the flat batch, split in contiguous parts over `_workers` threads (torch releases the GIL).

    Each worker runs single-threaded (two MKL thread teams on two cores halve the speed: measured 0.25 s
    against 0.5 s for 420 eigvalsh of 128×128); `torch.set_num_threads` is process-wide, so the count
    is restored when the workers are done.
    """
    n, before = _workers(batch.device, batch.shape[0]), torch.get_num_threads()
    if n == 1:
        return fn(batch)

    def single(part: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(1)
        return fn(part)

    try:
        with ThreadPoolExecutor(n) as pool:
            return torch.cat(list(pool.map(single, batch.chunk(n))))
    finally:
        torch.set_num_threads(before)


def gram_norms_above(gram: torch.Tensor, level: float) -> torch.Tensor:
    """[the largest λ_max among the Gram matrices with λ_max ≥ level], or [−1] when there is none.

    A Cholesky factorisation of level·I − G succeeds exactly when λ_max(G) < level (up to rounding, a
    relative 1e-13): it costs a fifth of an eigvalsh, and only the matrices that fail it are decomposed
    (all of them when level ≤ 0).
    """
    over = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    if level > 0:
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        over = torch.linalg.cholesky_ex(level * eye - gram).info != 0
    if not bool(over.any()):
        return torch.full((1,), -1.0, dtype=torch.float64, device=gram.device)
    return torch.linalg.eigvalsh(gram[over])[..., -1].max().reshape(1)


def _redo_by_svd(pp: Polyphase, sv: torch.Tensor, which: torch.Tensor) -> None:
    """Replace the values of the blocks flagged in `which` (rows, cols, groups) by `svdvals` of the blocks."""
    at = which.any(-1).nonzero()
    for start in range(0, len(at), 256):
        r, c = at[start : start + 256].T
        blocks = blocks_at(pp, r, c)
        sel = which[r, c]
        values = torch.linalg.svdvals(blocks[sel]).to(sv.dtype)
        target = sv[r, c]
        target[sel] = values
        sv[r, c] = target


def _refine_least(pp: Polyphase, sv: torch.Tensor, window: float = 1e-4) -> None:
    """Redo by `svdvals` the blocks (at most REFINE) whose least value is within `window` of the least of all.

    The Gram route's relative error is ≤ 1e-8 above the floor; this makes the reported lower bound as exact as a
    plain SVD of its block.
    """
    least = sv[..., -1]
    order = least.reshape(-1).argsort()[:REFINE]
    keep = least.reshape(-1)[order] <= float(least.min()) * (1 + window)
    which = torch.zeros(least.numel(), dtype=torch.bool, device=sv.device)
    which[order[keep]] = True
    _redo_by_svd(pp, sv, which.reshape(least.shape))


def polyphase_spectrum(
    weight: torch.Tensor,
    n_hw: tuple[int, int],
    stride: tuple[int, int],
    groups: int = 1,
    *,
    values: bool = True,
    chunk_elements: int = CHUNK_ELEMENTS,
    cancel: CancelCheck = never_cancel,
    keep_products: bool = False,
) -> ConvSpectrum:
    """Exact spectrum of the circular strided convolution when the strides divide the grid.

    `weight` is (F, C/groups, k_h, k_w), already dilated, in the dtype and on the device to compute in.
    Only the rfft half-plane is decomposed (a real kernel's blocks at −ω are the conjugates of those at ω,
    same singular values), a frequency axis along which the kernel has one tap per phase (1×1 convolutions,
    kernels no wider than their stride) gives the same block at every frequency and is decomposed once.
    Each block's values are √eigvalsh of its smaller Gram matrix in float64 (from the tap products or from
    the block, `lag_terms`), split over the CPU threads: a third of an `svdvals` or less, and MKL's
    batched complex `svdvals` is erratic here (3 to 40 s for the same 28 blocks of 512×1024). Squaring the
    condition number costs accuracy only at the bottom: σ keeps a relative error ~ε·(σ_max/σ)²/2, so blocks
    with values below EIG_FLOOR·σ_max, and those holding the least value (the lower bound), are redone by
    `svdvals`. `cancel` is polled before each chunk of frequency rows.
    """
    pp = split_phases(weight, n_hw, stride, groups)
    (mh, mw), (fg, cols) = pp.grid, pp.block
    mw2 = mw // 2 + 1
    rank, rank_kept = min(fg, cols), pp.side
    side = pp.side
    sv_rows = []
    for rows in row_chunks(pp, chunk_elements):
        if cancel():  # between chunks: one layer of a large network takes seconds on a CPU
            raise Cancelled("frame bounds")
        gram = grams(pp, rows)
        lam = _in_threads(torch.linalg.eigvalsh, gram.reshape(-1, side, side))
        sv_rows.append(lam.clamp_min(0).sqrt().flip(-1).reshape(*gram.shape[:3], side))
    sv = torch.cat(sv_rows)
    # σ² has an absolute error ~ε·σ_max² (measured ≤ 1.1× that on ResNet-18's blocks, both routes), so σ a
    # relative one ~ε·(σ_max/σ)²/2, ≤ 1e-8 above the floor
    _redo_by_svd(pp, sv, sv[..., -1] < EIG_FLOOR * float(sv[..., 0].max()))
    _refine_least(pp, sv)
    if rank > rank_kept:  # the zero columns' share of the spectrum: exact zeros
        sv = torch.cat([sv, sv.new_zeros(*sv.shape[:-1], rank - rank_kept)], -1)
    sv = sv.expand(mh, mw2, *sv.shape[2:])  # one block for all rows (columns) when it does not depend on them
    half_max = sv[..., 0].amax(-1)
    half_min = sv[..., rank - 1].amin(-1)
    upper, lower = float(half_max.max()), float(half_min.min())
    freq_max, freq_min = _full_plane(half_max, mw), _full_plane(half_min, mw)
    top = divmod(int(half_max.argmax()), mw2)
    spectrum = None
    if values:
        twice = torch.ones(mw2, dtype=torch.bool, device=sv.device)
        twice[0] = False
        if mw % 2 == 0:
            twice[mw // 2] = False
        flat = torch.cat([sv.reshape(-1), sv[:, twice].reshape(-1)]).to("cpu", torch.float64)
        spectrum = flat.sort(descending=True).values
    group = int(sv[top[0], top[1], :, 0].argmax())
    top_input = _top_input(pp, weight.shape[1], top, stride, group)
    (sh, sw) = stride
    grid_note = f"{mh}×{mw} frequencies" + (f", stride {sh}×{sw}" if (sh, sw) != (1, 1) else "")
    return ConvSpectrum(
        upper=upper,
        lower=lower,
        method=f"Fourier, polyphase ({grid_note}; exact, circular)",
        exact=True,
        wide=fg < cols,
        values=spectrum,
        grid=(mh, mw),
        block=(fg, cols),
        freq_max=freq_max.cpu(),
        freq_min=freq_min.cpu(),
        top_input=top_input,
        products=pp.products if keep_products else None,
    )


def polyphase_norm(
    weight: torch.Tensor,
    n_hw: tuple[int, int],
    stride: tuple[int, int],
    groups: int = 1,
    *,
    near: Sequence[tuple[float, float]] = (),
    products: LagProducts | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    cancel: CancelCheck = never_cancel,
) -> float:
    """Exact operator norm (largest singular value only) of the circular strided convolution.

    The blocks at the grid frequencies nearest to `near` (frequencies in cycles, e.g. where the norm is
    reached on another grid) are decomposed first: their largest λ = σ² is reached, so it is a level that
    the answer is known to attain. Every other block's Gram matrix is then only certified below that level
    by a Cholesky factorisation, and decomposed only where that fails (`gram_norms_above`): a one-pass,
    exact maximum, the same value as `polyphase_spectrum(...).upper`. Without `near` all blocks are
    decomposed. `products` (from `polyphase_spectrum(..., keep_products=True)` for the same kernel) saves
    forming the tap products again. `cancel` is polled before each chunk of frequency rows.
    """
    pp = split_phases(weight, n_hw, stride, groups, products)
    side = pp.side
    level = 0.0
    seeds = _nearest_blocks(pp, near)
    if seeds:
        rows = torch.tensor(sorted({r for r, _ in seeds}), device=pp.taps.device)
        seed_grams = grams(pp, rows)
        picked = torch.stack([seed_grams[int((rows == r).nonzero()), c] for r, c in seeds]).reshape(-1, side, side)
        level = float(torch.linalg.eigvalsh(picked)[..., -1].max())
    best = level
    for rows in row_chunks(pp, chunk_elements):
        if cancel():
            raise Cancelled("frame bounds")
        gram = grams(pp, rows).reshape(-1, side, side)
        best = max(best, float(_in_threads(functools.partial(gram_norms_above, level=level), gram).max()))
    return math.sqrt(max(best, 0.0))


def _nearest_blocks(pp: Polyphase, near: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """(row, column) on the rfft half-plane of the grid frequencies nearest to each (f_h, f_w) in cycles."""
    (mh, mw), out = pp.grid, set()
    for fh, fw in near:
        r, c = round(fh * mh) % mh, round(fw * mw) % mw
        if c > mw // 2:  # the conjugate frequency −ω has the same singular values
            r, c = (-r) % mh, mw - c
        out.add((min(r, pp.rows - 1), min(c, pp.cols - 1)))
    return sorted(out)


def _full_plane(half: torch.Tensor, mw: int) -> torch.Tensor:
    """Values on the rfft half-plane extended to all (M_h, M_w) frequencies: v(−ω) = v(ω)."""
    mh, mw2 = half.shape
    full = half.new_empty(mh, mw)
    full[:, :mw2] = half
    if mw > mw2:
        kw = torch.arange(mw2, mw, device=half.device)
        kh = (-torch.arange(mh, device=half.device)) % mh
        full[:, mw2:] = half[kh][:, mw - kw]
    return full


def _top_input(pp: Polyphase, cg: int, top: tuple[int, int], stride: tuple[int, int], g: int) -> torch.Tensor:
    """A real input image on which the circular operator reaches σ_max (its top right-singular vector)."""
    (mh, mw), (sh, sw), (ph, pw) = pp.grid, stride, pp.phases
    rc = torch.tensor([top[0], top[1]], device=pp.taps.device)
    block = blocks_at(pp, rc[:1], rc[1:])[0, g]  # (F/groups, kept)
    gram = block_gram(block)  # its top eigenvector (eigh: MKL's complex svd is erratic) gives the top right one
    top_vec = torch.linalg.eigh(gram).eigenvectors[:, -1]
    v = (block.mH.to(top_vec.dtype) @ top_vec if block.shape[0] <= block.shape[1] else top_vec).to(block.dtype)
    v = v.conj() / v.norm()  # right singular vector of conj(Ĥ): the operator's own
    u = v.new_zeros(cg, sh, sw)
    u[:, :ph, :pw] = v.reshape(cg, ph, pw)  # the phases without taps: zero
    u = u * torch.exp(-1j * torch.angle(u.reshape(-1)[u.abs().argmax()]))  # real-valued when ω is self-conjugate
    th = 2 * math.pi * top[0] / mh * torch.arange(mh, device=u.device)
    tw = 2 * math.pi * top[1] / mw * torch.arange(mw, device=u.device)
    wave = torch.polar(torch.ones(mh, mw, device=u.device, dtype=th.dtype), th[:, None] + tw[None, :])
    x = (u[:, None, :, None, :] * wave[None, :, None, :, None]).real  # (cg, mh, sh, mw, sw)
    full = x.new_zeros(pp.groups * cg, mh * sh, mw * sw)
    full[g * cg : (g + 1) * cg] = x.reshape(cg, mh * sh, mw * sw)
    return full
