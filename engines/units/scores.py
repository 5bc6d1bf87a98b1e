"""Scores of one direction's top-k images: label purity, label entropy and a label-free pairwise cosine.

A block of directions is projected once, its top-k (and optionally bottom-k) read off per column, and
each row scored. `engines.units.directions` drives the blocks; nothing here knows about units vs random.
A direction whose k-th largest value equals its smallest over the image set is "degenerate": its top-k
is not defined by the values and it is left out of the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engines.core.errors import InputError


def top_k(scores: torch.Tensor, k: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of `scores` (N, n), the k best rows: values and indices (n, k), best first."""
    if k < 1 or k > scores.shape[0]:
        raise InputError(f"k must be between 1 and the number of images ({scores.shape[0]}), got {k}")
    values, indices = scores.topk(k, dim=0, largest=largest, sorted=True)
    return values.T.contiguous(), indices.T.contiguous()


def label_scores(top_labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Purity (majority share), entropy in bits and majority label of each row of (n, k) labels."""
    top_labels = np.asarray(top_labels, dtype=np.int64)
    n, k = top_labels.shape
    counts = np.zeros((n, n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k), top_labels.ravel()), 1)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(1)
    return counts.max(1) / k, entropy + 0.0, counts.argmax(1)


def normalise_rows(space: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, F) float32 rows of unit length (all-zero rows stay zero)."""
    flat = space.flatten(1).float()
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mean_pairwise_cosine(
    space: torch.Tensor, top: np.ndarray, chunk: int = 512, normalised: bool = False
) -> np.ndarray:
    """Mean cosine similarity over the k(k-1)/2 pairs of each row's images, read in `space` (N, F)."""
    unit = space if normalised else normalise_rows(space)
    top_t = torch.as_tensor(np.asarray(top), dtype=torch.long)
    k = top_t.shape[1]
    if k < 2:
        return np.full(top_t.shape[0], np.nan)
    out = []
    for s in range(0, top_t.shape[0], chunk):
        g = unit[top_t[s : s + chunk]]
        gram = g @ g.transpose(1, 2)
        off = gram.double().sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).double().sum(1)
        out.append(off / (k * (k - 1)))
    return torch.cat(out).numpy()


@dataclass
class DirectionScores:
    """Top-k images and scores of a set of directions. Rows line up across all arrays."""

    kind: str  # "unit" (natural basis e_i) or "random"
    ids: np.ndarray  # unit index in φ, or number of the random direction in the seeded stream
    top: np.ndarray  # (n, k) positions in the image set, strongest first
    top_values: np.ndarray  # (n, k) ⟨φ(x), v⟩
    degenerate: np.ndarray  # (n,) bool: top-k not defined by the values (ties with the minimum)
    purity: np.ndarray
    entropy: np.ndarray
    majority: np.ndarray
    cosine: np.ndarray
    bottom: np.ndarray | None = None
    bottom_values: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.ids))

    def score(self, name: str) -> np.ndarray:
        """One score over the non-degenerate directions (what the statistics compare)."""
        return getattr(self, name)[~self.degenerate]


def score_block(
    kind: str,
    ids: np.ndarray,
    proj: torch.Tensor,
    k: int,
    bottom: bool,
    labels: np.ndarray | None,
    n_classes: int,
    space: torch.Tensor,
) -> DirectionScores:
    """Top-k (and bottom-k) of each column of the projections `proj` (N, n), scored; `space` has unit rows."""
    vals_t, top_t = top_k(proj, k)
    vals, top, mins = vals_t.cpu(), top_t.cpu().numpy(), proj.amin(0).cpu()
    if labels is not None:
        purity, entropy, majority = label_scores(labels[top], n_classes)
    else:
        nan = np.full(len(ids), np.nan)
        purity, entropy, majority = nan, nan.copy(), np.full(len(ids), -1)
    scored = DirectionScores(
        kind,
        ids,
        top,
        vals.numpy(),
        (vals[:, -1] <= mins).numpy(),
        purity,
        entropy,
        majority,
        mean_pairwise_cosine(space, top, normalised=True),
    )
    if bottom:
        bvals, bidx = top_k(proj, k, largest=False)
        scored.bottom, scored.bottom_values = bidx.cpu().numpy(), bvals.cpu().numpy()
    return scored


def concat_scores(parts: list[DirectionScores], kind: str) -> DirectionScores:
    """The blocks of one kind as one set of rows."""

    def cat(name: str) -> Any:
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return DirectionScores(
        kind,
        ids=cat("ids"),
        top=cat("top"),
        top_values=cat("top_values"),
        degenerate=cat("degenerate"),
        purity=cat("purity"),
        entropy=cat("entropy"),
        majority=cat("majority"),
        cosine=cat("cosine"),
        bottom=cat("bottom"),
        bottom_values=cat("bottom_values"),
    )


def pick_shown(scores: DirectionScores, count: int, rng: np.random.Generator | None) -> np.ndarray:
    """Rows to draw: the first `count` non-degenerate ones, or a seeded sample of them when `rng` is given."""
    ok = np.flatnonzero(~scores.degenerate)
    if rng is not None:
        ok = np.sort(rng.permutation(ok)[:count])
    return ok[:count]
