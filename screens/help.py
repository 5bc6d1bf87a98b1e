"""The help screen (`?` or F1): what a screen shows, in the paper's terms, and every key it answers to."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

ABOUT = {
    "models": (
        "The paper's model zoo (§2; Table 1's networks, Table 3's m1, m1-prime and m2 trained on the halves P1 "
        "and P2). Errors are % on the model's own training split and on the test set; λ is the weight decay. "
        "The active model is the one every other screen uses."
    ),
    "gallery": (
        "§3 (Figs. 1–2): for one layer, the top-8 test images of each unit (natural basis) beside those of "
        "random directions. Purity is the share of the most common label among the 8. The verdict compares "
        "the two distributions (Mann–Whitney U, Cliff's δ, bootstrap intervals): the paper's claim is that "
        "single units are no more interpretable than random directions."
    ),
    "attack": (
        "§4.1: the box-constrained L-BFGS attack, minimising c·|r|² + loss(x + r, target) with x + r in "
        "[0, 1]. Each row: original | difference r (blue −, white 0, red +, full colour at the ±scale printed "
        "under it) | adversarial; z / Z zoom. Distortion is Table 1's "
        "sqrt(Σ(x′ − x)² / n); success is the share of images sent to their target."
    ),
    "transfer": (
        "§4.2, Tables 2 and 4: rows are example sets (one model's adversarial examples, amplified ones, "
        "Gaussian noise of the stated rms), columns are target models; a cell is the % of the row's examples "
        "that the column's model misclassifies. Enter opens a cell's examples. To compute one (s), sources and "
        "targets take comma-separated models; NAME=FILE gives a torchvision or factory model its weights "
        "(resnet18=~/w/resnet18.pth), as `blindspot transfer --weights NAME=FILE` does."
    ),
    "bounds": (
        "§4.3, Table 5: each layer's lower and upper frame bound (the smallest and largest singular value of "
        "the layer as a linear operator; the paper's Fourier formula for convolutions). The product of the "
        "upper bounds bounds how far any perturbation can move the network's output: large values allow "
        "instability, they do not prove it."
    ),
    "runs": (
        "Every run folder under the runs root, newest first: attacks (§4.1), transfer matrices (§4.2), units "
        "(§3), frame bounds (§4.3), reproduce and robustness runs, trained checkpoints. Status: running (a live "
        "process holds the folder's lock, in this app or elsewhere: a CLI job, torchrun ranks), interrupted "
        "(stopped before the end; an attack resumes with R), finished, damaged. A running attack shows the images "
        "finished over all its processes; Enter follows it live, read-only."
    ),
}
EVERYWHERE = (
    ("1 … 6", "switch screen"),
    ("? / F1", "this help"),
    ("Ctrl+P", "command palette: every action of this screen"),
    ("Esc", "leave a text field; close a window"),
    ("x", "cancel this screen's job (finished work is kept)"),
    ("j", "jobs panel: every running job, whichever screen started it (⚙ in the top line counts them)"),
    ("q", "quit"),
)


def screen_keys(screen: Screen) -> list[tuple[str, str]]:
    """(key, what it does) for the screen's own bindings, hidden ones included, each action once."""
    keys: list[tuple[str, str]] = []
    seen: set[str] = set()
    for cls in type(screen).__mro__:
        if cls.__module__.startswith("textual"):
            continue  # Textual's own (copy selected text …), not the workbench's
        for binding in cls.__dict__.get("BINDINGS", []):
            if not isinstance(binding, Binding) or not binding.description or binding.action in seen:
                continue
            if binding.action.startswith("app.") or binding.key in ("x", "q", "j", "escape", "question_mark", "f1"):
                continue  # listed under "everywhere"
            seen.add(binding.action)
            keys.append((binding.key_display or binding.key, binding.description))
    return keys


class HelpScreen(ModalScreen):
    """Help for one screen; Esc, ? or F1 close it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help { width: 90%; max-width: 100; height: auto; max-height: 90%; border: round $accent;
                       background: $surface; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("f1", "dismiss", "Close", show=False),
    ]

    def __init__(self, mode: str, label: str, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.mode, self.label, self.keys = mode, label, keys

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help") as box:
            box.border_title = f"help · {self.label}"
            yield Static(Text(ABOUT.get(self.mode, "")), id="about")
            yield Static(self._table("keys on this screen", self.keys), id="keys")
            yield Static(self._table("everywhere", list(EVERYWHERE)), id="everywhere")
        yield Footer(compact=True)

    @staticmethod
    def _table(title: str, rows: list[tuple[str, str]]) -> Table:
        table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, what in rows:
            table.add_row(key, what)
        return table
