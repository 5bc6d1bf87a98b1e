"""A transfer matrix: its rows (the sets fed in), columns (the target models), misclassified counts, and the
error rates and 95 % Wilson intervals computed from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class MatrixRow:
    name: str
    kind: str  # adversarial | amplified | scaled | noise
    source: str | None
    distortion: float  # mean rms sqrt(Σ(x′−x)²/n) over the row's perturbed images
    n: int
    set_file: str  # relative to the matrix folder
    stddev: float | None = None
    clipped: bool = True  # False: noise left outside [0, 1] (the paper's likely setting)


@dataclass
class TransferMatrix:
    rows: list[MatrixRow]
    columns: list[str]
    errors: np.ndarray  # (R, C) misclassified counts
    split: str
    n: int
    settings: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def values(self) -> np.ndarray:
        """Error rates in percent."""
        sizes = np.array([r.n for r in self.rows], dtype=float)[:, None]
        return 100.0 * self.errors / np.maximum(sizes, 1)

    @property
    def intervals(self) -> np.ndarray:
        """95 % Wilson intervals in percent, (R, C, 2)."""
        out = np.zeros(self.errors.shape + (2,))
        for i, row in enumerate(self.rows):
            for j in range(len(self.columns)):
                out[i, j] = wilson_interval(int(self.errors[i, j]), row.n)
        return 100.0 * out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "transfer",
            "split": self.split,
            "n": self.n,
            "columns": self.columns,
            "rows": [asdict(r) for r in self.rows],
            "values": np.round(self.values, 4).tolist(),
            "errors": self.errors.astype(int).tolist(),
            "intervals": np.round(self.intervals, 4).tolist(),
            "distortions": [r.distortion for r in self.rows],
            "settings": self.settings,
        }


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion k/n (sound at 0 % and 100 %)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
