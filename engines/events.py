"""Progress events: plain data that the CLI (Rich) and the TUI (Textual) both render."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """A job's progress: `done` of `total` units of `task`, plus free-form figures."""

    task: str
    done: float
    total: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    message: str = ""


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


def no_progress(_: Progress) -> None:
    """Default sink for callers that do not watch progress."""


def never_cancel() -> bool:
    return False
