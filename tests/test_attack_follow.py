"""Following an attack run read-only (finished, being written, interrupted) and the replay of a resumed run."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import engines.attack.follow as follow_module
from engines.attack.follow import follow_attack, tiling
from engines.attack.operation import AttackRequest, resume_attack, run_attack
from engines.attack.search import AttackConfig
from engines.core.context import RunContext
from engines.core.errors import Cancelled
from engines.core.events import ChunkDone, Event, SolverStep, Step
from engines.core.runs import LOCK_FILE
from tests.conftest import make_mnist_dir

BUDGET = AttackConfig(c_steps=2, max_iter=10)


def attack_request(data: Path, n: int = 12) -> AttackRequest:
    return AttackRequest(model="n100-100-10", n=n, seed=1, config=BUDGET, batch_size=4, data_dir=str(data))


def within(seconds: float = 30.0):
    """A cancel check that turns true after `seconds`: a follower that would wait forever fails instead."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline


def collecting(**kw) -> tuple[RunContext, list[Event]]:
    events: list[Event] = []
    return RunContext(device="cpu", on_event=events.append, cancelled=within(), **kw), events


def cut_after(req: AttackRequest, out: Path, chunks: int) -> list[ChunkDone]:
    saved: list[ChunkDone] = []
    ctx = RunContext(
        device="cpu",
        out=out,
        on_event=lambda e: saved.append(e) if isinstance(e, ChunkDone) else None,
        cancelled=lambda: len(saved) >= chunks,
    )
    with pytest.raises(Cancelled):
        run_attack(req, ctx)
    return saved


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of a folder with its mtime and bytes, and the folders' mtimes (a file created and removed)."""
    files = {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }
    dirs = {
        str(p.relative_to(folder)) + "/": (p.stat().st_mtime_ns, 0, b"")
        for p in [folder, *folder.rglob("*")]
        if p.is_dir()
    }
    return files | dirs


def chunk_events(events: list[Event]) -> list[ChunkDone]:
    return [e for e in events if isinstance(e, ChunkDone)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("follow")
    data = make_mnist_dir(base / "data")
    run_attack(attack_request(data), RunContext(device="cpu", out=base / "fin"))
    cut_after(attack_request(data), base / "cut", 2)
    return {"base": base, "data": data, "fin": base / "fin", "cut": base / "cut"}


def test_a_finished_run_replays_every_image_once_from_its_samples(runs):
    before = snapshot(runs["fin"])
    ctx, events = collecting()
    outcome = follow_attack(runs["fin"], ctx)
    chunks = chunk_events(events)
    samples = load_file(str(runs["fin"] / "samples.safetensors"))
    assert [(e.start, e.stop) for e in chunks] == [(0, 4), (4, 8), (8, 12)]  # the chunk files' ranges
    assert [e.done for e in chunks] == [4, 8, 12] and all(e.total == 12 for e in chunks)
    assert torch.equal(torch.cat([e.results["x_adv"] for e in chunks]), samples["x_adv"])
    assert torch.equal(torch.cat([e.x for e in chunks]), samples["x"])
    assert list(torch.cat([torch.as_tensor(e.index) for e in chunks])) == list(samples["index"])
    assert set(chunks[0].results) >= {"x_adv", "target", "success", "distortion", "l2", "linf", "c"}
    summary = json.loads((runs["fin"] / "summary.json").read_text())
    assert outcome.status == "finished" and outcome.result is not None
    assert outcome.result.to_json() == summary and (outcome.done, outcome.total) == (12, 12)
    assert snapshot(runs["fin"]) == before  # read-only: no lock taken, nothing written


def test_a_finished_run_without_chunk_files_replays_slices(runs, tmp_path):
    folder = tmp_path / "fin"
    shutil.copytree(runs["fin"], folder)
    shutil.rmtree(folder / "chunks")
    ctx, events = collecting()
    assert follow_attack(folder, ctx).status == "finished"
    assert [(e.start, e.stop) for e in chunk_events(events)] == [(0, 12)]
    assert tiling([(4, 8), (6, 10)], 150) == [(0, 4), (4, 8), (8, 72), (72, 136), (136, 150)]


def test_an_interrupted_run_announces_what_it_finished(runs):
    before = snapshot(runs["cut"])
    ctx, events = collecting()
    outcome = follow_attack(runs["cut"], ctx, poll=0.01)
    chunks = chunk_events(events)
    assert outcome.status == "interrupted" and outcome.result is None
    assert (outcome.done, outcome.total) == (8, 12)
    assert [(e.start, e.stop, e.done) for e in chunks] == [(0, 4, 4), (4, 8, 8)]
    kept = load_file(str(runs["cut"] / "chunks" / "000004-000008.safetensors"))
    assert torch.equal(chunks[1].results["x_adv"], kept["x_adv"])
    assert snapshot(runs["cut"]) == before


def test_a_killed_writer_is_interrupted_not_waited_for(runs, tmp_path):
    folder = tmp_path / "killed"
    shutil.copytree(runs["cut"], folder)
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(record | {"status": "running"}))  # what a SIGKILL leaves
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "since": 0}))
    before = snapshot(folder)
    outcome = follow_attack(folder, collecting()[0], poll=5.0)  # returns at once: no sleep before giving up
    assert outcome.status == "interrupted" and outcome.done == 8
    assert snapshot(folder) == before  # the dead lock is left for a resume to take over


