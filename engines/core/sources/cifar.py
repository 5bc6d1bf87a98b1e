"""CifarSource: the CIFAR-10/100 BINARY distributions through np.memmap; the pickled one is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.core.data import Dataset, paper_split
from engines.core.errors import DataError
from engines.core.image_files import fit_array, to_float
from engines.core.io import file_md5
from engines.core.sources.base import DataSource
from engines.core.sources.classes_file import ClassesFile, _class_label
from engines.core.sources.ref import DataRef

_CIFAR10_DIR, _CIFAR100_DIR = "cifar-10-batches-bin", "cifar-100-binary"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST = "test_batch.bin"
_CIFAR_PIXELS = 3 * 32 * 32
_PICKLED_CIFAR = ("data_batch_1", "test_batch", "batches.meta", "cifar-10-batches-py", "cifar-100-python")
_PICKLED_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-100-python.tar.gz")


class CifarSource(DataSource):
    """CIFAR-10/100 binary batches, read lazily through np.memmap (records: label byte(s) + 3072 CHW bytes)."""

    def __init__(self, ref: DataRef, split: str, folder: Path, classes: ClassesFile | None, hundred: bool) -> None:
        super().__init__(ref, split, folder, classes)
        self.kind = "cifar100" if hundred else "cifar10"
        self._label_at, self._record = (1, 2 + _CIFAR_PIXELS) if hundred else (0, 1 + _CIFAR_PIXELS)
        self._native_classes = 100 if hundred else 10
        if hundred:
            names = ["test.bin"] if split == "test" else ["train.bin"]
        else:
            names = [_CIFAR10_TEST] if split == "test" else list(_CIFAR10_TRAIN)
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise DataError(
                f"incomplete {self.name} binary folder {folder}: missing {', '.join(missing)} "
                "(extract the whole archive there)"
            )
        self._paths = [folder / name for name in names]
        counts = []
        for path in self._paths:
            size = path.stat().st_size
            if size == 0 or size % self._record:
                raise DataError(
                    f"{path}: {size} bytes is not a whole number of {self._record}-byte {self.name} records "
                    "(truncated, or not the binary version?)"
                )
            counts.append(size // self._record)
        self._starts = np.cumsum([0, *counts])
        total = int(self._starts[-1])
        self._order = np.arange(total) if split in ("train", "test") else paper_split(total)[split == "p2"]
        self._maps: dict[int, np.memmap] = {}
        native_names = self._read_names(folder)
        self.num_classes = self._native_classes
        self.class_names = native_names
        self._remap: np.ndarray | None = None
        if classes is not None:
            self.num_classes, self.class_names = len(classes), list(classes.lines)
            if native_names is None:
                if len(classes) < self._native_classes:
                    raise DataError(
                        f"classes file {classes.path} lists {len(classes)} classes but {self.name} has "
                        f"{self._native_classes}"
                    )
            else:
                self._remap = np.array([_class_label(classes, c, f"{self.name} class") for c in native_names])

    @property
    def name(self) -> str:
        return "CIFAR-100" if self.kind == "cifar100" else "CIFAR-10"

    def _read_names(self, folder: Path) -> list[str] | None:
        path = folder / ("fine_label_names.txt" if self.kind == "cifar100" else "batches.meta.txt")
        if not path.is_file():
            return None
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        if len(names) != self._native_classes:
            raise DataError(f"{path} lists {len(names)} class names; {self.name} has {self._native_classes}")
        return names

    def __len__(self) -> int:
        return len(self._order)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        side = self.ref.image_size or 32
        return (self.ref.channels or 3, side, side)

    @property
    def _decodes(self) -> bool:
        return self.image_shape != (3, 32, 32)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memmaps are reopened in each worker
        return state

    def _map(self, i: int) -> np.memmap:
        if i not in self._maps:
            count = int(self._starts[i + 1] - self._starts[i])
            self._maps[i] = np.memmap(self._paths[i], dtype=np.uint8, mode="r", shape=(count, self._record))
        return self._maps[i]

    def identity(self) -> dict[str, Any]:
        try:
            md5s = {path.name: file_md5(path) for path in self._paths}
        except OSError as exc:
            raise DataError(f"cannot read data file: {exc}") from exc
        return {**self._common_identity(), "md5s": md5s}

    def take(self, offset: int = 0, n: int | None = None) -> Dataset:
        start, stop = self._range(offset, n)
        positions = self._order[start:stop]
        which = np.searchsorted(self._starts, positions, side="right") - 1
        records = np.empty((len(positions), self._record), dtype=np.uint8)
        for i in np.unique(which):
            mask = which == i
            records[mask] = self._map(int(i))[positions[mask] - self._starts[i]]
        labels = records[:, self._label_at].astype(np.int64)
        bad = np.flatnonzero(labels >= self._native_classes)
        if bad.size:
            k = int(bad[0])
            i = int(which[k])
            raise DataError(
                f"{self._paths[i]}: record {int(positions[k] - self._starts[i])} has label {int(labels[k])}, "
                f"outside 0..{self._native_classes - 1} (corrupt file?)"
            )
        if self._remap is not None:
            labels = self._remap[labels]
        pixels = records[:, -_CIFAR_PIXELS:].reshape(-1, 3, 32, 32)
        if self._decodes:
            c, side = self.image_shape[0], self.ref.image_size
            pixels = np.stack([fit_array(a, c, side) for a in pixels])
        return Dataset(to_float(pixels), torch.from_numpy(labels), self.split, positions.copy())


def _has_any(folder: Path, names: tuple[str, ...] | list[str]) -> bool:
    return any((folder / name).exists() for name in names)


def _find_cifar(root: Path) -> tuple[Path, bool] | None:
    """(folder, hundred) of a CIFAR binary distribution in root or its extracted subfolder."""
    found: list[tuple[Path, bool]] = []
    for folder in (root, root / _CIFAR10_DIR, root / _CIFAR100_DIR):
        if not folder.is_dir():
            continue
        if _has_any(folder, [*_CIFAR10_TRAIN, _CIFAR10_TEST]):
            found.append((folder, False))
        elif _has_any(folder, ["train.bin", "test.bin"]):
            found.append((folder, True))
        if found and folder == root:
            break
    if len(found) > 1:
        raise DataError(
            f"{root} holds both {_CIFAR10_DIR} and {_CIFAR100_DIR}: pass the one to use (--data {found[0][0]})"
        )
    return found[0] if found else None


def _refuse_pickled_cifar(root: Path) -> None:
    hits = [name for name in (*_PICKLED_CIFAR, *_PICKLED_ARCHIVES) if (root / name).exists()]
    if not hits and all((root / name).is_file() for name in ("train", "test", "meta")):
        hits = ["train, test, meta"]  # the inside of cifar-100-python
    if hits:
        raise DataError(
            f"{root} holds the pickled (python) CIFAR distribution ({hits[0]}), which blindspot never unpickles: "
            "download the binary version (cifar-10-binary.tar.gz or cifar-100-binary.tar.gz) and pass its folder"
        )
