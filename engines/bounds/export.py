"""Table 5 of one network as CSV, one row per layer: what the Bounds screen's `e` writes."""

from __future__ import annotations

import math
from typing import Any

from engines.core.errors import InputError
from engines.core.exports import csv_number, csv_text

BOUNDS_COLUMNS = ("layer", "name", "size", "lower", "upper", "method", "upper_real", "exact", "seconds")


def bounds_csv(bounds: dict[str, Any]) -> str:
    """A `NetworkBounds.to_json()` or a bounds.json as CSV (the lower bound in the frame sense where known)."""
    layers = bounds.get("layers") or []
    if not layers:
        raise InputError("no layers to export: compute the bounds first")
    rows = [
        {
            "layer": layer.get("label", ""),
            "name": layer.get("name", ""),
            "size": layer.get("size", ""),
            "lower": csv_number(float(layer.get("lower_frame", layer.get("lower", math.nan)))),
            "upper": csv_number(float(layer.get("upper", math.nan))),
            "method": layer.get("short_method", layer.get("method", "")),
            "upper_real": "" if layer.get("upper_real") is None else csv_number(float(layer["upper_real"])),
            "exact": int(bool(layer.get("exact"))),
            "seconds": layer.get("seconds", ""),
        }
        for layer in layers
    ]
    return csv_text(BOUNDS_COLUMNS, rows)
