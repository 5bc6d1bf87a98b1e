"""What a certify run found: per-image brackets (certify.json) and the summary `--json` prints.

Distortions are the paper's units, rms over pixels: ‖r‖₂ / √n (n = C·H·W values in [0, 1]).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.core.errors import InputError
from engines.core.io import read_json, write_json_atomic

CERTIFY_FILE = "certify.json"
UNITS = "rms over pixels: sqrt(sum(r^2)/n), n = C*H*W pixel values in [0, 1]"
TOLERANCE = 1e-6  # relative: a certified radius above the attack's distance by more than this is a violation


@dataclass(frozen=True)
class CertifyResult:
    """The summary: both ends of the bracket over the images that have both."""

    model: str
    n: int
    method: str
    target: str
    certified: int  # images with a positive lower bound
    with_both: int  # images with a positive lower bound and an attack success
    median_ratio: float | None  # upper / lower over those images
    mean_ratio: float | None
    violations: int  # images where the attack found an example inside the certified radius (must be 0)
    mean_lower: float | None  # means over the images with both ends
    mean_upper: float | None
    median_lipschitz_ratio: float | None  # upper / global-Lipschitz lower bound, for comparison
    exact: bool
    attack_over_exact_mean: float | None
    attack_over_exact_max: float | None
    exact_gap_max: float | None  # worst relative duality gap of the exact solver
    seconds: float  # certification alone
    attack_seconds: float | None
    attack_run: str
    run: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "units": UNITS}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CertifyResult:
        doc: dict[str, Any] = {k: d.get(k) for k in cls.__dataclass_fields__}
        return cls(**doc)


def _has_both(row: dict[str, Any], key: str = "lower") -> bool:
    return row.get("upper") is not None and row.get(key) is not None and row[key] > 0 and row["upper"] > 0


def _ratios(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r["upper"] / r[key] for r in rows if _has_both(r, key)]


def summarize(
    rows: list[dict[str, Any]],
    *,
    model: str,
    method: str,
    target: str,
    seconds: float,
    attack_seconds: float | None,
    attack_run: str,
    run: str,
) -> CertifyResult:
    """The summary of per-image rows (each: lower, upper, exact, lipschitz in rms; None where unknown)."""
    ratios = _ratios(rows, "lower")
    lip = _ratios(rows, "lipschitz")
    exact = [r for r in rows if r.get("exact") is not None]
    over = [r["upper"] / r["exact"] for r in exact if r.get("upper") is not None and r["exact"] > 0]
    gaps = [r["exact_gap"] for r in exact if r.get("exact_gap") is not None]
    both = [r for r in rows if _has_both(r)]
    lows, ups = [r["lower"] for r in both], [r["upper"] for r in both]
    return CertifyResult(
        model=model,
        n=len(rows),
        method=method,
        target=target,
        certified=sum(1 for r in rows if (r.get("lower") or 0) > 0),
        with_both=len(ratios),
        median_ratio=statistics.median(ratios) if ratios else None,
        mean_ratio=statistics.fmean(ratios) if ratios else None,
        violations=sum(1 for r in rows if is_violation(r)),
        mean_lower=statistics.fmean(lows) if lows else None,
        mean_upper=statistics.fmean(ups) if ups else None,
        median_lipschitz_ratio=statistics.median(lip) if lip else None,
        exact=bool(exact) and len(exact) == len(rows),
        attack_over_exact_mean=statistics.fmean(over) if over else None,
        attack_over_exact_max=max(over) if over else None,
        exact_gap_max=max(gaps) if gaps else None,
        seconds=round(seconds, 3),
        attack_seconds=None if attack_seconds is None else round(attack_seconds, 3),
        attack_run=attack_run,
        run=run,
    )


def is_violation(row: dict[str, Any]) -> bool:
    """The attack reached a distance below the certified lower bound (or below the exact minimum)."""
    up = row.get("upper")
    if up is None:
        return False
    bound = max((row.get(k) or 0.0) for k in ("lower", "exact", "lipschitz"))
    return bound > up * (1 + TOLERANCE) + 1e-12


def write_certify(folder: Path, request: dict[str, Any], rows: list[dict[str, Any]], status: str) -> Path:
    """certify.json, atomically: the request, the status (running, done) and one record per finished image."""
    return write_json_atomic(
        folder / CERTIFY_FILE, {"request": request, "status": status, "units": UNITS, "images": rows}
    )


def read_certify(folder: str | Path) -> dict[str, Any]:
    """A run's certify.json, or an InputError saying why it cannot be read."""
    path = Path(folder) / CERTIFY_FILE
    try:
        doc = read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is missing or damaged ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InputError(f"{path} is damaged (no image records)")
    return doc


def rms(l2: float, pixels: int) -> float:
    return l2 / math.sqrt(pixels)
