"""torchrun-sharded runs on the CPU (gloo): the same results as one process, every image once, resumable
on another number of ranks, and a dead rank's partner keeps its chunks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(
        BLINDSPOT_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        PYTHONFAULTHANDLER="1",  # a rank that dies says where (its stderr reaches the failure message)
    )
    env.update(extra)
    return env


def _blindspot(tmp_path: Path, args: list[str], ranks: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    """`blindspot ARGS` in a fresh process, or under `torchrun --nproc-per-node ranks`."""
    head = [TORCHRUN, "--standalone", f"--nproc-per-node={ranks}", "-m"] if ranks else [sys.executable, "-m"]
    proc = subprocess.Popen(
        [*head, "blindspot", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        start_new_session=True,  # a hung job is killed with all its ranks, not only the launcher
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"blindspot {' '.join(map(str, args))} hung:\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _same_results(a: Path, b: Path) -> None:
    one, two = load_file(str(a / "samples.safetensors")), load_file(str(b / "samples.safetensors"))
    assert torch.equal(one["success"], two["success"]) and torch.equal(one["target"], two["target"])
    assert torch.equal(one["index"], two["index"])
    ok = one["success"].bool()
    assert np.allclose(one["distortion"][ok].numpy(), two["distortion"][ok].numpy(), atol=1e-6)


ATTACK = ["attack", "--model", "n100-100-10", "-n", "64", "--target", "random", "--device", "cpu", "--json"]


def test_two_ranks_give_the_single_process_result_with_every_image_once(tmp_path: Path) -> None:
    single = _blindspot(tmp_path, [*ATTACK, "--out", tmp_path / "one"])
    assert single.returncode == 0, single.stderr
    sharded = _blindspot(tmp_path, [*ATTACK, "--out", tmp_path / "two"], ranks=2)
    assert sharded.returncode == 0, sharded.stderr
    assert json.loads(sharded.stdout)["n"] == 64  # one JSON document: rank 0 speaks, rank 1 is quiet
    _same_results(tmp_path / "one", tmp_path / "two")
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    per_rank = record["ranks"]["per_rank"]
    assert record["status"] == "done" and record["ranks"]["world_size"] == 2
    assert [r["images"] for r in per_rank] == [32, 32]  # both ranks did work
    covered = sorted(i for r in per_rank for a, b in r["chunks"] for i in range(a, b))
    assert covered == list(range(64))  # every image exactly once


FLAKY_NET = textwrap.dedent(
    """
    import os, signal, time
    from torch import nn
    from engines.core.checkpoint import load_checkpoint

    class FailsOnRank1(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.net = load_checkpoint("n100-100-10").model
            self.how = how

        def forward(self, x):
            if os.environ.get("RANK") == "1" and x.shape[0] > 2:  # the checks' probes pass; the attack does not
                if self.how == "raise":
                    raise RuntimeError("rank 1 lost its accelerator")
                time.sleep(3)
                os.kill(os.getpid(), signal.SIGKILL)
            return self.net(x)

    def raises():
        return FailsOnRank1("raise")

    def dies():
        return FailsOnRank1("die")
    """
)


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_failed_rank_leaves_the_others_chunks_and_the_run_resumes_on_one_rank(tmp_path: Path, how: str) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY_NET)
    args = ["attack", "--model-factory", f"flaky:{how}", "-n", "32", "--batch-size", "8", "--target", "random"]
    args += ["--device", "cpu", "--json", "--out", tmp_path / "run"]
    broken = _blindspot(tmp_path, args, ranks=2)
    assert broken.returncode != 0
    chunks = sorted(p.name for p in (tmp_path / "run" / "chunks").glob("*.safetensors"))
    assert chunks and all(int(name.split("-")[0]) < 16 for name in chunks)  # rank 0's shard [0, 16) only
    if how == "raises":  # rank 0 heard of it: one line that names the rank and says how to go on
        assert "rank 1: " in broken.stderr and f"--resume {tmp_path / 'run'}" in broken.stderr
    resumed = _blindspot(tmp_path, ["attack", "--resume", tmp_path / "run", "--device", "cpu", "--json"])
    assert resumed.returncode == 0, resumed.stderr
    single = _blindspot(tmp_path, [*args[:-3], "--out", tmp_path / "single"])
    assert single.returncode == 0, single.stderr
    _same_results(tmp_path / "single", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "done"


def test_two_ranks_build_the_same_transfer_matrix_as_one_process(tmp_path: Path) -> None:
    args = ["transfer", "--sources", "softmax1,n100-100-10", "--targets", "softmax1,n100-100-10,m2", "--split", "test"]
    args += ["-n", "24", "--noise", "0.1", "--c-steps", "4", "--max-iter", "40", "--device", "cpu", "--json"]
    single = _blindspot(tmp_path, [*args, "--out", tmp_path / "one"], BLINDSPOT_CACHE=str(tmp_path / "cache-one"))
    assert single.returncode == 0, single.stderr
    sharded = _blindspot(
        tmp_path, [*args, "--out", tmp_path / "two"], ranks=2, BLINDSPOT_CACHE=str(tmp_path / "cache-two")
    )
    assert sharded.returncode == 0, sharded.stderr
    one, two = json.loads(single.stdout), json.loads(sharded.stdout)
    assert one["errors"] == two["errors"] and one["columns"] == two["columns"]
    assert np.allclose(one["distortions"], two["distortions"], atol=1e-6)
    assert two["settings"]["world_size"] == 2
    for info in two["settings"]["sources"].values():  # each set was attacked by both ranks
        record = json.loads((Path(info["cache"]) / "run.json").read_text())
        assert [r["images"] for r in record["ranks"]["per_rank"]] == [12, 12]


def test_two_ranks_share_the_activations_pass_of_units(tmp_path: Path) -> None:
    args = ["units", "--model", "n100-100-10", "--layer", "act1", "-n", "300", "--k", "4", "--stat-random", "200"]
    args += ["--device", "cpu", "--json", "--no-cache"]
    single = _blindspot(tmp_path, [*args, "--out", tmp_path / "one"])
    assert single.returncode == 0, single.stderr
    sharded = _blindspot(tmp_path, [*args, "--out", tmp_path / "two"], ranks=2)
    assert sharded.returncode == 0, sharded.stderr
    one, two = json.loads(single.stdout), json.loads(sharded.stdout)
    for doc in (one, two):
        doc.pop("run"), doc.pop("files"), doc.pop("seconds")
    assert one == two


def _ended(result: dict[str, subprocess.CompletedProcess[str]]) -> str:
    """Why a writer thread ended: its run's stderr, or that it raised before it had a run (pytest reports the
    thread's exception)."""
    run = result.get("run")
    return run.stderr[-2000:] if run is not None else "the writer thread raised before the run ended"


def test_a_sharded_run_is_watched_read_only_with_the_progress_of_every_rank(tmp_path: Path) -> None:
    """The workbench's watch mode (issue 14): a follower sees each rank's chunks as they land, counts the whole
    run, and ends with rank 0's merged summary; it never writes into the folder."""

    from engines.attack.follow import follow_attack
    from engines.core.context import RunContext
    from engines.core.events import ChunkDone, Event, Step

    out, go = tmp_path / "two", tmp_path / "go"
    args = [ATTACK[0], "--model-factory", "tests.gated_model:gated", *ATTACK[3:]]
    args += ["--c-steps", "2", "--max-iter", "10", "--batch-size", "4", "--out", out]
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    gate = {"GATED_RUN": str(out), "GATED_GO": str(go), "GATED_AFTER": "2"}  # the ranks wait after two chunks
    writer = threading.Thread(target=lambda: result.update(run=_blindspot(tmp_path, args, ranks=2, **gate)))
    writer.start()
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.json").is_file():  # rank 0 creates the folder
            assert writer.is_alive(), f"the sharded run ended before it began: {_ended(result)}"
            assert time.monotonic() < deadline, "the sharded run never started"
            time.sleep(0.05)
        events: list[Event] = []

        def on_event(event: Event) -> None:
            events.append(event)
            if isinstance(event, Step):
                go.touch()  # followed live: the held ranks may finish now

        outcome = follow_attack(out, RunContext(device="cpu", on_event=on_event), poll=0.1)
        seen = [e for e in events if isinstance(e, ChunkDone)]
    finally:
        go.touch()
        writer.join(timeout=300)
    assert "run" in result and result["run"].returncode == 0, _ended(result)
    assert outcome.status == "finished" and outcome.result is not None and outcome.result.n == 64
    assert any(isinstance(e, Step) and e.done < 64 for e in events)  # followed while running, not replayed after
    starts = sorted(e.start for e in seen)
    assert sorted(i for e in seen for i in range(e.start, e.stop)) == list(range(64))  # every image once
    assert any(s < 32 for s in starts) and any(s >= 32 for s in starts)  # both ranks' shards streamed in
    assert max(e.done for e in seen) == 64 and [e.done for e in seen] == sorted(e.done for e in seen)
    per_rank = json.loads((out / "run.json").read_text())["ranks"]["per_rank"]
    assert [r["images"] for r in per_rank] == [32, 32]
