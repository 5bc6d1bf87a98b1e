"""FolderSource: image files whose labels come from a listing, taken in the seeded interleaved order."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from engines.core.data import PAPER_SPLIT_SEED, Dataset, paper_split
from engines.core.errors import DataError
from engines.core.image_files import decode_file, image_header_size, to_float
from engines.core.sources.base import DataSource
from engines.core.sources.classes_file import ClassesFile
from engines.core.sources.listings import LABELS_CSV, _Listing
from engines.core.sources.order import ORDER_SEED, interleaved_order
from engines.core.sources.ref import DataRef


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
