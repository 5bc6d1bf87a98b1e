"""A matrix cell's examples, for the workbench's drill-down: the images of a row's set that fool a column's model."""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import load_file

from engines.core.errors import InputError
from engines.core.evaluate import predict
from engines.core.model_data import fit_images
from engines.core.models import ModelRef, load_model
from engines.transfer.matrix import TransferMatrix
from engines.transfer.store import IMAGES_FILE


def cell_examples(
    matrix: TransferMatrix, row: int, col: int, k: int = 8, device: torch.device | str = "cpu"
) -> list[dict[str, Any]]:
    """Images of row `row`'s set that column `col`'s model misclassifies (x, x_pert, label, pred, index)."""
    if matrix.folder is None:
        raise InputError("this matrix has no folder with its image sets")
    base = load_file(str(matrix.folder / IMAGES_FILE))
    row_set = load_file(str(matrix.folder / matrix.rows[row].set_file))
    x_pert, x = row_set["x_pert"], row_set.get("x", base["x"])
    column = matrix.columns[col]
    ref = (matrix.settings.get("models") or {}).get(column, {}).get("ref", column)
    lm = load_model(ModelRef.from_json(ref), device)
    pred = predict(lm.model, fit_images(x_pert, lm.input_shape), device)
    fooled = (pred != base["label"]).nonzero().squeeze(1)[:k]
    return [
        {"x": x[i], "x_pert": x_pert[i], "label": int(base["label"][i]), "pred": int(pred[i]), "index": int(i)}
        for i in fooled
    ]
