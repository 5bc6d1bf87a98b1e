"""§3 of the paper, measured: are the top images of single units more coherent than those of random directions?

For the natural basis e_i (each unit of φ) and for random unit vectors v (Gaussian, normalised, seeded)
the top-k images are x′ = argmax ⟨φ(x), v⟩ over the image set. The paper judged by eye that both are
"semantically related"; here each direction gets scores instead (engines/units/scores.py):

* label purity: share of the majority label among its top-k (higher = more coherent);
* label entropy (bits) of those k labels (lower = more coherent);
* a label-free score: mean pairwise cosine similarity of its top-k images in another space
  (pixels by default, or another layer's φ) (higher = more coherent).

The scores of all units (not only the displayed ones) are compared with those of at least as many random
directions (engines/units/stats.py: Mann–Whitney U, Cliff's δ, difference of means, bootstrap 95 % intervals).
A unit whose k-th largest activation equals its smallest one (it fires on fewer than k images, or never varies)
has no defined top-k; such "degenerate" directions are counted and left out of the statistics (the same rule
holds for random ones). The whole operation (model, data, cache, run folder) is engines/units/operation.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engines.core.errors import Cancelled, InputError
from engines.core.events import CancelCheck, EventSink, Step, ignore_events, never_cancel
from engines.units.activations import Activations
from engines.units.scores import (
    DirectionScores,
    concat_scores,
    normalise_rows,
    pick_shown,
    score_block,
)
from engines.units.stats import SCORES, Comparison, brief_verdict, compare_scores, dissent, verdict_sentence

BLOCK = 256  # random directions are generated in fixed blocks, so direction i depends only on (seed, i)


def random_directions(dim: int, count: int, seed: int, start: int = 0) -> torch.Tensor:
    """Directions start..start+count-1 of the seeded stream: Gaussian rows scaled to unit norm, (count, dim)."""
    if dim <= 0 or count < 0 or start < 0:
        raise InputError(f"random directions need dim > 0 and count >= 0 (got dim={dim}, count={count})")
    if count == 0:
        return torch.zeros(0, dim)
    rows = []
    for block in range(start // BLOCK, (start + count - 1) // BLOCK + 1):
        state = int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, block]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(state)
        v = torch.randn(BLOCK, dim, generator=gen, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True)
        lo = max(start - block * BLOCK, 0)
        hi = min(start + count - block * BLOCK, BLOCK)
        rows.append(v[lo:hi].float())
    return torch.cat(rows) if rows else torch.zeros(0, dim)


@dataclass
class UnitsComparison:
    """Units vs random directions at one layer, computed: `shown_*` index rows of `units` / `random`."""

    layer: str
    layer_kind: str
    layer_shape: tuple[int, ...]
    pool: str
    dim: int
    k: int
    seed: int
    n_images: int
    space: str
    units: DirectionScores
    random: DirectionScores
    shown_units: np.ndarray
    shown_random: np.ndarray
    comparisons: dict[str, Comparison]
    primary: str
    verdict: str
    units_total: int
    units_sampled: bool
    activations_cached: bool
    seconds: float = 0.0

    def verdicts(self) -> dict[str, str]:
        return {name: verdict_sentence(self.layer, c, self.k) for name, c in self.comparisons.items()}

    def brief(self) -> str:
        return brief_verdict(self.comparisons, self.primary)

    def to_json(self, source_indices: np.ndarray | None = None, full: bool = True) -> dict[str, Any]:
        """The measured part of units.json (`full`: every direction's top-k and scores, not only the shown)."""
        return comparison_json(self, source_indices, full)


def compare_units(
    acts: Activations,
    labels: torch.Tensor | np.ndarray | None,
    *,
    k: int = 8,
    seed: int = 0,
    n_random: int | None = None,
    max_units: int = 5000,
    show_units: int = 16,
    show_random: int = 16,
    bottom: bool = False,
    space: torch.Tensor | None = None,
    space_name: str = "pixel",
    images: torch.Tensor | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    device: torch.device | str = "cpu",
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> UnitsComparison:
    """Score every unit of φ (up to `max_units`, a seeded sample beyond) and `n_random` random directions.

    `n_random` defaults to max(units scored, 1000) and may not be smaller than the number of units scored.
    The label-free score is read in `space` (N, F) if given, else in pixel space (`images`). Projections run
    on `device`; everything returned lives on the CPU.
    """
    start_time = time.perf_counter()
    feats = acts.features.float().to(device)
    n, dim = feats.shape
    if k < 1 or k > n:
        raise InputError(f"--k must be between 1 and the number of images ({n}), got {k}")
    if max_units < 2:
        raise InputError(f"--max-units must be at least 2, got {max_units}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xE1]))
    sampled = dim > max_units
    unit_ids = np.sort(rng.choice(dim, max_units, replace=False)) if sampled else np.arange(dim)
    n_random = max(len(unit_ids), 1000) if n_random is None else int(n_random)
    if n_random < len(unit_ids):
        raise InputError(f"need at least as many random directions as units scored ({len(unit_ids)}), got {n_random}")
    if space is None:
        if images is None:
            raise InputError("a label-free score needs either a feature space or the images")
        space, space_name = images, "pixel"
    if space.shape[0] != n:
        raise InputError(f"the coherence space holds {space.shape[0]} rows for {n} images")
    space = normalise_rows(space)
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    n_classes = int(lab.max()) + 1 if lab is not None and len(lab) else 0
    total = len(unit_ids) + n_random
    task = f"directions {acts.layer.name}"
    parts: list[DirectionScores] = []
    for s in range(0, len(unit_ids), BLOCK):
        if cancel():
            raise Cancelled(task)
        ids = unit_ids[s : s + BLOCK]
        cols = feats[:, torch.as_tensor(ids, device=feats.device)]
        parts.append(score_block("unit", ids, cols, k, bottom, lab, n_classes, space))
        on_event(Step(task=task, done=s + len(ids), total=total, message="units"))
    units = concat_scores(parts, "unit")
    parts = []
    for s in range(0, n_random, BLOCK):
        if cancel():
            raise Cancelled(task)
        dirs = random_directions(dim, min(BLOCK, n_random - s), seed, start=s)
        ids = np.arange(s, s + len(dirs))
        parts.append(score_block("random", ids, feats @ dirs.to(feats.device).T, k, bottom, lab, n_classes, space))
        on_event(Step(task=task, done=len(unit_ids) + s + len(ids), total=total, message="random directions"))
    rand = concat_scores(parts, "random")
    names = ["purity", "entropy", "cosine"] if lab is not None else ["cosine"]
    comparisons: dict[str, Comparison] = {}
    for name in names:  # each bootstraps n_boot resamples: a cancel must not wait for all three
        if cancel():
            raise Cancelled(task)
        comparisons[name] = compare_scores(
            units.score(name),
            rand.score(name),
            score=name,
            higher_is_coherent=SCORES[name][0],
            seed=seed,
            n_boot=n_boot,
            alpha=alpha,
        )
    primary = names[0]
    return UnitsComparison(
        layer=acts.layer.name,
        layer_kind=acts.layer.kind,
        layer_shape=acts.layer.shape,
        pool=acts.pool,
        dim=dim,
        k=k,
        seed=seed,
        n_images=n,
        space=space_name,
        units=units,
        random=rand,
        shown_units=pick_shown(units, show_units, rng),
        shown_random=pick_shown(rand, show_random, None),
        comparisons=comparisons,
        primary=primary,
        verdict=" ".join(
            part
            for part in (verdict_sentence(acts.layer.name, comparisons[primary], k), dissent(comparisons, primary))
            if part
        ),
        units_total=dim,
        units_sampled=sampled,
        activations_cached=acts.cached,
        seconds=time.perf_counter() - start_time,
    )


def _rows(d: DirectionScores, rows: np.ndarray, positions: np.ndarray | None) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        row = {
            "kind": d.kind,
            "id": int(d.ids[r]),
            "top": d.top[r].tolist(),
            "top_values": d.top_values[r].tolist(),
            "purity": _num(d.purity[r]),
            "entropy": _num(d.entropy[r]),
            "majority": int(d.majority[r]),
            "cosine": _num(d.cosine[r]),
            "degenerate": bool(d.degenerate[r]),
        }
        if positions is not None:
            row["top_source_indices"] = positions[d.top[r]].tolist()
        if d.bottom is not None:
            row["bottom"] = d.bottom[r].tolist()
            row["bottom_values"] = d.bottom_values[r].tolist() if d.bottom_values is not None else None
        out.append(row)
    return out


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(float(v)) else None


def comparison_json(
    res: UnitsComparison, source_indices: np.ndarray | None = None, full: bool = True
) -> dict[str, Any]:
    """JSON-ready summary; with `full`, every scored direction's top-k and scores (as units.json holds)."""
    doc: dict[str, Any] = {
        "layer": res.layer,
        "layer_kind": res.layer_kind,
        "layer_shape": list(res.layer_shape),
        "pool": res.pool,
        "phi": "flattened layer output" if res.pool == "none" else f"{res.pool} over spatial positions per channel",
        "dim": res.dim,
        "k": res.k,
        "seed": res.seed,
        "n_images": res.n_images,
        "coherence_space": res.space,
        "units_total": res.units_total,
        "units_scored": len(res.units),
        "units_sampled": res.units_sampled,
        "units_degenerate": int(res.units.degenerate.sum()),
        "random_scored": len(res.random),
        "random_degenerate": int(res.random.degenerate.sum()),
        "random_directions": {
            "distribution": "Gaussian, normalised to unit length",
            "seed": res.seed,
            "block": BLOCK,
            "reproduce": "engines.units.directions.random_directions(dim, count, seed)",
        },
        "degenerate_rule": "k-th largest value equals the smallest over the image set; excluded from the statistics",
        "primary_score": res.primary,
        "verdict": res.verdict,
        "verdicts": res.verdicts(),
        "comparisons": {name: c.to_dict() for name, c in res.comparisons.items()},
        "activations_cached": res.activations_cached,
        "seconds": round(res.seconds, 3),
        "shown": {
            "units": _rows(res.units, res.shown_units, source_indices),
            "random": _rows(res.random, res.shown_random, source_indices),
        },
    }
    if full:
        doc["all"] = all_directions_json(res)
    return doc


def all_directions_json(res: UnitsComparison) -> dict[str, Any]:
    """Every scored direction's top-k and scores, units and random (the "all" part of units.json)."""
    return {
        kind: {
            "ids": d.ids.tolist(),
            "top": d.top.tolist(),
            "purity": [_num(v) for v in d.purity],
            "entropy": [_num(v) for v in d.entropy],
            "cosine": [_num(v) for v in d.cosine],
            "degenerate": d.degenerate.tolist(),
        }
        for kind, d in (("units", res.units), ("random", res.random))
    }
