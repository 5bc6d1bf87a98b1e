"""IdxSource: MNIST-format IDX files, wrapping engines.core.data.load_split."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from engines.core.data import (
    Dataset,
    _check_shapes,
    dataset_classes,
    dataset_identity,
    idx_dims,
    load_split,
    mnist_files,
)
from engines.core.errors import DataError
from engines.core.image_files import fit_array, to_float, to_uint8
from engines.core.sources.base import DataSource
from engines.core.sources.classes_file import ClassesFile
from engines.core.sources.ref import DataRef


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
