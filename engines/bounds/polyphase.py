"""The polyphase route to the exact spectrum of a strided circular convolution whose stride divides the grid.

**s divides N: polyphase.** Split each kernel into its s_h·s_w phases h_p[q] = w[q·s + p]. The layer is
then a stride-1 circular convolution on the M = N/s grid with C·s² input channels, block-diagonal in
frequency: one F × C·s² block Ĥ(ω) per output frequency ω (M_h·M_w blocks, half of them by conjugate
symmetry). The paper's A(ω), rows (ŵ_{c,f}(ω + 2πl/s))_{c,l} built from unnormalised N-point FFTs at the
s² aliased frequencies, equals Ĥ(ω)·diag(phases)·(DFT_s ⊗ DFT_s); an unnormalised DFT_s has norm √s, so
A(ω)'s singular values are √(s_h·s_w) = Δ times too large in 2-D (`engines.bounds.conv.aliased_symbol_matrices` shows it).

The blocks are decomposed in chunks across worker threads, through their Gram matrices (built from the
kernel's tap products when cheaper) except where they are ill-conditioned; `polyphase_norm` finds the largest
singular value alone, near given frequencies first.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, never_cancel

CHUNK_ELEMENTS = 1 << 22  # complex entries of frequency blocks decomposed per batch
EIG_FLOOR = 1e-4  # blocks with σ_min/σ_max below this are decomposed by svdvals, not through the Gram matrix
LAG_ENTRIES = 1 << 25  # largest product table built for the Gram matrices' lag terms (256 MB in float64)
LAG_ADVANTAGE = 1.0  # lag terms are used when their flop count is below this times the blocks' Gram's
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


def fold_kernel(weight: torch.Tensor, n_hw: tuple[int, int]) -> torch.Tensor:
    """On a circular N grid taps j and j + N act alike: sum them so the kernel is at most N wide."""
    for axis, n in ((2, n_hw[0]), (3, n_hw[1])):
        k = weight.shape[axis]
        if k > n:
            w = weight.movedim(axis, -1)
            w = F.pad(w, (0, (-k) % n))
            weight = w.reshape(*w.shape[:-1], -1, n).sum(-2).movedim(-1, axis)
    return weight


def _phase_matrix(
    freqs: torch.Tensor, taps: int, m: int, device: torch.device, dtype: torch.dtype, first: int = 0
) -> torch.Tensor:
    """exp(−2πi·k·q/M) for the given frequencies k and taps q = first, first + 1, … (phases exact mod M)."""
    q = torch.arange(first, first + taps, device=device)
    phase = (freqs[:, None] * q[None, :]) % m
    angle = phase.to(dtype) * (-2 * math.pi / m)
    return torch.polar(torch.ones_like(angle), angle)


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


def block_gram(blocks: torch.Tensor) -> torch.Tensor:
    """B·Bᴴ or Bᴴ·B, whichever is smaller, in float64 / complex128 whatever the blocks' precision."""
    b = blocks.to(torch.complex128 if blocks.is_complex() else torch.float64)
    return b @ b.mH if b.shape[-2] <= b.shape[-1] else b.mH @ b


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


@dataclass
class _Polyphase:
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


