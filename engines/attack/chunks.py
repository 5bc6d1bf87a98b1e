"""The chunk files of an attack run: one safetensors file per finished slice [start, stop) of its
images, named by image index (not by process), checked before they are trusted.

Since run format 2 every chunk carries the sha256 of its arrays in its header, so a flipped byte
anywhere in the file (not only in the header) makes `--resume` recompute the chunk instead of
merging wrong numbers into the run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engines.core.errors import InputError
from engines.core.io import atomic_write

SAMPLES_FILE, CHUNKS = "samples.safetensors", "chunks"
CHUNK_KEYS = ("x_adv", "target", "success", "trivial", "distortion", "l2", "linf", "c")
_INTEGER_KEYS = {
    "target": torch.int64,
    "success": torch.uint8,
    "trivial": torch.uint8,
    "evaluations": torch.int64,  # model evaluations per image (chunks since the evaluation budget; optional)
    "forward_evaluations": torch.int64,
}
_DIGEST = "sha256"


def chunk_name(start: int, stop: int) -> str:
    return f"{start:06d}-{stop:06d}.safetensors"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the arrays, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_chunk(out: Path, start: int, stop: int, part: dict[str, torch.Tensor]) -> Path:
    """Write one finished chunk atomically, its checksum in the safetensors header."""
    meta = {_DIGEST: tensors_digest(part)}
    return atomic_write(out / CHUNKS / chunk_name(start, stop), lambda p: save_file(part, str(p), metadata=meta))


def read_chunk(out: Path, start: int, stop: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / CHUNKS / chunk_name(start, stop)))


def valid_chunks(
    out: Path, n: int, image_shape: tuple[int, ...] | None = None, checksummed: bool = True
) -> list[tuple[int, int]]:
    """Finished chunks that can be trusted: a name that parses, a range inside the run, no overlap,
    every per-image array present with the right length and dtype, x_adv of the run's image shape
    and (`checksummed`, runs of format 2 on) arrays that match the checksum in the header.
    Others are left out, so the run recomputes them."""
    ranges: list[tuple[int, int]] = []
    for path, a, b in chunk_files(out):
        if not (0 <= a < b <= n) or any(a < d and c < b for c, d in ranges):
            continue
        if chunk_is_sound(path, b - a, image_shape, checksummed):
            ranges.append((a, b))
    return ranges


def chunk_files(out: Path) -> list[tuple[Path, int, int]]:
    """The chunk files of a run folder with the image range their names say, in name order (unreadable
    folder or foreign names: left out)."""
    found = []
    try:
        paths = sorted((out / CHUNKS).glob("*.safetensors"))
    except OSError:
        return []
    for path in paths:
        try:
            a, b = (int(v) for v in path.stem.split("-"))
        except ValueError:
            continue
        found.append((path, a, b))
    return found


def covered_images(out: Path, n: int | None = None) -> int:
    """Images of [0, n) covered by the chunk files' names (names only: cheap enough to poll; overlaps once)."""
    ranges = sorted((a, b if n is None else min(b, n)) for _, a, b in chunk_files(out) if a >= 0)
    covered, pos = 0, 0
    for a, b in ranges:
        covered += max(0, b - max(a, pos))
        pos = max(pos, b)
    return covered


def remaining(done: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The gaps [start, stop) of a run of n images that no finished chunk covers."""
    gaps, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < n:
        gaps.append((pos, n))
    return gaps


def chunk_is_sound(path: Path, length: int, image_shape: tuple[int, ...] | None, checksummed: bool) -> bool:
    """The checks `valid_chunks` makes of one chunk file (the follower checks each new file once)."""
    try:
        with safe_open(str(path), "pt") as fh:
            digest = (fh.metadata() or {}).get(_DIGEST)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError):
        return False
    if not set(CHUNK_KEYS) - {"trivial"} <= set(tensors):  # runs from before "trivial" existed lack it
        return False
    for name, t in tensors.items():
        if t.dim() == 0 or t.shape[0] != length:
            return False
        wanted = _INTEGER_KEYS.get(name)
        if (t.dtype != wanted) if wanted is not None else not t.is_floating_point():
            return False
    if image_shape is not None and tuple(tensors["x_adv"].shape[1:]) != tuple(image_shape):
        return False
    return not checksummed or digest == tensors_digest(tensors)


def load_samples(out: str | Path) -> dict[str, torch.Tensor]:
    """All per-image arrays of a finished run; a damaged file is an InputError, not a traceback."""
    path = Path(out) / SAMPLES_FILE
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is damaged or missing ({exc}); run the attack again") from None
