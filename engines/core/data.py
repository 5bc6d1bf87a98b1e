"""IDX data (MNIST and look-alikes): parsing with checks, folder discovery, identity, the paper's P1/P2 split.

Pixels are scaled to [0, 1] as in the paper (§4.2). Images come back as float32
tensors of shape (N, 1, H, W) and labels as int64 tensors of shape (N,). Every loader
checks what training would otherwise choke on late: labels within [0, K), one image
shape shared by the training and test files, no empty files.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.core.choices import SPLITS
from engines.core.errors import DataError
from engines.core.io import file_md5

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
PAPER_SPLIT_SEED = 20131221  # fixed; recorded in every checkpoint's metadata
MNIST_CLASSES = 10
IDX_NAME = "IDX data"  # the name of a data set whose md5s match no known distribution

ROLES = ("train-images", "train-labels", "test-images", "test-labels")
# standard names, tried first; any *train*/*t10k*/*test* IDX file is accepted after that
_STANDARD = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
# torchvision's layouts under a root folder, in the order they are tried
_SUBFOLDERS = ("MNIST/raw", "raw", "FashionMNIST/raw", "KMNIST/raw", "EMNIST/raw")
# classes per EMNIST split (letters are labelled 1..26, so K = 27); other IDX data: MNIST_CLASSES
_EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 27, "digits": 10, "mnist": 10}

# md5 of each file as its publisher distributes it (.gz) and, where known, of the gunzipped file
_KNOWN: dict[str, dict[str, set[str]]] = {
    "MNIST": {
        "train-images": {"f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"},
        "train-labels": {"d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"},
        "test-images": {"9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"},
        "test-labels": {"ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"},
    },
    "FashionMNIST": {
        "train-images": {"8d4fb7e6c68d591d4c3dfef9ec88bf0d"},
        "train-labels": {"25c81989df183df01b3e8a0aad5dffbe"},
        "test-images": {"bef4ecab320f06d8554ea6380940ec79"},
        "test-labels": {"bb300cfdad3c16e7a12a480ee83cd310"},
    },
    "KMNIST": {
        "train-images": {"bdb82020997e1d708af4cf47b453dcf7"},
        "train-labels": {"e144d726b3acfaa3e44228e80efcd344"},
        "test-images": {"5c965bf0a639b31b8f53240b1b52f4d7"},
        "test-labels": {"7320c461ea6c1c855c0b718fb2a4b134"},
    },
}


@dataclass(frozen=True)
class Dataset:
    """A labelled image set; `indices` are positions in the source file, `files` the images' paths (provenance)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    indices: np.ndarray
    files: tuple[str, ...] | None = None  # image paths relative to the data folder (None for IDX, CIFAR)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, start: int, count: int | None) -> Dataset:
        stop = len(self) if count is None else start + count
        if start < 0 or start >= len(self) or stop > len(self) or (count is not None and count <= 0):
            raise DataError(f"cannot take {count} images from offset {start}: {self.name} has {len(self)} images")
        files = self.files[start:stop] if self.files is not None else None
        return Dataset(self.images[start:stop], self.labels[start:stop], self.name, self.indices[start:stop], files)


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


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The (gunzipped) bytes of a data file, all of them or the first `limit`; any failure is a DataError."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            return fh.read() if limit is None else fh.read(limit)
    except FileNotFoundError as exc:
        raise DataError(f"missing data file: {path}") from exc
    except (OSError, EOFError, zlib.error) as exc:
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise DataError(f"cannot read {path}: {reason} (corrupt or truncated file?)") from exc


