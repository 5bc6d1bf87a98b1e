"""Data sources: any image data behind one interface, decoded only where it is taken.

`open_data(DataRef, split)` looks at a folder and opens the kind it finds:

- ``idx``: MNIST-format IDX files (wraps `engines.core.data.load_split`: same images, order and md5s);
- ``cifar10`` / ``cifar100``: the BINARY distributions, read through np.memmap (the pickled "python"
  version is refused: nothing is ever unpickled);
- ``imagefolder``: ``ROOT/<class>/*.png|jpg|jpeg|webp|bmp``, classes sorted as torchvision's ImageFolder;
- ``csv``: a flat folder of images listed in ``labels.csv`` (``file,label``).

Folders may hold ``train/`` and ``test/`` (or ``val/``, ``validation/``); otherwise one folder serves every
split. Everything a user can get wrong (missing files, empty classes, labels out of range, a classes
file that misses a folder) is found when the source is opened, before any work starts; a corrupt image
is found when it is decoded, and named.

Folder images are taken in a fixed, seeded, class-interleaved order (`interleaved_order`), so that the
first K images of a K-class folder cover all K classes and ``--n 8`` does not mean eight cats.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from engines.core.choices import SPLITS
from engines.core.data import (
    PAPER_SPLIT_SEED,
    Dataset,
    _candidates,
    _check_shapes,
    dataset_classes,
    dataset_identity,
    default_mnist_dir,
    idx_dims,
    load_split,
    mnist_files,
    paper_split,
)
from engines.core.errors import DataError, InputError
from engines.core.image_files import (
    IMAGE_EXTENSIONS,
    decode_file,
    fit_array,
    image_header_size,
    is_image_name,
    to_float,
    to_uint8,
)
from engines.core.io import file_md5, file_sha256

KINDS = ("idx", "imagefolder", "csv", "cifar10", "cifar100")
ORDER_SEED = 5318008  # the folders' take order; recorded in their identity
LABELS_CSV = "labels.csv"
TEST_DIRS = ("test", "val", "validation")  # what serves split "test" in a split layout, in this order
SPLIT_DIRS = ("train", *TEST_DIRS)
WORKERS_FROM = 256  # batches() decodes in worker processes only for more images than this
MAX_WORKERS = 8

_CIFAR10_DIR, _CIFAR100_DIR = "cifar-10-batches-bin", "cifar-100-binary"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST = "test_batch.bin"
_CIFAR_PIXELS = 3 * 32 * 32
_PICKLED_CIFAR = ("data_batch_1", "test_batch", "batches.meta", "cifar-10-batches-py", "cifar-100-python")
_PICKLED_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-100-python.tar.gz")
_LOOKED_FOR = (
    "MNIST-format IDX files (also under MNIST/raw and the like), CIFAR-10/100 binary batches "
    "(data_batch_1.bin… and test_batch.bin, or train.bin and test.bin), class subfolders of images "
    f"(ROOT/<class>/*{'|'.join(IMAGE_EXTENSIONS)}, optionally under train/ and test/ or val/), "
    f"or images listed in ROOT/{LABELS_CSV} (file,label)"
)


@dataclass(frozen=True)
class DataRef:
    """What a request records about its data (JSON-able via to_json/from_json)."""

    path: str | None = None  # None: the shipped sample_data/mnist (engines.core.data.default_mnist_dir())
    image_size: int | None = None  # side of the square images after resize+centre-crop; None: the data's own
    channels: int | None = None  # 1 (Pillow "L") or 3 ("RGB"); None: the data's own (IDX 1, files and CIFAR 3)
    classes_file: str | None = None  # one class name or WordNet id per line, in the MODEL's class order

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, str):
            object.__setattr__(self, "path", str(self.path))  # a Path is welcome; the record holds text
        if self.classes_file is not None and not isinstance(self.classes_file, str):
            object.__setattr__(self, "classes_file", str(self.classes_file))
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096):
            raise InputError(f"image size must be a whole number of pixels between 1 and 4096, got {size!r}")
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> DataRef:
        """The DataRef a record holds (unknown keys are ignored: records may carry more)."""
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise InputError(f"a data reference is a JSON object, got {type(doc).__name__}")
        return cls(**{f.name: doc.get(f.name) for f in fields(cls)})


def interleaved_order(labels: np.ndarray, seed: int = ORDER_SEED) -> np.ndarray:
    """A fixed permutation of range(len(labels)) that deals the classes out in seeded rounds.

    Round r holds the r-th image (in a seeded shuffle) of every class that still has one, in a seeded
    order; so any K consecutive images from the start cover K classes while the classes last.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class, shuffled within each
    grouped_labels = labels[grouped]
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - np.searchsorted(grouped_labels, grouped_labels, side="left")
    tie = rng.random(n)
    return np.lexsort((tie, rank)).astype(np.int64)


