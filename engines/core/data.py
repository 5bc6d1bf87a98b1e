"""MNIST-format data: IDX parsing with checks, folder discovery, the paper's P1/P2 split.

Pixels are scaled to [0, 1] as in the paper (§4.2). Images come back as float32
tensors of shape (N, 1, H, W) and labels as int64 tensors of shape (N,).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from engines.core.choices import SPLITS
from engines.core.errors import DataError
from engines.core.io import file_md5

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
PAPER_SPLIT_SEED = 20131221  # fixed; recorded in every checkpoint's metadata

# standard names, tried first; any *train*/*t10k*/*test* IDX file is accepted after that
_STANDARD = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Dataset:
    """A labelled image set; `indices` are positions in the source file (for provenance)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, start: int, count: int | None) -> Dataset:
        stop = len(self) if count is None else start + count
        if start < 0 or start >= len(self) or stop > len(self) or (count is not None and count <= 0):
            raise DataError(f"cannot take {count} images from offset {start}: {self.name} has {len(self)} images")
        return Dataset(self.images[start:stop], self.labels[start:stop], self.name, self.indices[start:stop])


def sample_data_dir() -> Path:
    """The shipped sample_data folder (BLINDSPOT_SAMPLE_DATA overrides)."""
    env = os.environ.get("BLINDSPOT_SAMPLE_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "sample_data"
    if here.is_dir():
        return here
    return Path.cwd() / "sample_data"


def default_mnist_dir() -> Path:
    return sample_data_dir() / "mnist"


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (raw or .gz) with its magic number, dimensions and length checked."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as exc:
        raise DataError(f"missing data file: {path}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc} (corrupt or truncated file?)") from exc
    if len(raw) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[0:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(f"{path}: wrong magic number 0x{magic:08x} (expected 0x00000803 images or 0x00000801 labels)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    body = len(raw) - header
    if body != expected:
        raise DataError(
            f"{path}: header announces {dims} = {expected} bytes of data but the file holds {body} (truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _candidates(folder: Path) -> list[Path]:
    """Folders where IDX files may live: the folder itself, MNIST/raw, raw."""
    return [folder, folder / "MNIST" / "raw", folder / "raw"]


def _find_file(folder: Path, split: str, kind: str) -> Path | None:
    std = _STANDARD[(split, kind)]
    for base in _candidates(folder):
        for name in (std, std + ".gz", std.replace("-idx", ".idx"), std.replace("-idx", ".idx") + ".gz"):
            if (base / name).is_file():
                return base / name
    keys = ("train",) if split == "train" else ("t10k", "test")
    dim = "idx3" if kind == "images" else "idx1"
    for base in _candidates(folder):
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            n = p.name.lower()
            if p.is_file() and any(k in n for k in keys) and kind[:-1] in n and dim in n:
                return p
    return None


def mnist_files(folder: str | Path | None = None) -> dict[str, Path]:
    """Locate the four IDX files or explain exactly where to put them."""
    folder = Path(folder) if folder else default_mnist_dir()
    found: dict[str, Path] = {}
    missing = []
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            p = _find_file(folder, split, kind)
            if p is None:
                missing.append(_STANDARD[(split, kind)] + "[.gz]")
            else:
                found[f"{split}-{kind}"] = p
    if missing:
        raise DataError(
            f"MNIST files not found in {folder}: missing {', '.join(missing)}. "
            f"Put the four IDX files there (or in {folder}/MNIST/raw), pass --data DIR, "
            "or run `blindspot data download` on a machine with internet access"
        )
    return found


@lru_cache(maxsize=8)
def _load_pair(images_path: str, labels_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected a 3-d image array, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-d label array, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def paper_split(n_train: int = 60000, seed: int = PAPER_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """P1, P2: two disjoint halves of the training set (§2), fixed by `seed`."""
    perm = np.random.default_rng(seed).permutation(n_train)
    half = n_train // 2
    return np.sort(perm[:half]), np.sort(perm[half : 2 * half])


def load_split(split: str = "test", data_dir: str | Path | None = None, split_seed: int = PAPER_SPLIT_SEED) -> Dataset:
    """One of train, test, p1, p2 as a Dataset."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    files = mnist_files(data_dir)
    source = "test" if split == "test" else "train"
    x, y = _load_pair(str(files[f"{source}-images"]), str(files[f"{source}-labels"]))
    if split in ("train", "test"):
        return Dataset(x, y, split, np.arange(len(y)))
    p1, p2 = paper_split(len(y), split_seed)
    idx = p1 if split == "p1" else p2
    t = torch.from_numpy(idx)
    return Dataset(x[t], y[t], split, idx)


def data_fingerprint(data_dir: str | Path | None = None) -> dict[str, str]:
    """md5 of each data file, recorded in checkpoints so results can be traced to their data."""
    return {key: file_md5(path) for key, path in sorted(mnist_files(data_dir).items())}


def download_mnist(target: str | Path) -> Path:
    """Fetch MNIST through torchvision (needs internet); files land in target/MNIST/raw."""
    try:
        from torchvision.datasets import MNIST
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise DataError("torchvision is needed for `blindspot data download`") from exc
    target = Path(target)
    try:
        MNIST(str(target), train=True, download=True)
        MNIST(str(target), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"download failed ({exc.__class__.__name__}: {exc}); offline, copy the four MNIST IDX files "
            f"(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
            f"t10k-labels-idx1-ubyte.gz) into {target}"
        ) from exc
    return target / "MNIST" / "raw"
