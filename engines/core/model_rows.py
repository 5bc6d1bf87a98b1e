"""What models are available, read from checkpoint sidecars only (no weights are loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.checkpoint import list_checkpoints
from engines.core.io import read_json
from engines.core.zoo import ZOO


def model_rows(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per checkpoint: zoo models first in the paper's order, then others by name."""
    rows = []
    for path in list_checkpoints(folder):
        side = path.with_suffix(".json")
        try:
            meta = read_json(side)
        except (OSError, ValueError):
            rows.append({"id": path.stem, "path": str(path), "error": f"unreadable sidecar {side.name}"})
            continue
        m = meta.get("metrics", {})
        split = meta.get("train_split", "?")
        rows.append(
            {
                "id": meta.get("id", path.stem),
                "architecture": meta.get("architecture", ""),
                "parameters": meta.get("parameters"),
                "weight_decay": meta.get("weight_decay"),
                "train_split": split,
                "train_error": m.get(f"{split}_error", m.get("train_error")),
                "test_error": m.get("test_error"),
                "p1_error": m.get("p1_error") if split in ("p1", "p2") else None,
                "p2_error": m.get("p2_error") if split in ("p1", "p2") else None,
                "optimizer": meta.get("training", {}).get("optimizer"),
                "paper": meta.get("paper", {}),
                "path": str(path),
            }
        )
    order = {k: i for i, k in enumerate(ZOO)}
    rows.sort(key=lambda r: (order.get(r["id"], len(order)), r["id"]))
    return rows
