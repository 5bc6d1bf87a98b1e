"""Exports a user asks for from a screen: one CSV per result kind, written where the user says.

The workbench's `e` key calls these (the Transfer matrix has its own `matrix_csv` beside the matrix);
each takes what the run folder or the result already holds, so an export never recomputes anything.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from engines.attack.chunks import CHUNKS, SAMPLES_FILE, load_samples, read_chunk, valid_chunks
from engines.core.errors import InputError
from engines.core.io import write_text_atomic
from engines.core.runs import read_run_record

ATTACK_COLUMNS = ("image", "index", "label", "target", "success", "trivial", "distortion", "l2", "linf", "c")
BOUNDS_COLUMNS = ("layer", "name", "size", "lower", "upper", "method", "upper_real", "exact", "seconds")


def _num(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6g}"


def attack_rows(folder: str | Path) -> list[dict[str, Any]]:
    """One row per attacked image of a run: a finished run's samples, or an unfinished run's valid chunks."""
    folder = Path(folder)
    record = read_run_record(folder)
    request = record["request"]
    index: list[int] | None = None  # an unfinished run's chunks hold results only: index and label stay empty
    labels: list[int] | None = None
    if record.get("status") == "done" and (folder / SAMPLES_FILE).is_file():  # else the chunks are the run
        samples = load_samples(folder)
        parts = [(0, samples)]
        index, labels = samples["index"].tolist(), samples["label"].tolist()
    else:
        n = int(request.get("n", 0))
        ranges = valid_chunks(folder, n, None, record.get("format", 1) >= 2) if (folder / CHUNKS).is_dir() else []
        parts = [(a, read_chunk(folder, a, b)) for a, b in sorted(ranges)]
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
                    "distortion": _num(float(part["distortion"][i])),
                    "l2": _num(float(part["l2"][i])),
                    "linf": _num(float(part["linf"][i])),
                    "c": _num(float(part["c"][i])),
                }
            )
    return rows


def attack_csv(folder: str | Path) -> str:
    """The per-image results of an attack run as CSV (image = position in the run, index = in the data)."""
    rows = attack_rows(folder)
    if not rows:
        raise InputError(f"{folder} holds no finished images yet: nothing to export")
    return _csv(ATTACK_COLUMNS, rows)


def bounds_csv(bounds: dict[str, Any]) -> str:
    """Table 5 of one network (a `NetworkBounds.to_json()` or a bounds.json) as CSV, one row per layer."""
    layers = bounds.get("layers") or []
    if not layers:
        raise InputError("no layers to export: compute the bounds first")
    rows = [
        {
            "layer": layer.get("label", ""),
            "name": layer.get("name", ""),
            "size": layer.get("size", ""),
            "lower": _num(float(layer.get("lower_frame", layer.get("lower", math.nan)))),
            "upper": _num(float(layer.get("upper", math.nan))),
            "method": layer.get("short_method", layer.get("method", "")),
            "upper_real": "" if layer.get("upper_real") is None else _num(float(layer["upper_real"])),
            "exact": int(bool(layer.get("exact"))),
            "seconds": layer.get("seconds", ""),
        }
        for layer in layers
    ]
    return _csv(BOUNDS_COLUMNS, rows)


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
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
