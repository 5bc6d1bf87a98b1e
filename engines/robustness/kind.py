"""The robustness run kind: models, mean attack distortion and mean certified radius over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.io import read_json
from engines.core.run_index import Figures, RunKind, is_number, model_list
from engines.robustness.operation import RESULT_FILE


def describe(folder: Path, _: dict[str, Any], __: str) -> Figures:
    rows = read_json(folder / RESULT_FILE)["rows"]
    if not rows:
        return Figures()
    parts = [f"{len(rows)} model{'s' if len(rows) > 1 else ''}"]
    for key, label, digits in (("distortion", "distortion", 4), ("certified", "certified", 4)):
        vals = [float(r[key]) for r in rows if is_number(r.get(key))]
        if vals:
            parts.append(f"{label} {sum(vals) / len(vals):.{digits}f}")
    return Figures(" · ".join(parts))


def models_name(record: dict[str, Any]) -> str:
    return model_list(record["request"].get("models"))


ROBUSTNESS = RunKind("robustness", report_files=(RESULT_FILE,), describe=describe, model=models_name)
