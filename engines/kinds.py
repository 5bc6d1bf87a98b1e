"""Every run kind this blindspot knows, from the experiments that declare them: what the Runs screen, the report
window and the Attack screen's resume ask of the runs root.

Above every experiment package (core knows none of them; each experiment knows only its own kind). A new
experiment adds its `RunKind` here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from engines.attack.kind import ATTACK
from engines.bounds.kind import BOUNDS
from engines.certify.kind import CERTIFY
from engines.core import run_index
from engines.core.run_index import RunEntry, RunKind, find_kind
from engines.core.runs import RUN_FILE
from engines.reproduce.kind import REPRODUCE
from engines.robustness.kind import ROBUSTNESS
from engines.train.kind import TRAIN
from engines.transfer.kind import TRANSFER
from engines.units.kind import UNITS

RUN_KINDS: tuple[RunKind, ...] = (ATTACK, TRANSFER, UNITS, BOUNDS, REPRODUCE, ROBUSTNESS, CERTIFY, TRAIN)


def list_runs(root: Path) -> list[RunEntry]:
    """Every run under the runs root, newest first (see `engines.core.run_index.list_runs`)."""
    return run_index.list_runs(root, RUN_KINDS)


def read_run_entry(folder: Path) -> RunEntry:
    """One run folder as the run list shows it; a damaged one is a "damaged" entry, never an exception."""
    return run_index.read_run_entry(folder, RUN_KINDS)


def report_files(kind: str) -> tuple[str, ...]:
    """The files a run's report window shows, the first one present: its kind's, then run.json. A kind this
    blindspot does not know: any kind's report file."""
    known = find_kind(kind, RUN_KINDS)
    kinds = (known,) if known is not None else RUN_KINDS
    names = [name for k in kinds for name in k.report_files]
    return (*dict.fromkeys(names), RUN_FILE)
