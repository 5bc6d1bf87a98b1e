"""Units vs random directions, one score at a time: a two-sample test, effect sizes and a one-sentence verdict.

Mann–Whitney U (two-sided, scipy) on the per-direction scores; Cliff's δ (= the rank-biserial correlation of U)
and the difference of means as effect sizes, with seeded bootstrap 95 % intervals that resample directions.
Effect labels follow Romano et al. (2006): |δ| < 0.147 negligible, < 0.33 small, < 0.474 medium, else large.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from engines.core.errors import InputError

NEGLIGIBLE_DELTA = 0.147  # Romano et al. (2006) thresholds for |Cliff's δ|
SMALL_DELTA, MEDIUM_DELTA = 0.33, 0.474
SCORES = {  # name -> (higher is more coherent, label)
    "purity": (True, "label purity"),
    "entropy": (False, "label entropy (bits)"),
    "cosine": (True, "mean pairwise cosine"),
}


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) − P(a < b) over all pairs; equals the rank-biserial correlation of Mann–Whitney U."""
    a, b_sorted = np.sort(a), np.sort(b)
    below = np.searchsorted(b_sorted, a, side="left")
    above = len(b_sorted) - np.searchsorted(b_sorted, a, side="right")
    return float((below.sum() - above.sum()) / (len(a) * len(b)))


def delta_size(delta: float) -> str:
    d = abs(delta)
    if d < NEGLIGIBLE_DELTA:
        return "negligible"
    return "small" if d < SMALL_DELTA else "medium" if d < MEDIUM_DELTA else "large"


@dataclass
class Comparison:
    """Units vs random directions on one score."""

    score: str
    higher_is_coherent: bool
    n_units: int
    n_random: int
    units_mean: float
    random_mean: float
    units_median: float
    random_median: float
    mean_diff: float
    mean_diff_ci: tuple[float, float]
    cliffs_delta: float
    delta_ci: tuple[float, float]
    u_statistic: float
    p_value: float
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)

    @property
    def favours(self) -> str:
        """'units', 'random' or 'neither' (not significant), read in the coherent direction of the score."""
        if not self.significant or self.cliffs_delta == 0:
            return "neither"
        units_higher = self.cliffs_delta > 0
        return "units" if units_higher == self.higher_is_coherent else "random"

    @property
    def effect(self) -> str:
        return delta_size(self.cliffs_delta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "higher_is_coherent": self.higher_is_coherent,
            "n_units": self.n_units,
            "n_random": self.n_random,
            "units_mean": self.units_mean,
            "random_mean": self.random_mean,
            "units_median": self.units_median,
            "random_median": self.random_median,
            "mean_diff": self.mean_diff,
            "mean_diff_ci95": list(self.mean_diff_ci),
            "cliffs_delta": self.cliffs_delta,
            "cliffs_delta_ci95": list(self.delta_ci),
            "effect": self.effect,
            "mann_whitney_u": self.u_statistic,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "favours": self.favours,
            "test": "Mann-Whitney U, two-sided",
        }


