"""The runs a runs root holds, one line each: what the TUI's Runs screen lists and refreshes every few seconds.

Cheap on purpose: per run folder it reads run.json, one small result file and the names of the attack's
chunk files; per checkpoint its JSON sidecar. No array is loaded. One bad folder becomes a "damaged"
entry saying why; it never hides the others.

A run.json that says "running" is believed only while a live process holds the folder's lock: a killed
process leaves "running" behind, and that run is "interrupted" (it can be resumed).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.attack.chunks import covered_images
from engines.attack.results import SUMMARY_FILE
from engines.core.errors import InputError
from engines.core.io import read_json
from engines.core.runs import RUN_FILE, lock_is_live, read_run_record

KINDS = ("attack", "transfer", "units", "bounds", "reproduce", "robustness", "train")
STATUSES = ("running", "interrupted", "finished", "damaged")
MODELS_FOLDER, CHECKPOINT_SUFFIX = "models", ".safetensors"
_MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")
_REPRODUCE_PARTS = ("table1.json", "table2/matrix.json", "table3.json", "table4/matrix.json", "table5.json")
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, InputError)


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


def list_runs(root: Path) -> list[RunEntry]:
    """Every run folder directly under `root` (those holding run.json) and every checkpoint in root/models,
    newest first; a missing root lists nothing."""
    root = Path(root)
    try:
        children = list(root.iterdir())
    except OSError:
        return []
    entries = [read_run_entry(p) for p in children if _holds_run(p)] + list_checkpoints(root / MODELS_FOLDER)
    return sorted(entries, key=lambda e: (e.started, e.path.name), reverse=True)


def _holds_run(folder: Path) -> bool:
    """A folder with run.json; one this user cannot enter is skipped, never the whole listing."""
    try:
        return folder.is_dir() and (folder / RUN_FILE).is_file()
    except OSError:
        return False


def list_checkpoints(folder: Path) -> list[RunEntry]:
    """A "train" entry per `<id>.safetensors` with its `<id>.json` sidecar (trainings make no run folder)."""
    try:
        paths = [
            p for p in Path(folder).iterdir() if p.suffix == CHECKPOINT_SUFFIX and p.with_suffix(".json").is_file()
        ]
    except OSError:
        return []
    return [checkpoint_entry(p) for p in paths]


def checkpoint_entry(path: Path) -> RunEntry:
    """A checkpoint as a finished "train" run, read from its sidecar only."""
    sidecar = path.with_suffix(".json")
    started = _mtime(sidecar)
    try:
        meta = read_json(sidecar)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        name = str(data.get("name") or "mnist").lower()
        seconds = (meta.get("training") or {}).get("seconds")
        error = (meta.get("metrics") or {}).get("test_error")
        return RunEntry(
            path=path,
            kind="train",
            model=str(meta.get("id") or path.stem),
            data=f"{name} {meta.get('train_split') or ''}".strip(),
            status="finished",
            started=started,
            seconds=float(seconds) if _number(seconds) else None,
            done=None,
            total=None,
            figures=f"test error {error:.2f}%" if _number(error) else "",
        )
    except _READ_ERRORS as exc:
        return _damaged(path, "train", started, f"{sidecar.name} is damaged ({exc})", model=path.stem)


def read_run_entry(folder: Path) -> RunEntry:
    """One run folder as an entry; a missing or damaged run.json is a "damaged" entry, never an exception
    (a listing never fails for one folder: whatever goes wrong reading it is its entry's error)."""
    folder = Path(folder)
    try:
        return _run_entry(folder)
    except Exception as exc:  # a run.json of valid JSON but odd types, a folder removed meanwhile …
        return _damaged(folder, _guess_kind(folder), _mtime(folder), f"cannot read {folder.name}: {exc}")


def _run_entry(folder: Path) -> RunEntry:
    mtime = _mtime(folder)
    try:
        record = read_run_record(folder)
    except InputError as exc:
        return _damaged(folder, _guess_kind(folder), mtime, str(exc))
    kind = str(record.get("kind") or _guess_kind(folder))
    request = record["request"]
    started = record.get("started")
    seconds = record.get("seconds")
    status = run_status(folder, record)
    done = total = None
    figures = ""
    try:
        if kind == "attack":
            done, total, figures = _attack_figures(folder, request, status)
        else:
            figures = _FIGURES.get(kind, _no_figures)(folder, request)
    except _READ_ERRORS:
        figures = ""  # a result file being replaced, or damaged: the run's line stays
    return RunEntry(
        path=folder,
        kind=kind,
        model=_model_name(kind, record),
        data=_data_name(kind, record),
        status=status,
        started=float(started) if _number(started) else mtime,
        seconds=float(seconds) if _number(seconds) else None,
        done=done,
        total=total,
        figures=figures,
        error="" if status != "damaged" else f"{RUN_FILE} has an unknown status {record.get('status')!r}",
    )


def run_status(folder: Path, record: dict[str, Any]) -> str:
    """running | interrupted | finished | damaged, from run.json's status and the folder's lock."""
    said = record.get("status")
    if said == "running":
        if lock_is_live(folder):
            return "running"
        try:  # the writer may have finished between our two looks: it marks done, then drops the lock
            said = read_run_record(folder).get("status")
        except InputError:
            return "interrupted"
        return {"done": "finished", "running": "interrupted"}.get(str(said), "interrupted")
    if said == "done":
        return "finished"
    if said == "interrupted":
        return "interrupted"
    return "damaged"


def _attack_figures(folder: Path, request: dict[str, Any], status: str) -> tuple[int, int, str]:
    total = int(request["n"])
    if status == "finished":
        summary = read_json(folder / SUMMARY_FILE)
        parts = [f"success {100 * float(summary['success_rate']):.1f}%"]
        if _number(summary.get("mean_distortion")):
            parts.append(f"distortion {float(summary['mean_distortion']):.4f}")
        return total, total, " · ".join(parts)
    return covered_images(folder, total), total, ""


def _transfer_figures(folder: Path, _: dict[str, Any]) -> str:
    matrix = read_json(folder / "matrix.json")
    rows, columns, values = matrix["rows"], matrix["columns"], matrix["values"]
    off = [
        float(v)
        for row, line in zip(rows, values, strict=True)
        if row.get("kind") == "adversarial"
        for column, v in zip(columns, line, strict=True)
        if column != row.get("source") and _number(v)
    ]
    text = f"{len(rows)} × {len(columns)} matrix"
    return text + (f" · off-diagonal {sum(off) / len(off):.1f}%" if off else "")


def _bounds_figures(folder: Path, _: dict[str, Any]) -> str:
    bounds = read_json(folder / "bounds.json")
    text = f"{len(bounds['layers'])} layers"
    product = bounds.get("product_table")
    return text + (f" · product {_short_number(float(product))}" if _number(product) else "")


def _units_figures(_: Path, request: dict[str, Any]) -> str:
    return f"layer {request['layer']}"  # units.json holds every direction's top-k: too large to poll


def _robustness_figures(folder: Path, _: dict[str, Any]) -> str:
    rows = read_json(folder / "robustness.json")["rows"]
    if not rows:
        return ""
    parts = [f"{len(rows)} model{'s' if len(rows) > 1 else ''}"]
    for key, label, digits in (("distortion", "distortion", 4), ("certified", "certified", 4)):
        vals = [float(r[key]) for r in rows if _number(r.get(key))]
        if vals:
            parts.append(f"{label} {sum(vals) / len(vals):.{digits}f}")
    return " · ".join(parts)


def _reproduce_figures(folder: Path, _: dict[str, Any]) -> str:
    if (folder / "tables.json").is_file():
        return "6 of 6 tables · report.md" if (folder / "report.md").is_file() else "6 of 6 tables"
    done = sum((folder / part).is_file() for part in _REPRODUCE_PARTS) + (folder / "section42.json").is_file()
    return f"{done} of 6 tables"


def _no_figures(_: Path, __: dict[str, Any]) -> str:
    return ""


_FIGURES = {
    "transfer": _transfer_figures,
    "bounds": _bounds_figures,
    "units": _units_figures,
    "robustness": _robustness_figures,
    "reproduce": _reproduce_figures,
}


def _model_name(kind: str, record: dict[str, Any]) -> str:
    """A short name: the model's id as loaded (run.json's model record), else the request's model."""
    request = record["request"]
    if kind == "reproduce":
        return "paper zoo"
    if kind in ("transfer", "robustness"):
        refs = (request.get("sources") or request.get("targets")) if kind == "transfer" else request.get("models")
        names = [_ref_name(r) for r in refs or []]
        return ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    loaded = record.get("model")
    if isinstance(loaded, dict) and (loaded.get("id") or loaded.get("name")):
        return _short(str(loaded.get("id") or loaded.get("name")))
    return _ref_name(request.get("model"))


def _ref_name(ref: Any) -> str:
    if isinstance(ref, dict):
        ref = ref.get("name") or ref.get("factory") or ""
    return _short(str(ref or "?"))


def _short(name: str) -> str:
    """A checkpoint path shows as its file's stem; zoo ids and torchvision names as they are."""
    return Path(name).stem if "/" in name or name.endswith(_MODEL_SUFFIXES) else name


def _data_name(kind: str, record: dict[str, Any]) -> str:
    """`<data> <split>`: the data folder's name when the request names one, else the recorded data set's."""
    request = record["request"]
    if kind == "bounds":
        shape = request.get("input_shape")
        return f"input {'×'.join(str(v) for v in shape)}" if isinstance(shape, list) else ""
    folder = request.get("data_dir")
    recorded = record.get("data") if isinstance(record.get("data"), dict) else {}
    name = Path(str(folder)).name if folder else str(recorded.get("name") or "mnist").lower()
    split = request.get("split") if kind != "reproduce" else ""
    return f"{name} {split or ''}".strip()


def _guess_kind(folder: Path) -> str:
    """The kind a folder's name starts with (`attack-…`), for a run.json that cannot tell."""
    head = folder.name.split("-", 1)[0]
    return head if head in KINDS else "?"


def _damaged(path: Path, kind: str, started: float, error: str, model: str = "") -> RunEntry:
    return RunEntry(path, kind, model, "", "damaged", started, None, None, None, "", error)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short_number(value: float) -> str:
    """2300 → 2.3e3; plain below 1000 and above 0.01."""
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"