def test_following_a_run_being_written_yields_every_chunk_and_its_result(runs, tmp_path):
    out = tmp_path / "live"
    follower_started = threading.Event()
    written: list[ChunkDone] = []
    outcome: dict[str, object] = {}

    def writer_sink(event: Event) -> None:
        if isinstance(event, ChunkDone):
            written.append(event)
            follower_started.wait(60)  # hold the run after its first chunk until the follower is watching

    def write() -> None:
        outcome["writer"] = run_attack(
            attack_request(runs["data"], n=24), RunContext(device="cpu", out=out, on_event=writer_sink)
        )

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (out / "chunks").is_dir() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads((out / "run.json").read_text())["status"] == "running"
        seen: list[Event] = []

        def follower_sink(event: Event) -> None:
            seen.append(event)
            follower_started.set()

        result = follow_attack(out, RunContext(device="cpu", on_event=follower_sink, cancelled=within()), poll=0.02)
    finally:
        follower_started.set()
        thread.join(60)
    chunks = chunk_events(seen)
    assert (
        [(e.start, e.stop) for e in chunks]
        == [(e.start, e.stop) for e in written]
        == [(a, a + 4) for a in range(0, 24, 4)]
    )
    assert [e.done for e in chunks] == [4, 8, 12, 16, 20, 24] and all(e.total == 24 for e in chunks)
    for mine, theirs in zip(chunks, written, strict=True):
        assert torch.equal(mine.results["x_adv"], theirs.results["x_adv"])
        assert torch.equal(mine.x, theirs.x) and list(mine.index) == list(theirs.index)
        assert mine.task == theirs.task and torch.equal(mine.label, theirs.label)
    assert result.status == "finished" and result.result is not None
    assert result.result.to_json() == outcome["writer"].to_json()
    assert any(isinstance(e, Step) for e in seen)  # it waited while the run was still running


def test_cancelling_the_follower_stops_within_a_poll_and_leaves_the_run(runs, tmp_path, monkeypatch):
    folder = tmp_path / "held"
    shutil.copytree(runs["cut"], folder)
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(record | {"status": "running"}))
    holder = subprocess.Popen(["sleep", "60"])  # a live writer, as far as the lock says
    try:
        (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "since": 0}))
        before = snapshot(folder)
        asked: list[Event] = []
        polls_after_cancel: list[float] = []

        def on_event(event: Event) -> None:
            if isinstance(event, Step) and not asked:
                asked.append(event)  # cancel once it is waiting for new chunks

        def poll_wait(seconds: float) -> None:  # the follower's wait between polls, counted instead of slept
            if asked:
                polls_after_cancel.append(seconds)
                assert len(polls_after_cancel) <= 3, "the follower kept polling after the cancel"

        monkeypatch.setattr(follow_module, "time", SimpleNamespace(sleep=poll_wait))
        ctx = RunContext(device="cpu", on_event=on_event, cancelled=lambda: bool(asked))
        with pytest.raises(Cancelled):
            follow_attack(folder, ctx, poll=0.2)
        assert polls_after_cancel == [0.2]  # the wait it was in, and no further poll
        assert snapshot(folder) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_resumed_run_first_replays_the_chunks_finished_before(runs, tmp_path):
    folder = tmp_path / "resume"
    shutil.copytree(runs["cut"], folder)
    kept = load_file(str(folder / "chunks" / "000000-000004.safetensors"))
    ctx, events = collecting()
    resume_attack(folder, ctx)
    chunks = chunk_events(events)
    assert [(e.start, e.stop, e.done, e.total) for e in chunks] == [(0, 4, 4, 12), (4, 8, 8, 12), (8, 12, 12, 12)]
    assert torch.equal(chunks[0].results["x_adv"], kept["x_adv"])
    first_solver = next(i for i, e in enumerate(events) if isinstance(e, SolverStep))
    assert events.index(chunks[1]) < first_solver  # both earlier chunks come before any new work
    fresh, fresh_events = collecting(out=tmp_path / "fresh")
    run_attack(attack_request(runs["data"]), fresh)
    assert len(chunk_events(fresh_events)) == 3  # a new run replays nothing
