"""Property tests for the run-folder reader: whatever happens to an interrupted run's files
(truncation, a flipped byte, garbage), `--resume` gives a one-line error or the right result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from engines.attack.operation import AttackRequest, resume_attack, run_attack
from engines.attack.search import AttackConfig
from engines.core.context import RunContext
from engines.core.errors import BlindspotError, Cancelled
from engines.core.events import ChunkDone
from tests.conftest import make_mnist_dir

N, BATCH = 8, 4  # two chunks: the interrupted run keeps the first


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run-folder-properties")
    data = make_mnist_dir(root / "d", n_train=10, n_test=N)
    req = AttackRequest(
        model="n100-100-10",
        n=N,
        seed=1,
        config=AttackConfig(c_steps=2, max_iter=10),
        batch_size=BATCH,
        data_dir=str(data),
    )
    run_attack(req, RunContext(device="cpu", out=root / "whole"))
    saved: list[ChunkDone] = []
    ctx = RunContext(
        device="cpu",
        out=root / "cut",
        on_event=lambda e: saved.append(e) if isinstance(e, ChunkDone) else None,
        cancelled=lambda: len(saved) >= 1,
    )
    with pytest.raises(Cancelled):
        run_attack(req, ctx)
    return {"whole": root / "whole", "cut": root / "cut", "root": root}


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
)


def damage(path: Path, how: tuple) -> None:
    data = bytearray(path.read_bytes())
    if how[0] == "truncate":
        path.write_bytes(bytes(data[: int(how[1] * len(data))]))
    elif how[0] == "flip":
        i = int(how[1] * len(data))
        data[i] ^= how[2]
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(how[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["run.json", "chunk"]), how=DAMAGE, n=st.integers(0, 10**6))
def test_resume_after_any_damage_is_one_line_or_the_right_result(runs, target, how, n):
    folder = runs["root"] / f"case-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(runs["cut"], folder)
    victim = folder / "run.json" if target == "run.json" else next((folder / "chunks").glob("*.safetensors"))
    damage(victim, how)
    try:
        result = resume_attack(folder, RunContext(device="cpu"))
    except BlindspotError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    assert result.n == N
    got, want = load_file(str(folder / "samples.safetensors")), load_file(str(runs["whole"] / "samples.safetensors"))
    assert torch.equal(got["success"], want["success"]) and torch.equal(got["target"], want["target"])
    assert torch.allclose(got["x_adv"], want["x_adv"], rtol=0, atol=1e-6)
    shutil.rmtree(folder)
