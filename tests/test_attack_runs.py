"""Attack run folders that cannot silently go wrong: changed data or model, damaged chunks, finished runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from engines.attack.operation import AttackRequest, resume_attack, run_attack
from engines.attack.search import AttackConfig
from engines.core.context import RunContext
from engines.core.errors import Cancelled, InputError
from tests.conftest import make_mnist_dir

BUDGET = AttackConfig(c_steps=2, max_iter=10)


def request(data, n=12, batch_size=4, **kw) -> AttackRequest:
    return AttackRequest(
        model="n100-100-10", n=n, seed=1, config=BUDGET, batch_size=batch_size, data_dir=str(data), **kw
    )


def cancel_after_chunks(k: int):
    """A context whose cancel check turns true once `k` chunks are saved (event-driven, no timing)."""
    from engines.core.events import ChunkDone

    saved = []

    def on_event(event):
        if isinstance(event, ChunkDone):
            saved.append(event)

    return RunContext(device="cpu", on_event=on_event, cancelled=lambda: len(saved) >= k), saved


def test_resume_refuses_data_that_changed(tmp_path):
    data = make_mnist_dir(tmp_path / "d", seed=0)
    out = tmp_path / "run"
    ctx, _ = cancel_after_chunks(1)
    with pytest.raises(Cancelled):
        run_attack(request(data), replace(ctx, out=out))
    shutil.rmtree(data)
    make_mnist_dir(data, seed=5)  # other images under the same names
    with pytest.raises(InputError, match="data files .* changed"):
        resume_attack(out, RunContext(device="cpu"))


def test_a_finished_run_is_left_alone(tmp_path):
    data = make_mnist_dir(tmp_path / "d")
    out = tmp_path / "run"
    first = run_attack(request(data), RunContext(device="cpu", out=out))
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = resume_attack(out, RunContext(device="cpu"))
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert again.to_json() == first.to_json()


def test_a_damaged_chunk_is_recomputed_not_trusted(tmp_path):
    data = make_mnist_dir(tmp_path / "d")
    whole = run_attack(request(data), RunContext(device="cpu", out=tmp_path / "whole"))
    out = tmp_path / "run"
    ctx, _ = cancel_after_chunks(2)
    with pytest.raises(Cancelled):
        run_attack(request(data), replace(ctx, out=out))
    chunks = sorted((out / "chunks").glob("*.safetensors"))
    assert len(chunks) == 2
    with open(chunks[1], "r+b") as fh:
        fh.truncate(100)
    result = resume_attack(out, RunContext(device="cpu"))
    assert result.n == 12 and result.n_success == whole.n_success
    a, b = load_file(str(out / "samples.safetensors")), load_file(str(tmp_path / "whole" / "samples.safetensors"))
    assert torch.equal(a["success"], b["success"])
    assert torch.allclose(a["x_adv"], b["x_adv"], atol=1e-6)


@pytest.mark.parametrize("damage", ["garbage", "missing-keys"])
def test_a_damaged_run_record_is_one_line(tmp_path, damage, cli):
    data = make_mnist_dir(tmp_path / "d")
    out = tmp_path / "run"
    ctx, _ = cancel_after_chunks(1)
    with pytest.raises(Cancelled):
        run_attack(request(data), replace(ctx, out=out))
    if damage == "garbage":
        (out / "run.json").write_bytes(b"\x00\xff not json")
    else:
        record = json.loads((out / "run.json").read_text())
        del record["request"]["n"]
        (out / "run.json").write_text(json.dumps(record))
    rc, _, err = cli("attack", "--resume", str(out), "--device", "cpu")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "damaged" in err


def test_the_same_out_twice_is_refused_with_a_resume_hint(tmp_path, cli):
    data = make_mnist_dir(tmp_path / "d")
    out = tmp_path / "run"
    run_attack(request(data), RunContext(device="cpu", out=out))
    rc, _, err = cli("attack", "--model", "n100-100-10", "--n", "2", "--data", str(data), "--out", str(out))
    assert rc == 2 and "already holds results" in err and "--resume" in err


def test_results_do_not_depend_on_the_batch_size(tmp_path):
    """Per-row arithmetic (padded model batches): chunking 16 MNIST images 16, 5 or 1 at a time gives the same run.

    Without the padding the same request differed by up to 0.002 per pixel between batch sizes."""
    runs = {}
    for bs in (16, 5, 1):
        req = AttackRequest(
            model="n100-100-10", n=16, seed=1, config=AttackConfig(c_steps=4, max_iter=60), batch_size=bs
        )
        run_attack(req, RunContext(device="cpu", out=tmp_path / f"b{bs}"))
        runs[bs] = load_file(str(tmp_path / f"b{bs}" / "samples.safetensors"))
    for bs in (5, 1):
        assert torch.equal(runs[bs]["success"], runs[16]["success"])
        ok = runs[16]["success"].bool()
        assert ok.sum() >= 12
        assert torch.allclose(runs[bs]["distortion"][ok], runs[16]["distortion"][ok], rtol=0, atol=1e-6)
        assert float((runs[bs]["x_adv"] - runs[16]["x_adv"]).abs().max()) <= 1e-6


def test_a_model_whose_logits_overflow_is_refused(tmp_path, cli):
    from engines.core.checkpoint import load_checkpoint

    state = {k: v.clone() for k, v in load_checkpoint("n100-100-10").model.state_dict().items()}
    last = sorted(k for k in state if k.endswith(".weight"))[-1]
    state[last] *= 1e38  # finite weights, logits that overflow
    path = tmp_path / "overflow.pt"
    torch.save(state, path)
    rc, out, err = cli("attack", "--model", path, "--n", "4", "--device", "cpu", "--out", tmp_path / "run")
    assert rc == 2 and out == "" and "logits are inf or NaN" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_overwrite_never_reuses_an_earlier_runs_chunks(tmp_path):
    """--overwrite with another request used to pick up the earlier attack's chunk files and report its numbers."""
    data = make_mnist_dir(tmp_path / "d")
    out = tmp_path / "run"
    run_attack(request(data), RunContext(device="cpu", out=out))
    second = replace(request(data), model="softmax1", seed=7)
    again = run_attack(second, RunContext(device="cpu", out=out, overwrite=True))
    fresh = run_attack(second, RunContext(device="cpu", out=tmp_path / "fresh"))
    assert again.to_json() | {"run": "", "seconds": 0} == fresh.to_json() | {"run": "", "seconds": 0}
    assert torch.equal(
        load_file(str(out / "samples.safetensors"))["x_adv"],
        load_file(str(tmp_path / "fresh" / "samples.safetensors"))["x_adv"],
    )
