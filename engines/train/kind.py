"""The train run kind: trainings make no run folder, so the run list shows each checkpoint of the runs root's
models folder (`<id>.safetensors` with its `<id>.json` sidecar) as a finished "train" run."""

from __future__ import annotations

from pathlib import Path

from engines.core.io import read_json
from engines.core.run_index import READ_ERRORS, RunEntry, RunKind, damaged_entry, is_number, mtime
from engines.train.operation import MODELS_SUBFOLDER

KIND, CHECKPOINT_SUFFIX = "train", ".safetensors"


def checkpoint_entries(root: Path) -> list[RunEntry]:
    """An entry per checkpoint with its sidecar in `root`/models (none when the folder is missing)."""
    try:
        paths = [
            p
            for p in (Path(root) / MODELS_SUBFOLDER).iterdir()
            if p.suffix == CHECKPOINT_SUFFIX and p.with_suffix(".json").is_file()
        ]
    except OSError:
        return []
    return [checkpoint_entry(p) for p in paths]


def checkpoint_entry(path: Path) -> RunEntry:
    """A checkpoint as a finished "train" run, read from its sidecar only."""
    sidecar = path.with_suffix(".json")
    started = mtime(sidecar)
    try:
        meta = read_json(sidecar)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        data = meta.get("data")
        name = str((data.get("name") if isinstance(data, dict) else None) or "mnist").lower()
        seconds = (meta.get("training") or {}).get("seconds")
        error = (meta.get("metrics") or {}).get("test_error")
        return RunEntry(
            path=path,
            kind=KIND,
            model=str(meta.get("id") or path.stem),
            data=f"{name} {meta.get('train_split') or ''}".strip(),
            status="finished",
            started=started,
            seconds=float(seconds) if is_number(seconds) else None,
            done=None,
            total=None,
            figures=f"test error {error:.2f}%" if is_number(error) else "",
        )
    except READ_ERRORS as exc:
        return damaged_entry(path, KIND, started, f"{sidecar.name} is damaged ({exc})", model=path.stem)


TRAIN = RunKind(KIND, entries=checkpoint_entries)