class ClassesFile:
    """A classes file: one class per line in the model's order; a line may be 'wnid description'."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DataError(f"classes file not found: {self.path}")
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read classes file {self.path}: {exc}") from exc
        lines = [line.strip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise DataError(f"classes file {self.path} is empty: write one class name or WordNet id per line")
        if "" in lines:
            raise DataError(
                f"{self.path}: line {lines.index('') + 1} is empty; write one class per line, in the model's order"
            )
        self.lines = lines
        self._full: dict[str, list[int]] = {}
        self._first: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            self._full.setdefault(line, []).append(i)
            self._first.setdefault(line.split()[0], []).append(i)

    def __len__(self) -> int:
        return len(self.lines)

    def index(self, name: str) -> int | None:
        """The line (label) of `name`: a whole line first, else a line's first word (e.g. its WordNet id)."""
        for table in (self._full, self._first):
            hits = table.get(name)
            if hits:
                if len(hits) > 1:
                    lines = " and ".join(str(i + 1) for i in hits[:2])
                    raise DataError(f"class {name!r} is on lines {lines} of {self.path}: make each line unique")
                return hits[0]
        return None

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": file_sha256(self.path), "classes": len(self.lines)}


class DataSource:
    """One data set's split: its size and classes known at open, images decoded only when taken."""

    kind: str = ""
    root: Path
    split: str
    num_classes: int
    class_names: list[str] | None = None

    def __init__(self, ref: DataRef, split: str, root: Path, classes: ClassesFile | None) -> None:
        self.ref = ref
        self.split = split
        self.root = root
        self._classes_file = classes

    # ---- what each kind provides
    @property
    def name(self) -> str:
        return self.root.name

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what take() returns."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def take(self, offset: int = 0, n: int | None = None) -> Dataset:
        """Images [offset, offset+n) of the source's fixed order, decoded now (and only those)."""
        raise NotImplementedError

    @property
    def _decodes(self) -> bool:
        """Whether taking images costs real decoding work (files, or arrays resized through Pillow)."""
        return True

    # ---- shared
    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.root} split={self.split} n={len(self)}>"

    def _range(self, offset: int, n: int | None) -> tuple[int, int]:
        total = len(self)
        stop = total if n is None else offset + n
        if offset < 0 or offset >= total or stop > total or (n is not None and n <= 0):
            what = "the" if n is None else str(n)
            raise DataError(
                f"cannot take {what} images from offset {offset}: {self.root} ({self.split}) has {total} images"
            )
        return offset, stop

    def _common_identity(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "split": self.split,
            "image_shape": list(self.image_shape),
            "classes": self.num_classes,
        }
        if self.class_names is not None:
            doc["class_names"] = list(self.class_names)
        if self._classes_file is not None:
            doc["classes_file"] = self._classes_file.identity()
        return doc

    def batches(
        self, offset: int = 0, n: int | None = None, batch_size: int = 256, *, num_workers: int | None = None
    ) -> Iterator[Dataset]:
        """take() in batches, streamed: decoded in worker processes (in order) when there are many images.

        `num_workers` None picks: none for a few images or undecoded arrays, else one per idle core
        beyond the caller's own (at most MAX_WORKERS).
        """
        start, stop = self._range(offset, n)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be a positive whole number, got {batch_size!r}")
        chunks = [(s, min(batch_size, stop - s)) for s in range(start, stop, batch_size)]
        workers = self._workers(stop - start, len(chunks)) if num_workers is None else max(0, int(num_workers))
        workers = min(workers, len(chunks))
        _ = self.image_shape  # probed once here, not once per worker
        return self._stream(chunks, workers)

    def _stream(self, chunks: list[tuple[int, int]], workers: int) -> Iterator[Dataset]:
        if workers == 0:
            for off, count in chunks:
                yield self.take(off, count)
            return
        loader = torch.utils.data.DataLoader(
            _Chunks(self, chunks),
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            collate_fn=_as_is,
            worker_init_fn=_init_worker,
        )
        for item in loader:
            if isinstance(item, _Failure):
                raise DataError(item.message)
            yield item

    def _workers(self, images: int, chunks: int) -> int:
        if images <= WORKERS_FROM or chunks < 2 or not self._decodes:
            return 0
        from engines.core.device import free_cores  # samples /proc/stat: only when it may matter

        return max(0, min(MAX_WORKERS, chunks, round(free_cores()) - 1))


