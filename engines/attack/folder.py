"""One reader of an attack run folder, for everything that reads one: resume, follow, export, the run list.

What the folder holds is said in `engines.attack.operation`; here is how to read it: the run record and its format
version (chunks carry a checksum since format 2), the chunk files that can be trusted, the samples of a
finished run, its summary. The one choice readers used to make each their own way lives here too: a finished
run's samples hold every image (with its index and label), otherwise the verified chunks are the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.attack.chunks import SAMPLES_FILE, covered_images, load_samples, read_chunk, valid_chunks
from engines.attack.results import AttackResult, read_summary
from engines.core.errors import InputError
from engines.core.runs import read_run_record, run_status

KIND = "attack"
CHECKSUM_FORMAT = 2  # the run format from which every chunk carries the sha256 of its arrays


@dataclass(frozen=True)
class AttackFolder:
    """An attack run folder and its run.json record, read once."""

    path: Path
    record: dict[str, Any]

    @classmethod
    def read(cls, folder: str | Path) -> AttackFolder:
        """The folder's record, checked (`read_run_record`); a run of another kind is an InputError."""
        folder = Path(folder)
        record = read_run_record(folder)
        if record.get("kind", KIND) != KIND:
            raise InputError(f"{folder} holds a {record.get('kind')} run, not an attack run")
        return cls(folder, record)

    @property
    def request(self) -> dict[str, Any]:
        return self.record["request"]

    @property
    def format(self) -> int:
        """run.json's format version (records from before versions existed are format 1)."""
        return int(self.record.get("format", 1))

    @property
    def checksummed(self) -> bool:
        return self.format >= CHECKSUM_FORMAT

    @property
    def n(self) -> int:
        """Images the run attacks."""
        try:
            return int(self.request["n"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{self.path}: run.json's request says no number of images") from None

    def status(self) -> str:
        """running | interrupted | finished | damaged (run.json's word, checked against the folder's lock)."""
        return run_status(self.path, self.record)

    def verified_chunks(
        self, n: int | None = None, image_shape: tuple[int, ...] | None = None
    ) -> list[tuple[int, int]]:
        """The chunks of images [0, n) (default: the run's) that pass every check, checksums included where the
        run's format has them."""
        return valid_chunks(self.path, self.n if n is None else n, image_shape, self.checksummed)

    def chunk(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        return read_chunk(self.path, start, stop)

    def covered_images(self) -> int:
        """Images with a chunk file, by the files' names only: cheap enough to poll."""
        return covered_images(self.path, self.n)

    def has_samples(self) -> bool:
        return (self.path / SAMPLES_FILE).is_file()

    def samples(self) -> dict[str, torch.Tensor]:
        """samples.safetensors; damaged or missing: an InputError."""
        return load_samples(self.path)

    def finished_samples(self) -> dict[str, torch.Tensor] | None:
        """A finished run's samples (every image with its index and label); None where the run is unfinished or
        has no samples file, and then its verified chunks are the run. A damaged file: an InputError."""
        if self.status() != "finished" or not self.has_samples():
            return None
        return self.samples()

    def summary(self) -> AttackResult | None:
        """summary.json as the run's result; None when missing or damaged."""
        return read_summary(self.path)
