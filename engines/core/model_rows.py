"""Rows of the models listing (`blindspot models`, the Models screen), built in one place.

A row comes from a checkpoint's sidecar (no weights are loaded), or from a model already loaded
(a user's file, a freshly trained checkpoint), whose sidecar may be missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.checkpoint import LoadedModel, list_checkpoints
from engines.core.io import read_json
from engines.core.zoo import ZOO, count_parameters, describe_spec


def row_from_meta(path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """One row for the checkpoint at `path` described by its sidecar `meta`.

    The train error is the error on the model's own training split (P1 for m1, say); P1/P2 errors
    are shown only for the models trained on a half of the training set.
    """
    m = meta.get("metrics", {})
    split = meta.get("train_split", "?")
    architecture = meta.get("architecture") or _describe(meta.get("spec"))
    study = {k: meta[k] for k in STUDY_KEYS if k in meta}  # the protocol's selection and seed study, when recorded
    return {
        "id": meta.get("id", Path(path).stem),
        "architecture": architecture,
        "parameters": meta.get("parameters"),
        "weight_decay": meta.get("weight_decay"),
        "train_split": split,
        "train_error": m.get(f"{split}_error", m.get("train_error")),
        "test_error": m.get("test_error"),
        "p1_error": m.get("p1_error") if split in ("p1", "p2") else None,
        "p2_error": m.get("p2_error") if split in ("p1", "p2") else None,
        "optimizer": meta.get("training", {}).get("optimizer"),
        "recipe": _recipe(meta.get("training", {})),
        "paper": meta.get("paper", {}),
        "data": (meta.get("data") or {}).get("name"),  # None for sidecars older than the record
        "path": str(path),
    } | study


# the sidecar's protocol figures (percent, like test_error): the chosen epoch's validation error, the seed study
STUDY_KEYS = (
    "validation_error",
    "seeds",
    "test_error_mean",
    "test_error_sd",
    "validation_error_mean",
    "validation_error_sd",
)
RECIPE_KEYS = ("optimizer", "epochs", "batch_size", "lr", "iterations", "adversarial", "refresh_share", "seconds")


def _recipe(training: Any) -> dict[str, Any]:
    """How the model was trained, in short: the sidecar's training record without its per-refresh log."""
    return {k: training[k] for k in RECIPE_KEYS if isinstance(training, dict) and k in training}


def _describe(spec: Any) -> str:
    """The architecture of a sidecar without one written out (a user's file): never fails on a bad spec."""
    if not isinstance(spec, dict):
        return ""
    try:
        return describe_spec(spec)
    except (KeyError, TypeError, ValueError):
        return str(spec.get("kind") or "")


def checkpoint_row(path: str | Path) -> dict[str, Any]:
    """The row of one checkpoint, read from its sidecar; an unreadable sidecar gives an `error` row."""
    path = Path(path)
    side = path.with_suffix(".json")
    try:
        meta = read_json(side)
    except (OSError, ValueError):
        return {"id": path.stem, "path": str(path), "error": f"unreadable sidecar {side.name}"}
    return row_from_meta(path, meta)


def loaded_model_row(lm: LoadedModel) -> dict[str, Any]:
    """The row of a loaded model: its sidecar's figures, its parameters counted from the weights."""
    row = row_from_meta(lm.path or lm.id, lm.meta)
    row["id"] = lm.id
    row["parameters"] = count_parameters(lm.model)
    if row.get("architecture") in (None, "", "None"):
        row["architecture"] = lm.source  # a torchvision or factory model: where it was built from
    return row


def model_rows(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per checkpoint: zoo models first in the paper's order, then others by name."""
    rows = [checkpoint_row(path) for path in list_checkpoints(folder)]
    order = {k: i for i, k in enumerate(ZOO)}
    rows.sort(key=lambda r: (order.get(r["id"], len(order)), r["id"]))
    return rows
