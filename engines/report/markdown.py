"""Markdown table pieces shared by the reports: a cell for a number that may be missing, a signed difference,
a table's head."""

from __future__ import annotations

import math


def number(v: float | None, digits: int = 2) -> str:
    """`v` with `digits` decimals, or an en dash where there is no value (None or NaN)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def difference(ours: float, theirs: float | None, digits: int = 2) -> str:
    """ours − theirs with its sign, or an en dash where there is nothing to compare with."""
    return "–" if theirs is None else f"{ours - theirs:+.{digits}f}"


def table_head(columns: list[str]) -> list[str]:
    """The header row and the separator row of a Markdown table."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
