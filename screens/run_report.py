"""A finished run that has no screen of its own (reproduce, robustness, units): its report and its figures.

Each kind declares the files its report shows (`engines.kinds.report_files`): reproduce runs show report.md,
others their result JSON (long lists shortened); `v` views the
run's PNG figures one by one (←/→), enlarged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

LIST_KEEP = 8


def shortened(value: Any) -> Any:
    """The JSON with every list cut to its first items (units.json holds thousands of scores)."""
    if isinstance(value, dict):
        return {k: shortened(v) for k, v in value.items()}
    if isinstance(value, list):
        head = [shortened(v) for v in value[:LIST_KEEP]]
        return head + [f"… {len(value) - LIST_KEEP} more"] if len(value) > LIST_KEEP else head
    return value


def report_text(folder: Path, kind: str) -> str:
    """Markdown for the window: the first of the files its kind reports that the folder holds, Markdown as written,
    JSON shortened."""
    from engines.kinds import report_files

    for name in report_files(kind):
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if name.endswith(".md"):
                return text
            doc = shortened(json.loads(text))
        except (OSError, ValueError) as exc:
            return f"**{path}** cannot be read ({type(exc).__name__})"
        return f"# {kind} · {folder.name}\n\n`{name}`\n\n```json\n{json.dumps(doc, indent=2)[:20000]}\n```"
    return f"# {kind} · {folder.name}\n\nno result file in this folder"


class RunReport(ModalScreen):
    """Esc closes; v shows the figures."""

    DEFAULT_CSS = """
    RunReport { align: center middle; }
    RunReport #frame { width: 95%; height: 90%; border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("v", "figures", "Figures")]

    def __init__(self, folder: Path, kind: str) -> None:
        super().__init__()
        self.folder, self.kind = Path(folder), kind
        self.figures = sorted(self.folder.rglob("*.png"))[:200]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="frame") as frame:
            frame.border_title = f"{self.kind} · {self.folder.name} · {len(self.figures)} figures (v)"
            yield Markdown(report_text(self.folder, self.kind), id="report")
        yield Footer(compact=True)

    def action_figures(self) -> None:
        if not self.figures:
            self.notify("this run has no figures")
            return
        import numpy as np
        from PIL import Image

        from screens.image_view import ImageView

        images = [np.asarray(Image.open(p).convert("RGB")) for p in self.figures[:40]]
        names = [str(p.relative_to(self.folder)) for p in self.figures[:40]]
        self.app.push_screen(ImageView(images, names, names=names))
