"""On-disk cache of computed tensors, keyed by everything that determines them.

A key is the sha256 of a canonical JSON of its parts (checkpoint hash, data, settings), so a
changed setting can never be served a stale entry. An entry is one safetensors file holding the
tensors and, in its header, the key and the parts: it is written to a temp file and renamed into
place, so a reader (or a second writer of the same entry) sees a whole entry or none. A JSON
sidecar with the parts sits beside it for people; it is never read back.

The cache is an optimisation: a cache folder that cannot be created or written turns the cache off
for this process with one warning line (a `logging` warning: with no logging set up, Python prints
it on stderr as the bare message), and a damaged entry is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from engines.core.io import atomic_write, json_text, write_json_atomic

ENTRY_FORMAT = "blindspot-cache-1"  # entries from another format are misses

_log = logging.getLogger(__name__)
_unusable: set[str] = set()  # cache roots found unwritable in this process (warned about once each)


def cache_dir() -> Path:
    """BLINDSPOT_CACHE, else $XDG_CACHE_HOME/blindspot, else ~/.cache/blindspot (no I/O; never raises)."""
    env = os.environ.get("BLINDSPOT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no HOME and no passwd entry (some containers)
            base = tempfile.gettempdir()
    return Path(base) / "blindspot"


def cache_key(**parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _turn_off(root: Path, exc: BaseException) -> None:
    """Run without a cache from now on, saying so once."""
    if str(root) in _unusable:
        return
    _unusable.add(str(root))
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or exc.__class__.__name__
    _log.warning(
        "warning: cache folder %s cannot be written (%s); running without a cache (set BLINDSPOT_CACHE to fix)",
        root,
        reason,
    )


def writable_cache_dir(kind: str | None = None) -> Path | None:
    """The cache folder (for `kind`), created and probed with a write; None, after one warning, if it cannot be.

    For engines that keep whole run folders in the cache (adversarial sets): None means work in a
    temporary folder instead.
    """
    root = cache_dir()
    if str(root) in _unusable:
        return None
    folder = root / kind if kind else root
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _turn_off(root, exc)
        return None
    return folder


def _paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.safetensors", folder / f"{key}.json"


def cache_load(kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached tensors and parts, or None on a miss (a damaged, foreign or unreadable entry counts as a miss)."""
    weights, _ = _paths(cache_dir() / kind, key)
    try:
        if not weights.is_file():
            return None
        # one read of one file: safe_open would reopen the path for the tensors, and a writer renaming a
        # new entry into place between the two reads would pair one entry's parts with another's tensors
        blob = weights.read_bytes()
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
        if meta.get("format") != ENTRY_FORMAT or meta.get("key") != key:
            return None
        parts = json.loads(meta["parts"])
        tensors = load(blob)
    except Exception:  # noqa: BLE001 - any failure to read an optional cache entry is a miss, never an error
        return None
    return (tensors, parts) if isinstance(parts, dict) else None


def cache_store(kind: str, key: str, tensors: dict[str, torch.Tensor], parts: dict[str, Any]) -> Path | None:
    """Store an entry atomically; None (after one warning) when the cache cannot be written. Never raises OSError."""
    folder = writable_cache_dir(kind)
    if folder is None:
        return None
    weights, side = _paths(folder, key)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": ENTRY_FORMAT, "key": key, "parts": json_text(parts, indent=None)}
    try:
        atomic_write(weights, lambda p: save_file(flat, str(p), metadata=meta))
        write_json_atomic(side, parts)
    except (OSError, SafetensorError) as exc:  # disk full, folder made read-only meanwhile
        _turn_off(cache_dir(), exc)
        return None
    return weights
