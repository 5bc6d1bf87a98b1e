"""Run folders (engines/core/runs.py): naming, refusal, writability, the lock, the record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engines.core.context import RunContext
from engines.core.errors import InputError
from engines.core.runs import LOCK_FILE, RUN_FILE, RUN_FORMAT, RunLock, new_run_folder, open_run, read_run_record

ROOT = Path(__file__).resolve().parent.parent


def test_new_folders_never_collide_within_a_second(tmp_path):
    first = new_run_folder(tmp_path, "attack", "models/n100-100-10.safetensors")
    first.mkdir()
    second = new_run_folder(tmp_path, "attack", "n100-100-10")
    assert first.name.startswith("attack-n100-100-10-") and second != first
    assert second.name.startswith(first.name) and second.name.endswith("-2")


def test_open_run_records_the_request_and_marks_it_done(tmp_path):
    ctx = RunContext(out=tmp_path / "r")
    with open_run(ctx, "units", "softmax1", {"layer": "fc1"}) as run:
        assert (run.path / LOCK_FILE).is_file()
        assert read_run_record(run.path)["status"] == "running"
        (run.path / "units.json").write_text("{}")
    record = read_run_record(tmp_path / "r")
    assert record["format"] == RUN_FORMAT and record["kind"] == "units" and record["request"] == {"layer": "fc1"}
    assert record["status"] == "done" and record["seconds"] >= 0
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_a_folder_with_results_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "old.json").write_text("{}")
    with pytest.raises(InputError, match="already holds results"), open_run(RunContext(out=out), "bounds", "m", {}):
        pass
    assert (out / "old.json").is_file()  # nothing of the earlier run is touched
    with open_run(RunContext(out=out, overwrite=True), "bounds", "m", {}):
        pass
    assert read_run_record(out)["kind"] == "bounds"


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    target = tmp_path / "f"
    target.write_text("x")
    work = []
    with pytest.raises(InputError, match="is a file"), open_run(RunContext(out=target), "attack", "m", {}):
        work.append(1)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): no read-only folder to test with")
        with pytest.raises(InputError, match="cannot write"), open_run(RunContext(out=readonly / "r"), "a", "m", {}):
            work.append(2)
    finally:
        readonly.chmod(0o700)
    assert work == []


def test_a_run_refused_before_producing_anything_leaves_no_folder(tmp_path):
    out = tmp_path / "runs" / "deep" / "r"
    with pytest.raises(InputError, match="bad model"), open_run(RunContext(out=out), "attack", "m", {}):
        raise InputError("bad model")
    assert not (tmp_path / "runs").exists()


def test_an_interrupted_run_keeps_its_work_and_says_so(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt), open_run(RunContext(out=out), "attack", "m", {}) as run:
        (run.path / "chunk").write_text("done")
        raise KeyboardInterrupt
    assert (out / "chunk").read_text() == "done"
    assert read_run_record(out)["status"] == "interrupted"


def test_a_second_process_on_the_same_folder_is_refused_and_a_dead_ones_lock_is_taken(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from engines.core.runs import RunLock
                RunLock.take(Path({str(out)!r}))
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"in use by process {holder.pid}"):
            RunLock.take(out)
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock.take(out)  # the holder died without releasing: its lock is stale
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_two_processes_racing_for_one_run_folder_one_wins(tmp_path):
    """Both start at once on the same --out: exactly one gets the folder."""
    out = tmp_path / "r"
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from engines.core.context import RunContext
        from engines.core.errors import InputError
        from engines.core.runs import open_run
        try:
            with open_run(RunContext(out=Path({str(out)!r})), "attack", "m", {{}}) as run:
                (run.path / "result").write_text(str(run.started))
                time.sleep(1.5)
        except InputError as exc:
            print("refused", exc)
            sys.exit(2)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    codes = sorted(p.wait(timeout=60) for p in procs)
    assert codes == [0, 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "damaged"),
        ('{"status": "done"}', "no request"),
        ('{"format": 99, "request": {}}', "run format 99"),
    ],
)
def test_a_damaged_or_newer_run_record_is_one_line(tmp_path, content, message):
    (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(InputError, match=message):
        read_run_record(tmp_path)


def test_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": time.time()}))
    with pytest.raises(InputError, match="on elsewhere"):
        RunLock.take(tmp_path)


def test_a_run_finished_between_the_first_look_and_the_lock_is_not_overwritten(tmp_path, monkeypatch):
    """The results check is repeated under the lock: once, under load, both racing processes exited 0."""
    import engines.core.runs as runs

    out = tmp_path / "r"
    real_check = runs.check_writable

    def other_process_finishes_a_run_meanwhile(folder):
        real_check(folder)
        monkeypatch.setattr(runs, "check_writable", real_check)
        with open_run(RunContext(out=out), "attack", "m", {"who": "other"}) as run:
            (run.path / "result").write_text("other")

    monkeypatch.setattr(runs, "check_writable", other_process_finishes_a_run_meanwhile)
    with (
        pytest.raises(InputError, match="already holds results"),
        open_run(RunContext(out=out), "attack", "m", {"who": "me"}) as run,
    ):
        (run.path / "result").write_text("me")
    assert (out / "result").read_text() == "other" and read_run_record(out)["request"] == {"who": "other"}
    assert not (out / LOCK_FILE).exists()


def test_an_empty_lock_is_respected_while_young_and_taken_over_when_old(tmp_path):
    """An empty lock used to be taken over at once: the racing process that had just created it lost its run."""
    lock = tmp_path / LOCK_FILE
    lock.write_text("")
    with pytest.raises(InputError, match="in use"):
        RunLock.take(tmp_path)
    old = time.time() - 60
    os.utime(lock, (old, old))
    taken = RunLock.take(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    taken.release()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp files left behind
