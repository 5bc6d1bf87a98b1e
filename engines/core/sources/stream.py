"""The worker side of DataSource.batches(): chunks taken in DataLoader workers, failures carried back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from engines.core.data import Dataset
from engines.core.errors import DataError

if TYPE_CHECKING:
    from engines.core.sources.base import DataSource


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