def _parse_header(path: Path, raw: bytes) -> tuple[list[int], int]:
    """The dimensions an IDX header announces and the header's length in bytes."""
    if len(raw) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[0:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(f"{path}: wrong magic number 0x{magic:08x} (expected 0x00000803 images or 0x00000801 labels)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    return [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)], header


def idx_dims(path: str | Path) -> list[int]:
    """The dimensions in an IDX file's header, read without loading its data (cheap for the shape checks)."""
    path = Path(path)
    return _parse_header(path, _read_bytes(path, 4 + 4 * 3))[0]


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (raw or .gz) with its magic number, dimensions and length checked."""
    path = Path(path)
    raw = _read_bytes(path)
    dims, header = _parse_header(path, raw)
    expected = math.prod(dims)  # Python ints: a forged header cannot overflow into a matching size
    body = len(raw) - header
    if body != expected:
        raise DataError(
            f"{path}: header announces {dims} = {expected} bytes of data but the file holds {body} (truncated?)"
        )
    try:
        return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    except ValueError as exc:  # a zero dimension beside absurd ones: the length matches, the shape cannot exist
        raise DataError(f"{path}: impossible dimensions {dims} in the header ({exc})") from exc


def _candidates(folder: Path) -> list[Path]:
    """Folders where a set of four IDX files may live: the folder itself, then torchvision's layouts."""
    return [folder, *(folder / sub for sub in _SUBFOLDERS)]


def _find_file(base: Path, role: str) -> Path | None:
    """The file playing `role` in `base`: a standard name first, else the one IDX file whose name fits."""
    std = _STANDARD[role]
    dotted = std.replace("-idx", ".idx")
    for name in (std, std + ".gz", dotted, dotted + ".gz"):
        if (base / name).is_file():
            return base / name
    split, kind = role.split("-")
    keys = ("train",) if split == "train" else ("t10k", "test")
    dim = "idx3" if kind == "images" else "idx1"
    matches: dict[str, Path] = {}
    for p in sorted(base.iterdir()):
        n = p.name.lower()
        if n.startswith(".") or not p.is_file():
            continue
        if any(k in n for k in keys) and kind[:-1] in n and dim in n:
            matches.setdefault(n.removesuffix(".gz"), p)  # a file and its .gz twin are one candidate
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches.values())
        raise DataError(
            f"{base} holds several {split} {kind} files ({names}): put one set of four IDX files in a folder "
            "of its own and pass --data to it"
        )
    return next(iter(matches.values()), None)


def mnist_files(folder: str | Path | None = None) -> dict[str, Path]:
    """Locate the four IDX files of one data set (all in one folder) or explain exactly where to put them."""
    folder = Path(folder) if folder else default_mnist_dir()
    partial: tuple[Path, list[str]] | None = None
    for base in _candidates(folder):
        try:
            if not base.is_dir():
                continue
            found = {role: _find_file(base, role) for role in ROLES}
        except OSError as exc:
            raise DataError(f"cannot read data folder {base}: {exc.strerror or exc}") from exc
        if all(found.values()):
            return {role: p for role, p in found.items() if p is not None}
        missing = [_STANDARD[r] + "[.gz]" for r, p in found.items() if p is None]
        if partial is None and len(missing) < len(ROLES):
            partial = (base, missing)
    if partial is not None:
        base, missing = partial
        raise DataError(
            f"incomplete data in {base}: missing {', '.join(missing)}. The four IDX files of one data set "
            "must sit in the same folder"
        )
    raise DataError(
        f"MNIST files not found in {folder}: missing {', '.join(s + '[.gz]' for s in _STANDARD.values())}. "
        f"Put the four IDX files there (or in {folder}/MNIST/raw), pass --data DIR, "
        "or run `blindspot data download` on a machine with internet access"
    )


def dataset_classes(files: dict[str, Path]) -> int:
    """K, the number of classes the data's convention declares: EMNIST files by their split, else 10."""
    name = files["train-labels"].name.lower()
    if name.startswith("emnist-"):
        split = name.split("-")[1]
        if split in _EMNIST_CLASSES:
            return _EMNIST_CLASSES[split]
    return MNIST_CLASSES


def _check_shapes(files: dict[str, Path]) -> list[int]:
    """One image shape for training and test files (read from the headers); returns it as (1, H, W)."""
    train, test = files["train-images"], files["test-images"]
    shapes = {}
    for p in (train, test):
        dims = idx_dims(p)
        if len(dims) != 3:
            raise DataError(f"{p}: expected an image file (count, rows, columns), its header says {dims}")
        shapes[p] = dims[1:]
    if shapes[train] != shapes[test]:
        (h1, w1), (h2, w2) = shapes[train], shapes[test]
        raise DataError(f"image shapes differ: {train} holds {h1}×{w1} images but {test} holds {h2}×{w2}")
    return [1, *shapes[train]]


def _stamp(path: Path) -> tuple[str, int, int]:
    """Path, size and mtime: the in-process cache key, so a replaced file is read again."""
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)
def _load_pair(
    images_stamp: tuple[str, int, int], labels_stamp: tuple[str, int, int], classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = images_stamp[0], labels_stamp[0]
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
    if images.size == 0:
        raise DataError(f"{images_path} holds no image data (shape {list(images.shape)})")
    bad = np.flatnonzero(labels >= classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{labels_path}: label {int(labels[i])} at index {i} is outside 0..{classes - 1} "
            f"(this data has {classes} classes; {bad.size} bad labels in all)"
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
    """One of train, test, p1, p2 as a Dataset (labels and shapes checked against the whole data set)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    files = mnist_files(data_dir)
    _check_shapes(files)
    source = "test" if split == "test" else "train"
    try:
        stamps = _stamp(files[f"{source}-images"]), _stamp(files[f"{source}-labels"])
    except OSError as exc:
        raise DataError(f"cannot read data file: {exc}") from exc
    x, y = _load_pair(*stamps, dataset_classes(files))
    if split in ("train", "test"):
        return Dataset(x, y, split, np.arange(len(y)))
    p1, p2 = paper_split(len(y), split_seed)
    idx = p1 if split == "p1" else p2
    t = torch.from_numpy(idx)
    return Dataset(x[t], y[t], split, idx)


def data_fingerprint(data_dir: str | Path | None = None) -> dict[str, str]:
    """md5 of each data file, recorded in checkpoints so results can be traced to their data."""
    return _md5s(mnist_files(data_dir))


def _md5s(files: dict[str, Path]) -> dict[str, str]:
    try:
        return {key: file_md5(path) for key, path in sorted(files.items())}
    except OSError as exc:
        raise DataError(f"cannot read data file: {exc}") from exc


def dataset_name(md5s: dict[str, str]) -> str:
    """MNIST (or FashionMNIST, KMNIST) only when every file is its publisher's; any other IDX set is 'IDX data'."""
    for name, known in _KNOWN.items():
        if all(md5s.get(role) in known[role] for role in ROLES):
            return name
    return IDX_NAME


def dataset_identity(data_dir: str | Path | None = None) -> dict[str, Any]:
    """What run records and sidecars say about their data: name, md5 of each file, image shape (1, H, W), classes.

    Reads the files' headers and hashes; the data itself is not decoded (load_split checks labels).
    """
    files = mnist_files(data_dir)
    md5s = _md5s(files)
    return {
        "name": dataset_name(md5s),
        "md5s": md5s,
        "image_shape": _check_shapes(files),
        "classes": dataset_classes(files),
    }


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
