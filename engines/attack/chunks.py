"""The chunk files of an attack run: one safetensors file per finished slice [start, stop) of its
images, named by image index (not by process), checked before they are trusted."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

SAMPLES_FILE, CHUNKS = "samples.safetensors", "chunks"
CHUNK_KEYS = ("x_adv", "target", "success", "trivial", "distortion", "l2", "linf", "c")


def chunk_name(start: int, stop: int) -> str:
    return f"{start:06d}-{stop:06d}.safetensors"


def valid_chunks(out: Path, n: int) -> list[tuple[int, int]]:
    """Finished chunks that can be trusted: a name that parses, a range inside the run, no overlap,
    a readable header with every per-image array of the right length. Others are recomputed."""
    ranges: list[tuple[int, int]] = []
    for path in sorted((out / CHUNKS).glob("*.safetensors")):
        try:
            a, b = (int(s) for s in path.stem.split("-"))
        except ValueError:
            continue
        if not (0 <= a < b <= n) or any(a < d and c < b for c, d in ranges):
            continue
        try:
            with safe_open(str(path), "pt") as fh:
                keys = set(fh.keys())
                if not set(CHUNK_KEYS) - {"trivial"} <= keys:
                    continue
                if any(fh.get_slice(k).get_shape()[0] != b - a for k in keys):
                    continue
        except (SafetensorError, OSError, ValueError, RuntimeError):
            continue
        ranges.append((a, b))
    return ranges


def remaining(done: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    gaps, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < n:
        gaps.append((pos, n))
    return gaps


def load_samples(out: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / SAMPLES_FILE))
