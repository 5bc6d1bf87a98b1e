"""What every export needs, whatever the experiment: rows as CSV text, numbers as a CSV cell, and the file
written where the user says. Each experiment builds its own rows (`engines.attack.export`, `engines.bounds.export`)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.core.errors import InputError
from engines.core.io import write_text_atomic


def csv_number(value: float) -> str:
    """Six significant digits; empty for NaN and infinities (no such number was found)."""
    return "" if not math.isfinite(value) else f"{value:.6g}"


def csv_text(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    """A header line of `columns`, then one line per row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_export(text: str, path: str | Path) -> Path:
    """Write an export atomically where the user said (`~` expanded, folders created); the written path."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputError(f"{target} is a folder: give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(target, text)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
