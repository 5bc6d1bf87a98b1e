"""Run folders: one naming rule, one layout record, one lock, for every operation.

A run folder holds `run.json` (format version, kind, the request, status, timings) beside the
operation's own results. Every operation opens its folder through `open_run`, which
- names it (`runs/<kind>-<model>-<YYYYmmdd-HHMMSS>[-k]`) when the context gives no `out`,
- refuses a folder that already holds results unless the context says `overwrite`,
- proves the folder writable before any work starts (a probe file is created and removed),
- takes an exclusive lock held for the run (a second process on the same folder is refused;
  a lock left by a dead process on this host is taken over).
So a CLI command and a screen cannot name, check or lock folders differently.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engines.core.context import RunContext
from engines.core.errors import InputError, RunInUse
from engines.core.io import read_json, write_json_atomic

RUN_FILE, LOCK_FILE, PROBE = "run.json", ".lock", ".probe-"
LOCK_GRACE_S = 10.0  # an unreadable lock younger than this is being written, not abandoned
RUN_FORMAT = 2  # 2: attack chunks carry a checksum of their arrays


def run_folder_name(kind: str, model: str, stamp: str | None = None) -> str:
    """`<kind>-<model stem>-<YYYYmmdd-HHMMSS>`: sortable by time, readable by eye."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{Path(model).stem}-{stamp}"


def new_run_folder(root: Path, kind: str, model: str) -> Path:
    """A folder name under `root` that no run uses yet (`-2`, `-3` … within the same second)."""
    base = root / run_folder_name(kind, model)
    folder, k = base, 1
    while folder.exists():
        k += 1
        folder = base.with_name(f"{base.name}-{k}")
    return folder


def holds_results(folder: Path) -> bool:
    """Anything in the folder but a lock and another process's writability probe."""
    return folder.is_dir() and any(not p.name.startswith((LOCK_FILE, PROBE)) for p in folder.iterdir())


def _refuse_results(folder: Path, kind: str, overwrite: bool) -> None:
    if holds_results(folder) and not overwrite:
        hint = " or --resume it" if (folder / RUN_FILE).is_file() and kind == "attack" else ""
        raise InputError(f"{folder} already holds results: choose another --out, pass --overwrite{hint}")


def check_writable(folder: Path) -> None:
    """Create the folder and a probe file in it, then remove the probe: fail now, not after the work."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{PROBE}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from None


@dataclass
class RunLock:
    """An exclusive lock file (`.lock`, holding host and pid) for the life of a run."""

    path: Path

    @classmethod
    def take(cls, folder: Path) -> RunLock:
        path = folder / LOCK_FILE
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        for _ in range(2):
            if _create_with(path, me):
                return cls(path)
            holder = _read_lock(path)
            if holder is None and _age(path) < LOCK_GRACE_S:
                holder = {}  # being written by a process that just created it: in use
            if holder is not None and not _is_stale(holder):
                raise RunInUse(
                    f"{folder} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')}: "
                    "wait for it or choose another --out"
                )
            path.unlink(missing_ok=True)  # a dead process's lock: take it over
        raise RunInUse(f"{folder} is in use by another process: choose another --out")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _create_with(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists; other processes never see it empty (hard link of a
    written temp file), except on file systems without hard links (then O_EXCL, and a short grace)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # garbage, or being written (O_EXCL fallback): stale only past the grace period


def lock_is_live(folder: Path) -> bool:
    """Whether a live process holds the folder's lock (another host's lock is trusted; a lock still being
    written counts as held), without taking it: how a reader tells a running run from a killed one."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return False
    holder = _read_lock(path)
    if holder is None:
        return path.exists() and _age(path) < LOCK_GRACE_S
    return not _is_stale(holder)


def _is_stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: we cannot tell, so we respect it
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


@dataclass
class RunFolder:
    """An open run: its folder, its run.json record, its lock."""

    path: Path
    kind: str
    lock: RunLock | None = None
    started: float = field(default_factory=time.time)  # when this process opened it
    base_seconds: float = 0.0  # seconds spent in earlier sessions of a resumed run

    def seconds(self) -> float:
        """Working time of the run over all its sessions."""
        return round(self.base_seconds + time.time() - self.started, 3)

    @property
    def record_path(self) -> Path:
        return self.path / RUN_FILE

    def record(self) -> dict[str, Any]:
        return read_run_record(self.path)

    def update(self, **changes: Any) -> None:
        run = self.record()
        run.update(changes)
        write_json_atomic(self.record_path, run)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def read_run_record(folder: Path) -> dict[str, Any]:
    """run.json of a folder, checked for what every operation relies on."""
    path = folder / RUN_FILE
    if not path.is_file():
        raise InputError(f"{folder} holds no run ({RUN_FILE} missing)")
    try:
        run = read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({exc}); start a new run") from None
    if not isinstance(run, dict) or not isinstance(run.get("request"), dict):
        raise InputError(f"{path} is damaged (no request recorded); start a new run")
    version = run.get("format", 1)
    if not isinstance(version, int) or version > RUN_FORMAT:
        raise InputError(f"{path} has run format {version!r}; this blindspot reads up to {RUN_FORMAT}")
    if version >= 2 and run.get("request_sha256") != request_digest(run["request"]):
        raise InputError(f"{path} is damaged (its request does not match its checksum); start a new run")
    return run