class _Failure:
    """A DataError met in a worker, carried back as a value so it reaches the user as one line."""

    def __init__(self, message: str) -> None:
        self.message = message


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, source: DataSource, chunks: list[tuple[int, int]]) -> None:
        self.source = source
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Dataset | _Failure:
        off, count = self.chunks[i]
        try:
            return self.source.take(off, count)
        except DataError as exc:
            return _Failure(str(exc))


def _as_is(item: Any) -> Any:
    return item


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding is Pillow's work; torch threads would only oversubscribe


# ---------------------------------------------------------------------------------------------------- IDX


class IdxSource(DataSource):
    """MNIST-format IDX files through load_split: the same tensors, order and identity as before."""

    kind = "idx"

    def __init__(self, ref: DataRef, split: str, root: Path, classes: ClassesFile | None) -> None:
        super().__init__(ref, split, root, classes)
        self._dir = ref.path  # load_split's own argument (None: the shipped MNIST)
        self._files = mnist_files(self._dir)
        self._native = tuple(_check_shapes(self._files))
        count = idx_dims(self._files["test-images" if split == "test" else "train-images"])[0]
        self._len = count if split in ("train", "test") else count // 2
        data_classes = dataset_classes(self._files)
        self.num_classes = data_classes
        if classes is not None:
            if len(classes) < data_classes:
                raise DataError(
                    f"classes file {classes.path} lists {len(classes)} classes but this IDX data has {data_classes}"
                )
            self.num_classes, self.class_names = len(classes), list(classes.lines)

    def __len__(self) -> int:
        return self._len

    @cached_property
    def _identity(self) -> dict[str, Any]:
        return dataset_identity(self._dir)

    @property
    def name(self) -> str:
        return str(self._identity["name"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self._native
        side = self.ref.image_size
        return (self.ref.channels or c, side or h, side or w)

    @property
    def _decodes(self) -> bool:
        return self.image_shape != self._native

    def identity(self) -> dict[str, Any]:
        doc = {**self._identity, "kind": "idx", "split": self.split}
        if self.image_shape != self._native:
            doc["image_shape"], doc["resized_from"] = list(self.image_shape), list(self._native)
        if self._classes_file is not None:
            doc["classes"], doc["class_names"] = self.num_classes, self.class_names
            doc["classes_file"] = self._classes_file.identity()
        return doc

    def take(self, offset: int = 0, n: int | None = None) -> Dataset:
        self._range(offset, n)
        data = load_split(self.split, self._dir).subset(offset, n)
        if not self._decodes:
            return data
        c, side = self.image_shape[0], self.ref.image_size
        images = np.stack([fit_array(a, c, side) for a in to_uint8(data.images)])
        return Dataset(to_float(images), data.labels, data.name, data.indices)


# -------------------------------------------------------------------------------------------------- CIFAR


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


# ------------------------------------------------------------------------------------------ image folders


@dataclass
class _Listing:
    """One folder's images: sorted paths relative to the data root, their stats and labels."""

    files: list[str]
    sizes: list[int]
    mtimes: list[int]
    labels: np.ndarray
    num_classes: int
    class_names: list[str] | None


class FolderSource(DataSource):
    """Image files whose labels come from the listing: class subfolders (imagefolder) or labels.csv (csv)."""

    def __init__(
        self,
        ref: DataRef,
        split: str,
        root: Path,
        classes: ClassesFile | None,
        kind: str,
        folder: Path,
        layout: str,
        listing: _Listing,
    ) -> None:
        super().__init__(ref, split, root, classes)
        self.kind = kind
        self._folder = folder
        self._layout = layout
        self._listing = listing
        self.num_classes, self.class_names = listing.num_classes, listing.class_names
        n = len(listing.files)
        members = np.arange(n) if split in ("train", "test") else paper_split(n)[split == "p2"]
        self._order = members[interleaved_order(listing.labels[members])]

    def __len__(self) -> int:
        return len(self._order)

    @cached_property
    def _probe(self) -> tuple[str, int, int]:
        """The first image of the order and its (width, height): the size the others must share."""
        rel = self._listing.files[int(self._order[0])]
        w, h = image_header_size(self.root / rel, str(self.root / rel))
        return rel, w, h

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, side = self.ref.channels or 3, self.ref.image_size
        if side is not None:
            return (c, side, side)
        _, w, h = self._probe
        return (c, h, w)

    def fingerprint(self) -> str:
        """sha256 of the sorted (path, size, mtime_ns, label) listing: cheap, and it changes with any file."""
        lst = self._listing
        rows = "".join(
            f"{f}\t{s}\t{m}\t{y}\n"
            for f, s, m, y in zip(lst.files, lst.sizes, lst.mtimes, lst.labels.tolist(), strict=True)
        )
        return hashlib.sha256(rows.encode("utf-8")).hexdigest()

    def identity(self) -> dict[str, Any]:
        doc = self._common_identity()
        rel = self._folder.relative_to(self.root).as_posix()
        doc |= {
            "layout": self._layout,
            "folder": rel,
            "images": len(self._listing.files),
            "fingerprint": self.fingerprint(),
            "fingerprint_method": "sha256 of the sorted (relative path, size, mtime_ns, label) listing",
            "order_seed": ORDER_SEED,
        }
        if self._layout == "single":
            doc["serves"] = "every split: one set of images (p1/p2 are its seeded halves)"
        if self.split in ("p1", "p2"):
            doc["paper_split_seed"] = PAPER_SPLIT_SEED
        if self.kind == "csv":
            doc["labels_file"] = (PurePosixPath(rel) / LABELS_CSV).as_posix()
        return doc

    def take(self, offset: int = 0, n: int | None = None) -> Dataset:
        start, stop = self._range(offset, n)
        positions = self._order[start:stop]
        c, side = self.image_shape[0], self.ref.image_size
        files = tuple(self._listing.files[int(p)] for p in positions)
        arrays = []
        for rel in files:
            path = self.root / rel
            a = decode_file(path, str(path), c, side)
            if side is None and a.shape[1:] != self.image_shape[1:]:
                first, w, h = self._probe
                raise DataError(
                    f"images differ in size: {self.root / first} is {w}×{h} but {path} is {a.shape[2]}×{a.shape[1]}; "
                    "pass --image-size N to resize and centre-crop every image to N×N"
                )
            arrays.append(a)
        labels = torch.from_numpy(self._listing.labels[positions].astype(np.int64))
        return Dataset(to_float(np.stack(arrays)), labels, self.split, positions.copy(), files)


def _class_label(classes: ClassesFile, name: str, what: str) -> int:
    label = classes.index(name)
    if label is None:
        raise DataError(
            f"{what} {name!r} is not in classes file {classes.path}: it must list every class, one per line, "
            "in the model's order"
        )
    return label


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise DataError(f"cannot read data folder {folder}: {exc.strerror or exc}") from exc


def _list_class_folders(root: Path, folder: Path, classes: ClassesFile | None) -> _Listing | None:
    """ImageFolder: every image under folder/<class>/ (recursively), classes sorted; None if there are none."""
    names = _subdirs(folder)
    rows: list[tuple[str, int, int, int]] = []
    empty = []
    for ci, name in enumerate(names):
        found = 0
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                if is_image_name(f):
                    path = Path(dirpath) / f
                    st = _stat(path)
                    rows.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, ci))
                    found += 1
        if not found:
            empty.append(name)
    if not rows:
        return None
    if empty:
        more = f" ({len(empty)} empty class folders in all)" if len(empty) > 1 else ""
        raise DataError(
            f"class folder {folder / empty[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)}){more}: "
            "add images or remove it"
        )
    if classes is None:
        table, num, class_names = list(range(len(names))), len(names), names
    else:
        table = [_class_label(classes, name, "class folder") for name in names]
        num, class_names = len(classes), list(classes.lines)
    rows.sort()
    return _Listing(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        np.array([table[r[3]] for r in rows], dtype=np.int64),
        num,
        class_names,
    )


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _list_csv(root: Path, folder: Path, classes: ClassesFile | None) -> _Listing:
    """A flat folder with labels.csv: `file,label` rows (header optional), label an integer or a class name."""
    csv_path = folder / LABELS_CSV
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(fh))]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    rows = [(line, row) for line, row in rows if any(row)]
    if rows:
        head = rows[0][1]
        header_words = {"file", "filename", "path", "image", "label", "class", "target"}
        # a header: not a file, and a header word or a first cell without an extension (a missing file has one)
        named = {head[0].lower(), head[1].lower()} & header_words if len(head) >= 2 else set()
        if len(head) >= 2 and not (folder / head[0]).is_file() and (named or "." not in head[0]):
            rows = rows[1:]
    if not rows:
        raise DataError(f"{csv_path} lists no images: write one `file,label` row per image")
    entries: dict[str, tuple[int, str]] = {}
    for line, row in rows:
        if len(row) < 2 or not row[0] or not row[1]:
            raise DataError(f"{csv_path} line {line}: expected `file,label`, got {','.join(row)!r}")
        name = PurePosixPath(row[0].replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts:
            raise DataError(f"{csv_path} line {line}: {row[0]} is outside {folder}; list files relative to it")
        path = folder / name
        if not path.is_file():
            raise DataError(f"{csv_path} line {line}: listed file {row[0]} not found in {folder}")
        rel = path.relative_to(root).as_posix()
        if rel in entries:
            raise DataError(f"{csv_path} line {line}: {row[0]} is listed twice (first on line {entries[rel][0]})")
        entries[rel] = (line, row[1])
    items = [(rel, line, text) for rel, (line, text) in entries.items()]
    ints = [(line, text) for _, line, text in items if _is_int(text)]
    if classes is not None:
        num, class_names = len(classes), list(classes.lines)
    elif len(ints) == len(items):
        num, class_names = max(int(t) for _, t in ints) + 1, None
    elif ints:
        names = next((line, t) for _, line, t in items if not _is_int(t))
        raise DataError(
            f"{csv_path} mixes integer labels and class names (line {ints[0][0]}: {ints[0][1]}, line {names[0]}: "
            f"{names[1]}): use one or the other"
        )
    else:
        class_names = sorted({text for _, _, text in items})
        num = len(class_names)
    index = {name: i for i, name in enumerate(class_names)} if classes is None and class_names else {}
    labels: list[int] = []
    for rel, line, text in items:
        label = classes.index(text) if classes is not None else index.get(text)
        if label is None and _is_int(text):
            label = int(text)
            if not 0 <= label < num:
                raise DataError(
                    f"{csv_path} line {line}: label {text} for {rel} is outside 0..{num - 1} ({num} classes)"
                )
        if label is None:
            raise DataError(
                f"{csv_path} line {line}: unknown class {text!r} for {rel} (not in classes file {classes.path})"
            )
        labels.append(label)
    order = sorted(range(len(items)), key=lambda i: items[i][0])
    files = [items[i][0] for i in order]
    stats = [_stat(root / f) for f in files]
    return _Listing(
        files,
        [s.st_size for s in stats],
        [s.st_mtime_ns for s in stats],
        np.array([labels[i] for i in order], dtype=np.int64),
        num,
        class_names,
    )


# -------------------------------------------------------------------------------------------- detection


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


def _looks_idx(root: Path) -> bool:
    """Whether any IDX-looking file sits where mnist_files looks (then its errors are the ones to show)."""
    for folder in _candidates(root):
        try:
            if folder.is_dir() and any(
                any(key in e.name.lower() for key in ("ubyte", "idx1", "idx3")) and e.is_file()
                for e in os.scandir(folder)
            ):
                return True
        except OSError:
            continue
    return False


def _nothing_found(root: Path) -> DataError:
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except OSError:
        entries = []
    loose = sum(1 for e in entries if e.is_file() and is_image_name(e.name))
    archives = [e.name for e in entries if e.name.lower().endswith((".tar.gz", ".tgz", ".tar", ".zip"))]
    hint = ""
    if loose:
        hint = f" It holds {loose} images but no {LABELS_CSV}: add one (file,label per line) or sort them into class folders."
    elif archives:
        hint = f" Extract {archives[0]} first."
    return DataError(f"nothing recognisable in {root}: looked for {_LOOKED_FOR}.{hint}")


def _open_folder(ref: DataRef, split: str, root: Path, classes: ClassesFile | None) -> FolderSource:
    subdirs = _subdirs(root)
    tests = [d for d in TEST_DIRS if d in subdirs]
    split_layout = ("train" in subdirs and bool(tests)) or (
        bool(subdirs) and set(subdirs) <= set(SPLIT_DIRS) and not (root / LABELS_CSV).is_file()
    )
    if split_layout:
        if split == "test":
            if not tests:
                raise DataError(f"{root} has no test/, val/ or validation/ folder for split test (it has train/)")
            folder = root / tests[0]
        else:
            if "train" not in subdirs:
                raise DataError(f"{root} has no train/ folder for split {split} (it has {', '.join(subdirs)}/)")
            folder = root / "train"
        layout = "split"
    else:
        folder, layout = root, "single"
    if (folder / LABELS_CSV).is_file():
        return FolderSource(ref, split, root, classes, "csv", folder, layout, _list_csv(root, folder, classes))
    listing = _list_class_folders(root, folder, classes)
    if listing is None:
        if layout == "split":
            raise DataError(f"nothing recognisable in {folder}: expected class subfolders of images or a {LABELS_CSV}")
        raise _nothing_found(root)
    return FolderSource(ref, split, root, classes, "imagefolder", folder, layout, listing)


def open_data(ref: DataRef, split: str = "test") -> DataSource:
    """The data `ref` names, opened for `split`: its kind detected from the folder, every listing check done."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    classes = ClassesFile(ref.classes_file) if ref.classes_file is not None else None
    if ref.path is None:
        return IdxSource(ref, split, default_mnist_dir(), classes)
    root = Path(ref.path).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is a file: pass the folder that holds the data")
    cifar = _find_cifar(root)
    if cifar is not None:
        return CifarSource(ref, split, cifar[0], classes, hundred=cifar[1])
    _refuse_pickled_cifar(root)
    if _looks_idx(root):
        return IdxSource(ref, split, root, classes)
    return _open_folder(ref, split, root, classes)


def describe(source: DataSource) -> str:
    """One line for logs: kind, size, classes and image shape."""
    c, h, w = source.image_shape
    return f"{source.name} ({source.kind}, {source.split}): {len(source)} images, {source.num_classes} classes, {c}×{h}×{w}"


__all__ = [
    "KINDS",
    "ORDER_SEED",
    "ClassesFile",
    "CifarSource",
    "DataRef",
    "DataSource",
    "FolderSource",
    "IdxSource",
    "describe",
    "interleaved_order",
    "open_data",
]
