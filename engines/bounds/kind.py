"""The bounds run kind: a bounds folder in the run list (layers, product of the layers' bounds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.bounds.operation import BOUNDS_FILE
from engines.core.io import read_json
from engines.core.run_index import Figures, RunKind, is_number, short_number


def describe(folder: Path, _: dict[str, Any], __: str) -> Figures:
    bounds = read_json(folder / BOUNDS_FILE)
    text = f"{len(bounds['layers'])} layers"
    product = bounds.get("product_table")
    return Figures(text + (f" · product {short_number(float(product))}" if is_number(product) else ""))


def input_name(record: dict[str, Any]) -> str:
    """Bounds read no data: the input shape they hold for."""
    shape = record["request"].get("input_shape")
    return f"input {'×'.join(str(v) for v in shape)}" if isinstance(shape, list) else ""


BOUNDS = RunKind("bounds", report_files=(BOUNDS_FILE,), describe=describe, data=input_name)
