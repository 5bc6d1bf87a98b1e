"""DataSource: the one interface every kind of data shares, with take() streamed in batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engines.core.data import Dataset
from engines.core.errors import DataError, InputError
from engines.core.sources.classes_file import ClassesFile
from engines.core.sources.ref import DataRef
from engines.core.sources.stream import _as_is, _Chunks, _Failure, _init_worker

WORKERS_FROM = 256  # batches() decodes in worker processes only for more images than this
MAX_WORKERS = 8


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


def describe(source: DataSource) -> str:
    """One line for logs: kind, size, classes and image shape."""
    c, h, w = source.image_shape
    return f"{source.name} ({source.kind}, {source.split}): {len(source)} images, {source.num_classes} classes, {c}×{h}×{w}"
