"""The runs a runs root holds, one line each: what the TUI's Runs screen lists and refreshes every few seconds.

Generic on purpose: core knows no experiment. Each experiment declares a `RunKind` (its report files, how to
describe one of its folders in a line, names that differ from the usual ones) beside its own file constants;
`engines.kinds` collects them and passes them here.

Cheap on purpose: per run folder it reads run.json and what its kind's `describe` reads (one small result
file, the names of the attack's chunk files); no array is loaded. One bad folder becomes a "damaged" entry
saying why; it never hides the others.

A run.json that says "running" is believed only while a live process holds the folder's lock: a killed
process leaves "running" behind, and that run is "interrupted" (it can be resumed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from engines.core.errors import InputError
from engines.core.runs import RUN_FILE, read_run_record, run_status

_MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, InputError)


@dataclass(frozen=True)
class RunEntry:
    """One run (or checkpoint) as a list shows it: what, on what, how far, and its key figures."""

    path: Path
    kind: str
    model: str
    data: str
    status: str
    started: float
    seconds: float | None
    done: int | None
    total: int | None
    figures: str
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"path": str(self.path)}


class Figures(NamedTuple):
    """What a kind says of one of its folders: the figures column, and images done of total where it counts them."""

    text: str = ""
    done: int | None = None
    total: int | None = None


def no_figures(_: Path, __: dict[str, Any], ___: str) -> Figures:
    return Figures()


def recorded_model(record: dict[str, Any]) -> str:
    """A short name: the model's id as loaded (run.json's model record), else the request's model."""
    loaded = record.get("model")
    if isinstance(loaded, dict) and (loaded.get("id") or loaded.get("name")):
        return short_name(str(loaded.get("id") or loaded.get("name")))
    return ref_name(record["request"].get("model"))


def recorded_data(record: dict[str, Any], split: bool = True) -> str:
    """`<data> <split>`: the data folder's name when the request names one, else the recorded data set's."""
    request = record["request"]
    folder = request.get("data_dir")
    recorded = record.get("data")
    recorded_name = recorded.get("name") if isinstance(recorded, dict) else None
    name = Path(str(folder)).name if folder else str(recorded_name or "mnist").lower()
    return f"{name} {(request.get('split') if split else '') or ''}".strip()


def model_list(refs: Any) -> str:
    """Up to three model names and how many more (runs over several models)."""
    names = [ref_name(r) for r in refs or []]
    return ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")


def ref_name(ref: Any) -> str:
    if isinstance(ref, dict):
        ref = ref.get("name") or ref.get("factory") or ""
    return short_name(str(ref or "?"))


def short_name(name: str) -> str:
    """A checkpoint path shows as its file's stem; zoo ids and torchvision names as they are."""
    return Path(name).stem if "/" in name or name.endswith(_MODEL_SUFFIXES) else name


@dataclass(frozen=True)
class RunKind:
    """What the run list and the report window know of one experiment's runs, declared by the experiment.

    `describe(folder, record, status)` gives the figures column (it may raise any of READ_ERRORS on a file being
    replaced or damaged: the line stays, without figures); `report_files` are the files the report window shows,
    the first one present; `model`/`data` name what the run ran on; `entries(root)` lists runs of this kind that
    have no run folder (trainings leave checkpoints)."""

    name: str
    report_files: tuple[str, ...] = ()
    describe: Callable[[Path, dict[str, Any], str], Figures] = no_figures
    model: Callable[[dict[str, Any]], str] = recorded_model
    data: Callable[[dict[str, Any]], str] = recorded_data
    entries: Callable[[Path], list[RunEntry]] | None = None


Kinds = Sequence[RunKind]


def list_runs(root: Path, kinds: Kinds) -> list[RunEntry]:
    """Every run folder directly under `root` (those holding run.json) and every run a kind lists without one,
    newest first; a missing root lists nothing."""
    root = Path(root)
    try:
        children = list(root.iterdir())
    except OSError:
        return []
    entries = [read_run_entry(p, kinds) for p in children if _holds_run(p)]
    for kind in kinds:
        if kind.entries is not None:
            entries += kind.entries(root)
    return sorted(entries, key=lambda e: (e.started, e.path.name), reverse=True)


def _holds_run(folder: Path) -> bool:
    """A folder with run.json; one this user cannot enter is skipped, never the whole listing."""
    try:
        return folder.is_dir() and (folder / RUN_FILE).is_file()
    except OSError:
        return False


def read_run_entry(folder: Path, kinds: Kinds) -> RunEntry:
    """One run folder as an entry; a missing or damaged run.json is a "damaged" entry, never an exception
    (a listing never fails for one folder: whatever goes wrong reading it is its entry's error)."""
    folder = Path(folder)
    try:
        return _run_entry(folder, kinds)
    except Exception as exc:  # a run.json of valid JSON but odd types, a folder removed meanwhile …
        return damaged_entry(folder, guess_kind(folder, kinds), mtime(folder), f"cannot read {folder.name}: {exc}")


def _run_entry(folder: Path, kinds: Kinds) -> RunEntry:
    when = mtime(folder)
    try:
        record = read_run_record(folder)
    except InputError as exc:
        return damaged_entry(folder, guess_kind(folder, kinds), when, str(exc))
    name = str(record.get("kind") or guess_kind(folder, kinds))
    kind = find_kind(name, kinds) or RunKind(name)  # a kind this blindspot does not know: listed, no figures
    started = record.get("started")
    seconds = record.get("seconds")
    status = run_status(folder, record)
    try:
        figures = kind.describe(folder, record, status)
    except READ_ERRORS:
        figures = Figures()  # a result file being replaced, or damaged: the run's line stays
    return RunEntry(
        path=folder,
        kind=name,
        model=kind.model(record),
        data=kind.data(record),
        status=status,
        started=float(started) if is_number(started) else when,
        seconds=float(seconds) if is_number(seconds) else None,
        done=figures.done,
        total=figures.total,
        figures=figures.text,
        error="" if status != "damaged" else f"{RUN_FILE} has an unknown status {record.get('status')!r}",
    )


def find_kind(name: str, kinds: Kinds) -> RunKind | None:
    return next((k for k in kinds if k.name == name), None)


def guess_kind(folder: Path, kinds: Kinds) -> str:
    """The kind a folder's name starts with (`attack-…`), for a run.json that cannot tell."""
    head = folder.name.split("-", 1)[0]
    return head if find_kind(head, kinds) is not None else "?"


def damaged_entry(path: Path, kind: str, started: float, error: str, model: str = "") -> RunEntry:
    return RunEntry(path, kind, model, "", "damaged", started, None, None, None, "", error)


def mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool): what a figure can be printed from."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def short_number(value: float) -> str:
    """2300 → 2.3e3; plain below 1000 and above 0.01."""
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"