def _polyphase(
    weight: torch.Tensor,
    n_hw: tuple[int, int],
    stride: tuple[int, int],
    groups: int,
    products: LagProducts | None = None,
) -> _Polyphase:
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
    pp = _Polyphase(
        taps, (mh, mw), groups, 1 if qh == 1 else mh, cols, (f // groups, cg * sh * sw), cg * ph * pw, (ph, pw)
    )
    pp.lags = _lag_terms(pp, products)
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


def _lag_terms(pp: _Polyphase, products: LagProducts | None = None) -> torch.Tensor | None:
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


def _blocks(pp: _Polyphase, rows: torch.Tensor) -> torch.Tensor:
    """The blocks Ĥ(ω) of the given frequency rows: (rows, cols, groups, F/groups, kept), one complex GEMM."""
    assert pp.spec is not None
    qh, cols, f, kept = pp.spec.shape
    e = _phase_matrix(rows, qh, pp.grid[0], pp.spec.device, pp.spec.real.dtype).to(pp.spec.dtype)
    return (e @ pp.spec.reshape(qh, -1)).reshape(len(rows), cols, pp.groups, f // pp.groups, kept)


def _blocks_at(pp: _Polyphase, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
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


def _grams(pp: _Polyphase, rows: torch.Tensor) -> torch.Tensor:
    """The blocks' smaller Gram matrices for the given rows: (rows, cols, groups, side, side), complex128."""
    if pp.lags is None:
        return block_gram(_blocks(pp, rows))
    lh = pp.lags.shape[0]
    first = -(lh // 2)
    e = _phase_matrix(rows, lh, pp.grid[0], pp.lags.device, torch.float64, first).to(pp.lags.dtype)
    return (e @ pp.lags.reshape(lh, -1)).reshape(len(rows), *pp.lags.shape[1:])


def _row_chunks(pp: _Polyphase, chunk_elements: int) -> list[torch.Tensor]:
    per_row = pp.cols * pp.groups * pp.side**2 if pp.spec is None else pp.spec[0].numel()
    step = max(1, min(pp.rows, chunk_elements // max(1, per_row)))
    return [torch.arange(s, min(pp.rows, s + step), device=pp.taps.device) for s in range(0, pp.rows, step)]


def _redo_by_svd(pp: _Polyphase, sv: torch.Tensor, which: torch.Tensor) -> None:
    """Replace the values of the blocks flagged in `which` (rows, cols, groups) by `svdvals` of the blocks."""
    at = which.any(-1).nonzero()
    for start in range(0, len(at), 256):
        r, c = at[start : start + 256].T
        blocks = _blocks_at(pp, r, c)
        sel = which[r, c]
        values = torch.linalg.svdvals(blocks[sel]).to(sv.dtype)
        target = sv[r, c]
        target[sel] = values
        sv[r, c] = target


def _refine_least(pp: _Polyphase, sv: torch.Tensor, window: float = 1e-4) -> None:
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
    the block, `_lag_terms`), split over the CPU threads: a third of an `svdvals` or less, and MKL's
    batched complex `svdvals` is erratic here (3 to 40 s for the same 28 blocks of 512×1024). Squaring the
    condition number costs accuracy only at the bottom: σ keeps a relative error ~ε·(σ_max/σ)²/2, so blocks
    with values below EIG_FLOOR·σ_max, and those holding the least value (the lower bound), are redone by
    `svdvals`. `cancel` is polled before each chunk of frequency rows.
    """
    pp = _polyphase(weight, n_hw, stride, groups)
    (mh, mw), (fg, cols) = pp.grid, pp.block
    mw2 = mw // 2 + 1
    rank, rank_kept = min(fg, cols), pp.side
    side = pp.side
    sv_rows = []
    for rows in _row_chunks(pp, chunk_elements):
        if cancel():  # between chunks: one layer of a large network takes seconds on a CPU
            raise Cancelled("frame bounds")
        gram = _grams(pp, rows)
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
    pp = _polyphase(weight, n_hw, stride, groups, products)
    side = pp.side
    level = 0.0
    seeds = _nearest_blocks(pp, near)
    if seeds:
        rows = torch.tensor(sorted({r for r, _ in seeds}), device=pp.taps.device)
        grams = _grams(pp, rows)
        picked = torch.stack([grams[int((rows == r).nonzero()), c] for r, c in seeds]).reshape(-1, side, side)
        level = float(torch.linalg.eigvalsh(picked)[..., -1].max())
    best = level
    for rows in _row_chunks(pp, chunk_elements):
        if cancel():
            raise Cancelled("frame bounds")
        gram = _grams(pp, rows).reshape(-1, side, side)
        best = max(best, float(_in_threads(functools.partial(gram_norms_above, level=level), gram).max()))
    return math.sqrt(max(best, 0.0))


def _nearest_blocks(pp: _Polyphase, near: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
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


def _top_input(pp: _Polyphase, cg: int, top: tuple[int, int], stride: tuple[int, int], g: int) -> torch.Tensor:
    """A real input image on which the circular operator reaches σ_max (its top right-singular vector)."""
    (mh, mw), (sh, sw), (ph, pw) = pp.grid, stride, pp.phases
    rc = torch.tensor([top[0], top[1]], device=pp.taps.device)
    block = _blocks_at(pp, rc[:1], rc[1:])[0, g]  # (F/groups, kept)
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
