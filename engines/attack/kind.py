"""The attack's run kind: how the run list describes an attack folder, what its report shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.attack.folder import KIND, AttackFolder
from engines.attack.results import SUMMARY_FILE
from engines.core.run_index import Figures, RunKind, is_number


def describe(folder: Path, record: dict[str, Any], status: str) -> Figures:
    """Finished: success rate and mean distortion from summary.json; otherwise images with a chunk file of all."""
    attack = AttackFolder(folder, record)
    total = attack.n
    if status != "finished":
        return Figures("", attack.covered_images(), total)
    summary = attack.summary()
    if summary is None:
        return Figures()  # being replaced, or damaged
    parts = [f"success {100 * float(summary.success_rate):.1f}%"]
    distortion = summary.mean_distortion
    if is_number(distortion):
        parts.append(f"distortion {float(distortion):.4f}")
    return Figures(" · ".join(parts), total, total)


ATTACK = RunKind(KIND, report_files=(SUMMARY_FILE,), describe=describe)
