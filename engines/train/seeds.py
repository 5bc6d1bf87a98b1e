"""Seeds: one recipe trained once per seed (mean ± sd of its errors), and two recipes compared seed by seed.

The sd is the sample standard deviation (n − 1); a comparison is the paired difference (B − A) over the seeds both
recipes were trained with, and reads "no difference" when its mean is within 2 sd of the differences of 0.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.core.errors import InputError
from engines.core.zoo import zoo_entry
from engines.train.fit import FittedModel, evaluate_fitted, save_fitted, train_zoo_model
from engines.train.hyper import grid_points, grid_record, with_hyper
from engines.train.protocol import protocol_for

_SEEDS = re.compile(r"\d+(,\d+)*")


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds 0,1,2`: distinct whole numbers separated by commas."""
    cleaned = text.replace(" ", "")
    if not _SEEDS.fullmatch(cleaned):
        raise InputError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2 (got {text!r})")
    return check_seeds(tuple(int(s) for s in cleaned.split(",")))


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """A study's seeds: at least one, none negative, none twice."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise InputError("--seeds names no seed")
    if min(seeds) < 0:
        raise InputError(f"--seeds must be 0 or more (got {min(seeds)})")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds names a seed twice ({','.join(map(str, seeds))}): each seed trains one model")
    return seeds


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample sd (None for fewer than two values)."""
    if not values:
        raise InputError("no values to average")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def seed_study(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The study's figures from each seed's {seed, test_error, validation_error (None without a split)}:
    what the first seed's sidecar and the train result carry."""
    tests = [float(r["test_error"]) for r in runs]
    test_mean, test_sd = mean_sd(tests)
    study: dict[str, Any] = {
        "seeds": [int(r["seed"]) for r in runs],
        "test_error_mean": _rounded(test_mean),
        "test_error_sd": _rounded(test_sd),
        "per_seed": [dict(r) for r in runs],
    }
    vals = [r.get("validation_error") for r in runs]
    if all(v is not None for v in vals):
        val_mean, val_sd = mean_sd([float(v) for v in vals if v is not None])
        study |= {"validation_error_mean": _rounded(val_mean), "validation_error_sd": _rounded(val_sd)}
    return study


def compare_paired(a: Mapping[int, float], b: Mapping[int, float], *, names: tuple[str, str] = ("A", "B")) -> dict:
    """Recipe B against recipe A, error by seed: the mean paired difference B − A, its sd, and the verdict."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise InputError(f"a paired comparison needs two or more seeds trained with both recipes (got {len(common)})")
    diffs = [float(b[s]) - float(a[s]) for s in common]
    mean, sd = mean_sd(diffs)
    assert sd is not None  # two or more seeds
    lower = names[1] if mean < 0 else names[0]
    verdict = "no difference" if abs(mean) <= 2 * sd else f"{lower} lower"
    return {
        "seeds": common,
        "differences": [round(d, 4) for d in diffs],
        "mean_difference": round(mean, 4),
        "sd": round(sd, 4),
        "verdict": verdict,
    }


def train_seeds(
    model_id: str,
    out_dir: str | Path | None,
    *,
    seeds: Sequence[int],
    axes: Mapping[str, Sequence[Any]] | None = None,
    **options: Any,
) -> FittedModel:
    """One model of `model_id` per seed, trained alike (`options`: those of `train_zoo_model`). With a grid (`axes`,
    `engines.train.hyper`) every point is first trained with the first seed and the lowest validation error chooses
    the point; the other seeds are trained with it. The first seed's model is the one saved; its sidecar carries the
    study (seeds, test_error_mean, test_error_sd, per-seed errors; the grid) beside its own validation_error.
    Nothing is saved until every seed is trained: a cancel leaves no half study (with `options["resume"]`, the
    trainings finished and the epoch of the one running are kept for `--resume`: `engines.train.resume`)."""
    seeds = check_seeds(seeds)
    first, grid = _first_seed(model_id, seeds[0], dict(axes or {}), options)
    hyper = first.meta.get("hyper")
    runs: list[dict[str, Any]] = [_seed_run(first)]
    for seed in seeds[1:]:
        runs.append(_seed_run(train_zoo_model(model_id, None, seed=seed, hyper=hyper, **options)))
    first.meta |= seed_study(runs)
    if grid is not None:
        first.meta["grid"] = grid
    path = save_fitted(first.model, first.meta, out_dir) if out_dir else None
    if path is not None and options.get("resume") is not None:
        options["resume"].clear()  # the study is saved: its finished trainings are no longer needed
    return FittedModel(first.model, first.meta, path)


def _seed_run(fitted: FittedModel) -> dict[str, Any]:
    return {
        "seed": fitted.meta["seed"],
        "test_error": fitted.meta["metrics"]["test_error"],
        "validation_error": fitted.meta.get("validation_error"),
        "seconds": fitted.meta["training"]["seconds"],
    }


def _first_seed(
    model_id: str, seed: int, axes: dict[str, Sequence[Any]], options: dict[str, Any]
) -> tuple[FittedModel, dict[str, Any] | None]:
    """The first seed's model (with a grid: the point of lowest validation error, then evaluated) and the grid's
    record (None without a grid). Only the best point's model is kept in memory."""
    points = grid_points({k: tuple(v) for k, v in axes.items()})
    if len(points) == 1:
        return train_zoo_model(model_id, None, seed=seed, hyper=points[0] or None, **options), None
    for point in points:  # before any training: a grid chooses on the validation split
        entry = with_hyper(zoo_entry(model_id), point, adversarial=options.get("adversarial") is not None)
        if protocol_for(entry.recipe, options.get("protocol")).validation == 0:
            raise InputError("a grid is chosen on the validation split: give --validation N (N > 0)")
    best: FittedModel | None = None
    trials: list[dict[str, Any]] = []
    for point in points:
        fitted = train_zoo_model(model_id, None, seed=seed, hyper=point, evaluate=False, **options)
        error = fitted.meta.get("validation_error")
        if error is None:
            raise InputError("a grid is chosen on the validation split: give --validation N (N > 0)")
        trials.append({"hyper": point, "validation_error": error, "seconds": fitted.meta["training"]["seconds"]})
        if best is None or error < best.meta["validation_error"]:
            best = fitted
    assert best is not None
    chosen = next(k for k, t in enumerate(trials) if t["hyper"] == best.meta["hyper"])
    evaluate_fitted(best, options.get("data_dir"), options.get("device", "cpu"))
    return best, grid_record({k: tuple(v) for k, v in axes.items()}, trials, chosen)
