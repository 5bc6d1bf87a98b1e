"""The units run kind: a units folder in the run list (its layer), its report (units.json, shortened)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.run_index import Figures, RunKind
from engines.units.operation import JSON_FILE, KIND


def describe(_: Path, record: dict[str, Any], __: str) -> Figures:
    return Figures(f"layer {record['request']['layer']}")  # units.json holds every direction's top-k: too large to poll


UNITS = RunKind(KIND, report_files=(JSON_FILE,), describe=describe)