def compare_scores(
    units: np.ndarray,
    random: np.ndarray,
    *,
    score: str = "purity",
    higher_is_coherent: bool = True,
    seed: int = 0,
    n_boot: int = 1000,
    alpha: float = 0.05,
) -> Comparison:
    """Mann–Whitney U, Cliff's δ, difference of means, and bootstrap 95 % intervals (over directions)."""
    a = np.asarray(units, dtype=np.float64)
    b = np.asarray(random, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        raise InputError(f"need at least 2 scored units and 2 random directions to compare (got {len(a)}, {len(b)})")
    if np.ptp(np.concatenate([a, b])) == 0:
        u, p = len(a) * len(b) / 2.0, 1.0  # all scores equal: no evidence of any difference
    else:
        res = stats.mannwhitneyu(a, b, alternative="two-sided")
        u, p = float(res.statistic), float(res.pvalue)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED]))
    diffs = np.empty(n_boot)
    deltas = np.empty(n_boot)
    for i in range(n_boot):
        ra = a[rng.integers(0, len(a), len(a))]
        rb = b[rng.integers(0, len(b), len(b))]
        diffs[i] = ra.mean() - rb.mean()
        deltas[i] = cliffs_delta(ra, rb)
    return Comparison(
        score=score,
        higher_is_coherent=higher_is_coherent,
        n_units=len(a),
        n_random=len(b),
        units_mean=float(a.mean()),
        random_mean=float(b.mean()),
        units_median=float(np.median(a)),
        random_median=float(np.median(b)),
        mean_diff=float(a.mean() - b.mean()),
        mean_diff_ci=(float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))),
        cliffs_delta=cliffs_delta(a, b),
        delta_ci=(float(np.quantile(deltas, 0.025)), float(np.quantile(deltas, 0.975))),
        u_statistic=u,
        p_value=p,
        alpha=alpha,
    )


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-300 else "<1e-300"


def _claim(c: Comparison) -> str:
    if not c.significant:
        return "units are not more coherent than random directions (no significant difference)"
    if c.effect == "negligible":
        side = "more" if c.favours == "units" else "less"
        return f"units are only negligibly {side} coherent than random directions"
    if c.favours == "units":
        return "units are more coherent than random directions"
    return "units are less coherent than random directions"


def _stance(c: Comparison) -> str:
    """What a comparison says, coarsely: units, random or neither (a negligible effect counts as neither)."""
    return c.favours if c.significant and c.effect != "negligible" else "neither"


def dissent(comparisons: dict[str, Comparison], primary: str) -> str:
    """A clause for each other score whose conclusion differs from the primary score's, else ''."""
    base = _stance(comparisons[primary])
    parts = [
        f"by {SCORES.get(name, (True, name))[1]}, {_claim(c)} (Cliff's δ {c.cliffs_delta:+.2f}, {c.effect}, "
        f"p={_fmt_p(c.p_value)})"
        for name, c in comparisons.items()
        if name != primary and _stance(c) != base
    ]
    return ("Other scores disagree: " + "; ".join(parts) + ".") if parts else ""


def brief_verdict(comparisons: dict[str, Comparison], primary: str) -> str:
    """The verdict in a few words per score, for narrow places such as an 80-column screen."""

    def brief(name: str, c: Comparison) -> str:
        claim = _claim(c).removeprefix("units are ").replace(" than random directions", "")
        label = SCORES.get(name, (True, name))[1]
        return f"{claim} by {label} ({c.units_mean:.3f} vs {c.random_mean:.3f}, δ {c.cliffs_delta:+.2f}, p={_fmt_p(c.p_value)})"

    base = _stance(comparisons[primary])
    others = [brief(n, c) for n, c in comparisons.items() if n != primary and _stance(c) != base]
    return "units vs random: " + brief(primary, comparisons[primary]) + "".join(f"; but {o}" for o in others)


def verdict_sentence(layer: str, c: Comparison, k: int) -> str:
    """One sentence: are units more coherent than random directions at this layer, with the numbers."""
    label = SCORES.get(c.score, (True, c.score))[1]
    claim = _claim(c)
    return (
        f"At layer {layer}, {claim}: top-{k} {label} {c.units_mean:.3f} vs {c.random_mean:.3f} "
        f"(Δ {c.mean_diff:+.3f}, 95% CI [{c.mean_diff_ci[0]:+.3f}, {c.mean_diff_ci[1]:+.3f}]), "
        f"Cliff's δ {c.cliffs_delta:+.2f} ({c.effect}, 95% CI [{c.delta_ci[0]:+.2f}, {c.delta_ci[1]:+.2f}]), "
        f"Mann–Whitney p={_fmt_p(c.p_value)}, {c.n_units} units vs {c.n_random} random directions."
    )
