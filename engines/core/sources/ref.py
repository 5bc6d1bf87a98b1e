"""DataRef: what a request records about its data, and the kinds of data it may name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from engines.core.errors import InputError

KINDS = ("idx", "imagefolder", "csv", "cifar10", "cifar100")


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
