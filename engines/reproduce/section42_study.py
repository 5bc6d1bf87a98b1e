"""The §4.2 seed study as shipped: every arm trained under the protocol over seeds (benchmarks/study_section42.py
writes it; its `ship` stage copies it beside the models folder as studies/section42.json). Read as JSON and checked
field by field (a damaged file is one line, never a traceback), and what reproduce reads from it: each arm's figures,
the paired comparisons, whether the paper's figure was reached and which step of the fix chain moved test error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from engines.core.checkpoint import models_dir
from engines.core.errors import InputError
from engines.core.io import read_json
from engines.train.seeds import compare_paired

STUDY_NAME = "section42.json"
NO_DIFFERENCE = "no difference"  # compare_paired's verdict when the mean difference lies within 2 sd

_NUMBER = (int, float)
_ARM_FIELDS: dict[str, tuple[type, ...]] = {
    "arm": (str,),
    "model": (str,),
    "seeds": (list,),
    "per_seed": (list,),
    "test_error_mean": _NUMBER,
    "test_error_sd": (*_NUMBER, type(None)),
    "validation_error_mean": (*_NUMBER, type(None)),
    "validation_error_sd": (*_NUMBER, type(None)),
    "train_seconds": _NUMBER,
}
_COMPARISON_FIELDS: dict[str, tuple[type, ...]] = {
    "a": (str,),
    "b": (str,),
    "seeds": (list,),
    "mean_difference": _NUMBER,
    "sd": _NUMBER,
    "verdict": (str,),
}
_ARM_OPTIONAL: dict[str, tuple[type, ...]] = {
    "options": (list,),
    "hyper": (dict,),
    "chosen_epoch": (int,),
}
_ROBUSTNESS_FIELDS: dict[str, tuple[type, ...]] = {
    "images": (int,),
    "distortion": _NUMBER,
    "certified": _NUMBER,
    "certified_method": (str,),
    "violations": (int,),
    "transfer": _NUMBER,
    "noise": _NUMBER,
}
_GRID_FIELDS: dict[str, tuple[type, ...]] = {"axes": (dict,), "points": (list,)}
_STUDY_FIELDS: dict[str, tuple[type, ...]] = {
    "arms": (list,),
    "comparisons": (list,),
    "baseline": (str,),
    "chain": (list,),
}


def study_file() -> Path:
    """Where the shipped study lies: studies/ beside the models folder (sample_data/studies/section42.json)."""
    return models_dir().parent / "studies" / STUDY_NAME


def read_study(path: str | Path | None = None) -> dict[str, Any] | None:
    """The study at `path` (default: `study_file()`), checked; None when there is none. JSON only, never a pickle."""
    path = study_file() if path is None else Path(path)
    if not path.is_file():
        return None
    try:
        study = read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"the §4.2 seed study {path} is unreadable ({type(exc).__name__}: {exc})") from None
    check_study(study, path)
    return study


def check_study(study: Any, path: str | Path) -> None:
    """Every field reproduce reads, with its type; an InputError naming the first bad one."""

    def bad(where: str) -> InputError:
        return InputError(f"the §4.2 seed study {path} is damaged: {where}")

    _fields(study, _STUDY_FIELDS, "the file", bad)
    _optional(study, {"robustness_n": (int,), "what": (str,), "reference": (str,)}, "the file", bad)
    for k, arm in enumerate(study["arms"]):
        _fields(arm, _ARM_FIELDS, f"arm {k + 1}", bad)
        for run in arm["per_seed"]:
            if not isinstance(run, dict) or not _finite(run.get("test_error")) or not isinstance(run.get("seed"), int):
                raise bad(f"arm {arm['arm']!r} has a per-seed record without seed and test_error")
        _optional(arm, _ARM_OPTIONAL, f"arm {arm['arm']!r}", bad)
        if arm.get("robustness") is not None:
            _optional(arm["robustness"], _ROBUSTNESS_FIELDS, f"arm {arm['arm']!r}'s robustness", bad)
        grid = arm.get("grid")
        if grid is not None:
            _optional(grid, _GRID_FIELDS, f"arm {arm['arm']!r}'s grid", bad)
            if not all(isinstance(p, dict) and _finite(p.get("validation_error")) for p in grid.get("points", [])):
                raise bad(f"arm {arm['arm']!r}'s grid has a point without a validation_error")
    for k, comparison in enumerate(study["comparisons"]):
        _fields(comparison, _COMPARISON_FIELDS, f"comparison {k + 1}", bad)


def _fields(record: Any, fields: dict[str, tuple[type, ...]], where: str, bad: Any) -> None:
    if not isinstance(record, dict):
        raise bad(f"{where} is not a record")
    for key, types in fields.items():
        value = record.get(key)
        if not isinstance(value, types) or isinstance(value, bool) or (isinstance(value, float) and not _finite(value)):
            raise bad(f"{where} has no valid {key!r}")


def _optional(record: Any, fields: dict[str, tuple[type, ...]], where: str, bad: Any) -> None:
    """Fields that may be absent or None, but are of their type when given."""
    if not isinstance(record, dict):
        raise bad(f"{where} is not a record")
    for key, types in fields.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise bad(f"{where} has an invalid {key!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def arms(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's arms by name."""
    return {a["arm"]: a for a in study["arms"]}


def paired(study: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """Arm b against arm a, seed by seed, computed as the study computes its own (None: an arm missing, or fewer
    than two common seeds)."""
    found = arms(study)
    if a not in found or b not in found:
        return None
    errors = [{int(r["seed"]): float(r["test_error"]) for r in found[k]["per_seed"]} for k in (a, b)]
    try:
        return {"a": a, "b": b} | compare_paired(errors[0], errors[1], names=(a, b))
    except InputError:
        return None


def chain_steps(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The fix chain in order: each step's arm (None when not trained) and its comparison to the step before."""
    found = arms(study)
    chain = [str(s) for s in study["chain"]]
    return [
        {
            "step": step,
            "arm": found.get(step),
            "against": chain[k - 1] if k else None,
            "comparison": paired(study, chain[k - 1], step) if k else None,
        }
        for k, step in enumerate(chain)
    ]


def moved(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain's comparisons whose verdict is a difference (mean beyond 2 sd of the paired differences)."""
    return [
        s["comparison"] for s in steps if s["comparison"] is not None and s["comparison"]["verdict"] != NO_DIFFERENCE
    ]
