"""§3 of the paper, measured: are the top images of single units more coherent than those of random directions?

For the natural basis e_i (each unit of φ) and for random unit vectors v (Gaussian, normalised, seeded)
the top-k images are x′ = argmax ⟨φ(x), v⟩ over the image set. The paper judged by eye that both are
"semantically related"; here each direction gets scores instead:

* label purity: share of the majority label among its top-k (higher = more coherent);
* label entropy (bits) of those k labels (lower = more coherent);
* a label-free score: mean pairwise cosine similarity of its top-k images in another space
  (pixels by default, or another layer's φ) (higher = more coherent).

The scores of all units (not only the displayed ones) are compared with those of at least as many random
directions (engines/unit_stats.py: Mann–Whitney U, Cliff's δ, difference of means, bootstrap 95 % intervals).
A unit whose k-th largest activation equals its smallest one (it fires on fewer than k images, or never varies)
has no defined top-k; such "degenerate" directions are counted and left out of the statistics (the same rule
holds for random ones).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engines.units.activations import Activations, find_layer, layer_activations
from engines.core.checkpoint import LoadedModel
from engines.core.data import Dataset
from engines.core.errors import Cancelled, InputError
from engines.core.events import CancelCheck, EventSink, Step, ignore_events, never_cancel
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
        return getattr(self, name)[~self.degenerate]


@dataclass
class UnitsResult:
    """Everything `blindspot units` shows and saves; `shown_*` index rows of `units` / `random`."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    def verdicts(self) -> dict[str, str]:
        return {name: verdict_sentence(self.layer, c, self.k) for name, c in self.comparisons.items()}

    def brief(self) -> str:
        return brief_verdict(self.comparisons, self.primary)


def _scores_for(
    kind: str,
    ids: np.ndarray,
    top: torch.Tensor,
    vals: torch.Tensor,
    mins: torch.Tensor,
    labels: np.ndarray | None,
    n_classes: int,
    space: torch.Tensor,
) -> DirectionScores:
    top_np = top.numpy()
    degenerate = (vals[:, -1] <= mins).numpy()
    if labels is not None:
        purity, entropy, majority = label_scores(labels[top_np], n_classes)
    else:
        nan = np.full(len(ids), np.nan)
        purity, entropy, majority = nan, nan.copy(), np.full(len(ids), -1)
    return DirectionScores(
        kind,
        ids,
        top_np,
        vals.numpy(),
        degenerate,
        purity,
        entropy,
        majority,
        mean_pairwise_cosine(space, top_np, normalised=True),
    )


def _concat(parts: list[DirectionScores], kind: str) -> DirectionScores:
    def cat(name: str) -> Any:
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    names = ["ids", "top", "top_values", "degenerate", "purity", "entropy", "majority", "cosine"]
    return DirectionScores(kind, *[cat(n) for n in names], bottom=cat("bottom"), bottom_values=cat("bottom_values"))


def _score_block(
    kind: str,
    ids: np.ndarray,
    proj: torch.Tensor,
    k: int,
    bottom: bool,
    labels: np.ndarray | None,
    n_classes: int,
    space: torch.Tensor,
) -> DirectionScores:
    vals, top = top_k(proj, k)
    scored = _scores_for(kind, ids, top.cpu(), vals.cpu(), proj.amin(0).cpu(), labels, n_classes, space)
    if bottom:
        bvals, bidx = top_k(proj, k, largest=False)
        scored.bottom, scored.bottom_values = bidx.cpu().numpy(), bvals.cpu().numpy()
    return scored


def _pick_shown(scores: DirectionScores, count: int, rng: np.random.Generator | None) -> np.ndarray:
    ok = np.flatnonzero(~scores.degenerate)
    if rng is not None:
        ok = np.sort(rng.permutation(ok)[:count])
    return ok[:count]


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
) -> UnitsResult:
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
        parts.append(_score_block("unit", ids, cols, k, bottom, lab, n_classes, space))
        on_event(Step(task=task, done=s + len(ids), total=total, message="units"))
    units = _concat(parts, "unit")
    parts = []
    for s in range(0, n_random, BLOCK):
        if cancel():
            raise Cancelled(task)
        dirs = random_directions(dim, min(BLOCK, n_random - s), seed, start=s)
        ids = np.arange(s, s + len(dirs))
        parts.append(_score_block("random", ids, feats @ dirs.to(feats.device).T, k, bottom, lab, n_classes, space))
        on_event(Step(task=task, done=len(unit_ids) + s + len(ids), total=total, message="random directions"))
    rand = _concat(parts, "random")
    names = ["purity", "entropy", "cosine"] if lab is not None else ["cosine"]
    comparisons = {
        name: compare_scores(
            units.score(name),
            rand.score(name),
            score=name,
            higher_is_coherent=SCORES[name][0],
            seed=seed,
            n_boot=n_boot,
            alpha=alpha,
        )
        for name in names
    }
    primary = names[0]
    return UnitsResult(
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
        shown_units=_pick_shown(units, show_units, rng),
        shown_random=_pick_shown(rand, show_random, None),
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


def run_units(
    loaded: LoadedModel,
    layer: str,
    data: Dataset,
    *,
    k: int = 8,
    seed: int = 0,
    n_random: int | None = None,
    max_units: int = 5000,
    show_units: int = 16,
    show_random: int = 16,
    bottom: bool = False,
    pool: str = "none",
    space: str = "pixel",
    device: torch.device | str = "cpu",
    use_cache: bool = True,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> UnitsResult:
    """The whole §3 experiment for one layer: cached φ(x) over `data`, then `compare_units`.

    `space` is where the label-free cosine is read: "pixel" or the name of another layer of the model.
    """
    shape = tuple(int(s) for s in data.images.shape[1:])
    find_layer(loaded.model, layer, shape, device)
    if space != "pixel":
        if space == layer:
            raise InputError(f"--space {space!r} is the layer under study; pick another layer or 'pixel'")
        find_layer(loaded.model, space, shape, device)
    if k < 1 or k > len(data):
        raise InputError(f"--k must be between 1 and the {len(data)} images of {data.name}, got {k}")
    acts = layer_activations(
        loaded, layer, data, pool=pool, device=device, use_cache=use_cache, on_event=on_event, cancel=cancel
    )
    space_feats = None
    if space != "pixel":
        space_feats = layer_activations(
            loaded, space, data, device=device, use_cache=use_cache, on_event=on_event, cancel=cancel
        ).features
    res = compare_units(
        acts,
        data.labels,
        k=k,
        seed=seed,
        n_random=n_random,
        max_units=max_units,
        show_units=show_units,
        show_random=show_random,
        bottom=bottom,
        space=space_feats,
        space_name=space,
        images=data.images,
        device=device,
        on_event=on_event,
        cancel=cancel,
    )
    res.extra = {
        "model": loaded.id,
        "checkpoint": str(loaded.path),
        "checkpoint_sha256": loaded.sha256,
        "split": data.name,
        "device": str(device),
    }
    return res


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


def result_to_dict(res: UnitsResult, source_indices: np.ndarray | None = None, full: bool = True) -> dict[str, Any]:
    """JSON-ready summary; with `full`, every scored direction's top-k and scores (as for units.json)."""
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
    } | res.extra
    if full:
        doc["all"] = {
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
    return doc
