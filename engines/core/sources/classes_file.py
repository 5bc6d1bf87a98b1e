"""A classes file: one class per line in the model's order, and the label it gives a class name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.errors import DataError
from engines.core.io import file_sha256


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


def _class_label(classes: ClassesFile, name: str, what: str) -> int:
    label = classes.index(name)
    if label is None:
        raise DataError(
            f"{what} {name!r} is not in classes file {classes.path}: it must list every class, one per line, "
            "in the model's order"
        )
    return label
