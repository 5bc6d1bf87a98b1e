"""The transfer run kind: a matrix folder in the run list (its size, the mean off-diagonal transfer rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.io import read_json
from engines.core.run_index import Figures, RunKind, is_number, model_list
from engines.transfer.store import MATRIX_FILE


def describe(folder: Path, _: dict[str, Any], __: str) -> Figures:
    """Rows × columns, and the mean over adversarial rows of their values on models other than their source."""
    matrix = read_json(folder / MATRIX_FILE)
    rows, columns, values = matrix["rows"], matrix["columns"], matrix["values"]
    off = [
        float(v)
        for row, line in zip(rows, values, strict=True)
        if row.get("kind") == "adversarial"
        for column, v in zip(columns, line, strict=True)
        if column != row.get("source") and is_number(v)
    ]
    text = f"{len(rows)} × {len(columns)} matrix"
    return Figures(text + (f" · off-diagonal {sum(off) / len(off):.1f}%" if off else ""))


def models_name(record: dict[str, Any]) -> str:
    """The source models (else the targets)."""
    request = record["request"]
    return model_list(request.get("sources") or request.get("targets"))


TRANSFER = RunKind("transfer", report_files=(MATRIX_FILE,), describe=describe, model=models_name)
