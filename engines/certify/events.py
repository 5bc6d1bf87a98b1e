"""The certify operation's milestone: a chunk of images has both ends of its bracket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from engines.core.events import Event


@dataclass(frozen=True, kw_only=True)
class CertifiedChunk(Event):
    """Images [start, stop) of the run are certified; `rows` are their certify.json records."""

    milestone: ClassVar[bool] = True
    start: int
    stop: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        lows = [r["lower"] for r in self.rows if r.get("lower") is not None]
        mean = f", mean lower bound {sum(lows) / len(lows):.4f}" if lows else ""
        return f"images {self.start}–{self.stop} certified{mean}"
