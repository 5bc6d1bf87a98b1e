"""The Runs screen's listing: real tiny runs, each status told apart, damaged folders listed not fatal."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from engines.attack.chunks import covered_images
from engines.attack.operation import AttackRequest, run_attack
from engines.attack.search import AttackConfig
from engines.bounds.operation import BoundsRequest, run_bounds
from engines.core.context import RunContext
from engines.core.data import sample_data_dir
from engines.core.errors import Cancelled
from engines.core.events import ChunkDone
from engines.core.io import write_json_atomic
from engines.core.runs import LOCK_FILE, lock_is_live, request_digest
from engines.kinds import list_runs, read_run_entry
from tests.conftest import make_mnist_dir

BUDGET = AttackConfig(c_steps=2, max_iter=10)


def attack_request(data: Path, n: int = 12) -> AttackRequest:
    return AttackRequest(model="n100-100-10", n=n, seed=1, config=BUDGET, batch_size=4, data_dir=str(data))


def cut_after_first_chunk(req: AttackRequest, out: Path) -> None:
    saved: list[ChunkDone] = []
    ctx = RunContext(
        device="cpu",
        out=out,
        on_event=lambda e: saved.append(e) if isinstance(e, ChunkDone) else None,
        cancelled=lambda: len(saved) >= 1,
    )
    with pytest.raises(Cancelled):
        run_attack(req, ctx)


def set_record(folder: Path, **changes) -> None:
    record = json.loads((folder / "run.json").read_text())
    record.update(changes)
    (folder / "run.json").write_text(json.dumps(record))


def write_lock(folder: Path, pid: int) -> None:
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": time.time()}))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    """A runs root: a finished and an interrupted attack, copies of it running (live lock) and killed (dead
    lock), a damaged run.json, a bounds run, a checkpoint, and clutter that is no run."""
    base = tmp_path_factory.mktemp("runs-index")
    data = make_mnist_dir(base / "data")
    root = base / "runs"
    req = attack_request(data)
    finished = run_attack(req, RunContext(device="cpu", out=root / "attack-fin"))
    cut_after_first_chunk(req, root / "attack-cut")
    sleeper = subprocess.Popen(["sleep", "60"])
    for name, pid in (("attack-live", sleeper.pid), ("attack-dead", dead_pid())):
        shutil.copytree(root / "attack-cut", root / name)
        set_record(root / name, status="running")
        write_lock(root / name, pid)
    shutil.copytree(root / "attack-cut", root / "attack-nolock")
    set_record(root / "attack-nolock", status="running")
    (root / "attack-bad").mkdir()
    (root / "attack-bad" / "run.json").write_bytes(b"\x00\xff not json")
    (root / "clutter").mkdir()
    (root / "clutter" / "notes.txt").write_text("no run here")
    (root / "loose.json").write_text("{}")
    run_bounds(
        BoundsRequest(model="conv", input_shape=(1, 28, 28), power_iters=3, precision="float32"),
        RunContext(device="cpu", out=root / "bounds-conv"),
    )
    models = root / "models"
    models.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(sample_data_dir() / "models" / f"softmax1{suffix}", models / f"softmax1{suffix}")
    shutil.copy(sample_data_dir() / "models" / "conv.safetensors", models / "orphan.safetensors")  # no sidecar
    try:
        yield root, finished
    finally:
        sleeper.kill()
        sleeper.wait()


def by_name(root: Path) -> dict[str, object]:
    return {e.path.name: e for e in list_runs(root)}


def test_every_run_and_checkpoint_is_listed_and_clutter_is_not(root):
    folder, _ = root
    entries = by_name(folder)
    expected = {
        "attack-fin",
        "attack-cut",
        "attack-live",
        "attack-dead",
        "attack-nolock",
        "attack-bad",
        "bounds-conv",
        "softmax1.safetensors",
    }
    assert set(entries) == expected
    assert {e.kind for e in entries.values()} == {"attack", "bounds", "train"}
    assert json.loads(json.dumps([e.to_json() for e in entries.values()]))  # plain JSON, paths as strings


def test_status_comes_from_the_record_and_the_lock(root):
    folder, _ = root
    status = {name: e.status for name, e in by_name(folder).items()}
    assert status["attack-fin"] == "finished"
    assert status["attack-cut"] == "interrupted"
    assert status["attack-live"] == "running"  # run.json says running and a live process holds the lock
    assert status["attack-dead"] == "interrupted"  # the lock's process is gone: killed, resumable
    assert status["attack-nolock"] == "interrupted"
    assert status["attack-bad"] == "damaged"
    assert lock_is_live(folder / "attack-live") and not lock_is_live(folder / "attack-dead")
    assert not lock_is_live(folder / "attack-fin")


def test_a_damaged_record_says_why_and_guesses_its_kind(root):
    folder, _ = root
    bad = by_name(folder)["attack-bad"]
    assert bad.kind == "attack" and "damaged" in bad.error and bad.started > 0
    entry = read_run_entry(folder / "clutter")  # asked directly, a folder without run.json is damaged, not raised
    assert entry.status == "damaged" and "run.json" in entry.error


def test_attack_figures_and_progress(root):
    folder, finished = root
    entries = by_name(folder)
    fin, cut = entries["attack-fin"], entries["attack-cut"]
    assert (fin.done, fin.total) == (12, 12)
    assert f"success {100 * finished.success_rate:.1f}%" in fin.figures
    assert f"distortion {finished.mean_distortion:.4f}" in fin.figures
    assert fin.model == "n100-100-10" and fin.data == "data test"
    assert fin.seconds is not None and fin.seconds > 0
    assert (cut.done, cut.total) == (4, 12) and cut.figures == ""
    assert entries["attack-live"].done == 4


def test_other_kinds_have_their_figures(root):
    folder, _ = root
    entries = by_name(folder)
    bounds = json.loads((folder / "bounds-conv" / "bounds.json").read_text())
    assert entries["bounds-conv"].figures.startswith(f"{len(bounds['layers'])} layers · product ")
    assert entries["bounds-conv"].model == "conv" and entries["bounds-conv"].data == "input 1×28×28"
    ckpt = entries["softmax1.safetensors"]
    meta = json.loads((sample_data_dir() / "models" / "softmax1.json").read_text())
    assert ckpt.status == "finished" and ckpt.model == "softmax1"
    assert ckpt.figures == f"test error {meta['metrics']['test_error']:.2f}%"
    assert ckpt.done is None and ckpt.total is None


def test_newest_first(root):
    folder, _ = root
    entries = list_runs(folder)
    started = [e.started for e in entries]
    assert started == sorted(started, reverse=True)
    runs = [e.path.name for e in entries if e.path.name in ("attack-fin", "attack-cut", "bounds-conv")]
    assert runs == ["bounds-conv", "attack-cut", "attack-fin"]  # the order they were made in, reversed


def test_handwritten_records_of_other_kinds(tmp_path):
    def record(name: str, kind: str, request: dict, started: float, **extra) -> None:
        folder = tmp_path / name
        folder.mkdir()
        doc = {"format": 2, "kind": kind, "status": "done", "request": request, "started": started}
        write_json_atomic(folder / "run.json", doc | {"request_sha256": request_digest(request)} | extra)

    record("units-a", "units", {"model": "sample/m.safetensors", "layer": "fc1", "split": "test"}, 3.0)
    matrix = {
        "rows": [
            {"name": "a", "kind": "adversarial", "source": "a"},
            {"name": "b", "kind": "adversarial", "source": "b"},
            {"name": "noise", "kind": "noise", "source": None},
        ],
        "columns": ["a", "b"],
        "values": [[100.0, 10.0], [30.0, 100.0], [5.0, 5.0]],
    }
    record("transfer-m", "transfer", {"sources": ["a", "b"], "targets": ["a", "b"], "split": "train"}, 2.0)
    write_json_atomic(tmp_path / "transfer-m" / "matrix.json", matrix)
    record("odd", "attack", {"n": "twelve"}, 1.0, status="weird")
    record("bounds-strange", "bounds", {"model": 7, "input_shape": "huge"}, 0.5, model=["not", "a", "record"])
    entries = {e.path.name: e for e in list_runs(tmp_path)}
    assert entries["units-a"].figures == "layer fc1" and entries["units-a"].model == "m"
    assert entries["transfer-m"].figures == "3 × 2 matrix · off-diagonal 20.0%"
    assert entries["transfer-m"].model == "a, b" and entries["transfer-m"].data == "mnist train"
    assert entries["odd"].status == "damaged" and "weird" in entries["odd"].error
    assert entries["bounds-strange"].status == "finished" and entries["bounds-strange"].model == "7"
    assert [e.path.name for e in list_runs(tmp_path)] == ["units-a", "transfer-m", "odd", "bounds-strange"]


def test_missing_root_and_chunk_names(tmp_path):
    assert list_runs(tmp_path / "nowhere") == []
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    for name in ("000000-000004", "000002-000006", "000010-000020", "garbage", ".000004-000008.tmp"):
        (chunks / f"{name}.safetensors").write_bytes(b"")
    assert covered_images(tmp_path, 12) == 8  # 0–6 once, 10–12 clipped to the run; garbage names ignored
