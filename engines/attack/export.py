"""An attack run's per-image results as CSV: what the Attack screen's `e` writes, read from the run folder
(never recomputed): a finished run's samples, or the verified chunks of one still running or stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engines.attack.folder import AttackFolder
from engines.core.errors import InputError
from engines.core.exports import csv_number, csv_text

ATTACK_COLUMNS = ("image", "index", "label", "target", "success", "trivial", "distortion", "l2", "linf", "c")


def attack_rows(folder: str | Path) -> list[dict[str, Any]]:
    """One row per attacked image of a run (image = position in the run, index = in the data; an unfinished
    run's chunks hold results only, so its index and label stay empty)."""
    attack = AttackFolder.read(folder)
    samples = attack.finished_samples()
    index: list[int] | None = None
    labels: list[int] | None = None
    if samples is not None:
        parts = [(0, samples)]
        index, labels = samples["index"].tolist(), samples["label"].tolist()
    else:
        parts = [(a, attack.chunk(a, b)) for a, b in sorted(attack.verified_chunks())]
    rows = []
    for start, part in parts:
        trivial = part.get("trivial", torch.zeros_like(part["success"]))
        for i in range(len(part["success"])):
            image = start + i
            rows.append(
                {
                    "image": image,
                    "index": index[image] if index is not None else "",
                    "label": labels[image] if labels is not None else "",
                    "target": int(part["target"][i]),
                    "success": int(part["success"][i]),
                    "trivial": int(trivial[i]),
                    "distortion": csv_number(float(part["distortion"][i])),
                    "l2": csv_number(float(part["l2"][i])),
                    "linf": csv_number(float(part["linf"][i])),
                    "c": csv_number(float(part["c"][i])),
                }
            )
    return rows


def attack_csv(folder: str | Path) -> str:
    """The per-image results of an attack run as CSV; a run with no finished image yet is an InputError."""
    rows = attack_rows(folder)
    if not rows:
        raise InputError(f"{folder} holds no finished images yet: nothing to export")
    return csv_text(ATTACK_COLUMNS, rows)
