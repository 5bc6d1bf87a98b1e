"""The folders' take order: fixed, seeded and class-interleaved, so the first K images cover K classes."""

from __future__ import annotations

import numpy as np

ORDER_SEED = 5318008  # the folders' take order; recorded in their identity


def interleaved_order(labels: np.ndarray, seed: int = ORDER_SEED) -> np.ndarray:
    """A fixed permutation of range(len(labels)) that deals the classes out in seeded rounds.

    Round r holds the r-th image (in a seeded shuffle) of every class that still has one, in a seeded
    order; so any K consecutive images from the start cover K classes while the classes last.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class, shuffled within each
    grouped_labels = labels[grouped]
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - np.searchsorted(grouped_labels, grouped_labels, side="left")
    tie = rng.random(n)
    return np.lexsort((tie, rank)).astype(np.int64)
