"""On-disk cache of computed tensors, keyed by everything that determines them.

A key is the sha256 of a canonical JSON of its parts (checkpoint hash, data, settings), so a
changed setting can never be served a stale entry. Entries are safetensors files plus a JSON
sidecar with the key's parts, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engines.core.io import atomic_write, read_json, write_json_atomic


def cache_dir() -> Path:
    """BLINDSPOT_CACHE, else $XDG_CACHE_HOME/blindspot, else ~/.cache/blindspot."""
    env = os.environ.get("BLINDSPOT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "blindspot"


def cache_key(**parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _paths(kind: str, key: str) -> tuple[Path, Path]:
    folder = cache_dir() / kind
    return folder / f"{key}.safetensors", folder / f"{key}.json"


def cache_load(kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached tensors and parts, or None on a miss (a damaged entry counts as a miss)."""
    weights, side = _paths(kind, key)
    if not (weights.is_file() and side.is_file()):
        return None
    try:
        return load_file(str(weights)), read_json(side)
    except (SafetensorError, OSError, ValueError):
        return None


def cache_store(kind: str, key: str, tensors: dict[str, torch.Tensor], parts: dict[str, Any]) -> Path:
    weights, side = _paths(kind, key)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(weights, lambda p: save_file(flat, str(p)))
    write_json_atomic(side, parts)
    return weights
