"""A matrix's folder: `matrix.json` (rows, columns, values in %, counts, intervals, distortions, settings),
`matrix.csv`, `heatmap.png`, and `sets/` with the clean images and each row's perturbed images, written
atomically; and the reader that turns `matrix.json` back into a `TransferMatrix`."""

from __future__ import annotations

import csv
import functools
import io
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from engines.core.errors import InputError
from engines.core.io import atomic_write, read_json, write_json_atomic, write_text_atomic
from engines.report.figures import heatmap_png
from engines.transfer.matrix import MatrixRow, TransferMatrix

MATRIX_FILE, IMAGES_FILE, HEATMAP_FILE = "matrix.json", "sets/images.safetensors", "heatmap.png"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path))


def save_matrix(
    matrix: TransferMatrix,
    out: str | Path,
    x: torch.Tensor,
    y: torch.Tensor,
    row_images: list[torch.Tensor],
    row_clean: list[torch.Tensor] | None = None,
) -> None:
    """The matrix files and every row's images; a row made at another size than `x` keeps its own clean images."""
    out = Path(out)
    atomic_write(out / IMAGES_FILE, lambda p: save_file({"x": x.contiguous(), "label": y.contiguous()}, str(p)))
    for i, (row, xr) in enumerate(zip(matrix.rows, row_images, strict=True)):
        tensors = {"x_pert": xr.contiguous()}
        if row_clean is not None and row_clean[i].shape != x.shape:
            tensors["x"] = row_clean[i].contiguous()
        atomic_write(out / row.set_file, functools.partial(_save_tensors, tensors))
    write_json_atomic(out / MATRIX_FILE, matrix.to_json())
    write_text_atomic(out / "matrix.csv", matrix_csv(matrix))
    heatmap_png(
        matrix.values,
        [r.name for r in matrix.rows],
        matrix.columns,
        out / HEATMAP_FILE,
        extra=[f"{r.distortion:.3f}" for r in matrix.rows],
        extra_title="rms",
    )


def matrix_csv(matrix: TransferMatrix) -> str:
    """One line per row: its name, kind, error (%) on each column's model, distortion and size."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "kind", *matrix.columns, "distortion", "n"])
    for row, vals in zip(matrix.rows, matrix.values, strict=True):
        w.writerow([row.name, row.kind, *[f"{v:.2f}" for v in vals], f"{row.distortion:.4f}", row.n])
    return buf.getvalue()


def load_matrix(path: str | Path) -> TransferMatrix:
    """Read a matrix.json (or its folder) back; values and intervals are recomputed from counts."""
    path = Path(path)
    if path.is_dir():
        path = path / MATRIX_FILE
    if not path.is_file():
        raise InputError(f"no transfer matrix at {path}")
    try:
        d = read_json(path)
        rows = [
            MatrixRow(**(r | {"distortion": math.nan if r.get("distortion") is None else r["distortion"]}))
            for r in d["rows"]
        ]
        errors = np.array(d["errors"], dtype=np.int64).reshape(len(rows), len(d["columns"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a blindspot transfer matrix ({exc})") from exc
    return TransferMatrix(rows, list(d["columns"]), errors, d["split"], int(d["n"]), d.get("settings", {}), path.parent)