def request_digest(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON: a resumed run carries on exactly what was started."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def folder_for(ctx: RunContext, kind: str, model: str) -> Path:
    """The folder a new run of `kind` on `model` writes to under this context."""
    return ctx.out if ctx.out is not None else new_run_folder(ctx.runs_root, kind, model)


@contextlib.contextmanager
def open_run(ctx: RunContext, kind: str, model: str, request: dict[str, Any], **record: Any) -> Iterator[RunFolder]:
    """Create, check, lock and record a new run folder; mark it finished or interrupted on exit.

    A run refused before it produced anything (bad input found while loading) leaves no folder
    behind that would block the same --out.
    """
    folder = folder_for(ctx, kind, model)
    existed = folder.exists()
    created = _first_missing(folder)
    _refuse_results(folder, kind, ctx.overwrite)  # early and cheap: nothing created yet
    check_writable(folder)
    lock = RunLock.take(folder)
    try:  # again under the lock: another process may have finished a run here since the first look
        _refuse_results(folder, kind, ctx.overwrite)
    except InputError:
        lock.release()
        raise
    run = RunFolder(folder, kind, lock)
    try:
        write_json_atomic(
            run.record_path,
            {
                "format": RUN_FORMAT,
                "kind": kind,
                "status": "running",
                "request": request,
                "request_sha256": request_digest(request),
                "started": run.started,
                **record,
            },
        )
        yield run
    except BaseException as exc:
        produced = [p for p in folder.iterdir() if p.name not in (RUN_FILE, LOCK_FILE)]
        run.close()
        if not produced and not existed and not isinstance(exc, KeyboardInterrupt):
            _remove_empty_run(folder, created)
        elif (folder / RUN_FILE).is_file():
            with contextlib.suppress(OSError, InputError):
                RunFolder(folder, kind).update(status="interrupted", seconds=run.seconds())
        raise
    else:
        run.update(status="done", seconds=run.seconds())
        run.close()


@contextlib.contextmanager
def reopen_run(folder: Path, kind: str) -> Iterator[RunFolder]:
    """Lock an existing run folder of `kind` to carry it on (`--resume`)."""
    run_record = read_run_record(folder)
    if run_record.get("kind", kind) != kind:
        raise InputError(f"{folder} holds a {run_record.get('kind')} run, not a {kind} run")
    check_writable(folder)
    base = run_record.get("seconds")
    run = RunFolder(
        folder, kind, RunLock.take(folder), base_seconds=float(base) if isinstance(base, (int, float)) else 0.0
    )
    try:
        run.update(status="running")
        yield run
    except BaseException:
        with contextlib.suppress(OSError, InputError):
            run.update(status="interrupted", seconds=run.seconds())
        run.close()
        raise
    else:
        run.update(status="done", seconds=run.seconds())
        run.close()


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet (None if it exists)."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _remove_empty_run(folder: Path, created: Path | None) -> None:
    """Undo what a refused run made: its record and lock, and the empty folders created for it."""
    for name in (RUN_FILE, LOCK_FILE):
        (folder / name).unlink(missing_ok=True)
    if created is None:
        return
    for p in [folder, *folder.parents]:
        with contextlib.suppress(OSError):
            p.rmdir()  # only empty folders go
        if p == created:
            break


def redo_interrupted(ctx: RunContext, kind: str) -> RunContext:
    """Let an --out that holds an interrupted run of `kind` be run again.

    Transfer and reproduce keep their costly part (the adversarial sets) in the cache, so the CLI's
    hint says "run the same command again": that must not be refused as an occupied folder. A
    finished run, another kind's folder or a folder without run.json still is.
    """
    if ctx.out is None or ctx.overwrite or not (Path(ctx.out) / RUN_FILE).is_file():
        return ctx
    try:
        record = read_run_record(Path(ctx.out))
    except InputError:
        return ctx
    if record.get("kind") == kind and record.get("status") != "done":
        return replace(ctx, overwrite=True)
    return ctx


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
