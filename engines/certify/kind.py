"""The certify run kind: images certified so far and their mean lower bound (certify.json is rewritten after
every chunk of images, so a running or cancelled run says how far it got)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.attack.results import SUMMARY_FILE
from engines.certify.results import CERTIFY_FILE, is_violation
from engines.core.io import read_json
from engines.core.run_index import Figures, RunKind, is_number


def describe(folder: Path, _: dict[str, Any], __: str) -> Figures:
    rows = read_json(folder / CERTIFY_FILE)["images"]
    lower = [float(r["lower"]) for r in rows if is_number(r.get("lower")) and r["lower"] > 0]
    parts = [f"{len(rows)} images", f"{len(lower)} certified"]
    if lower:
        parts.append(f"lower {sum(lower) / len(lower):.4f}")
    violations = sum(1 for r in rows if is_violation(r))
    if violations:
        parts.append(f"{violations} violations")
    return Figures(" · ".join(parts))


CERTIFY = RunKind("certify", report_files=(SUMMARY_FILE, CERTIFY_FILE), describe=describe)
