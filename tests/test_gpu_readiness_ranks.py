"""torchrun on GPUs, checked on the CPU with PyTorch's process-group calls recorded (issue 23, item 8): NCCL is
told each rank's device, collectives wait a bounded time and say which rank waited, and a node started with
more ranks than GPUs is refused in one line."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

import engines.core.distributed as ed
from engines.core.distributed import Ranks, gather, init_distributed, rank_timeout
from engines.core.errors import InputError


@pytest.fixture
def rank1_of_2(monkeypatch):
    """This process as rank 1 of 2 on a node whose CUDA calls and process-group start are recorded."""
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(ed.TIMEOUT_ENV, raising=False)
    calls: dict[str, object] = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.update(set_device=d))
    return calls


def test_nccl_is_told_each_ranks_device_and_waits_a_bounded_time(rank1_of_2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ranks = init_distributed("cuda")
    assert (ranks.rank, ranks.world, ranks.local_rank) == (1, 2, 1)
    assert rank1_of_2["backend"] == "nccl" and rank1_of_2["set_device"] == 1
    assert rank1_of_2["device_id"] == torch.device("cuda", 1)
    assert rank1_of_2["timeout"] == datetime.timedelta(minutes=ed.TIMEOUT_MINUTES) <= datetime.timedelta(hours=1)


def test_the_wait_is_set_by_the_environment_and_gloo_takes_no_device(rank1_of_2, monkeypatch):
    monkeypatch.setenv(ed.TIMEOUT_ENV, "2.5")
    init_distributed("cpu")
    assert rank1_of_2["backend"] == "gloo" and "device_id" not in rank1_of_2
    assert rank1_of_2["timeout"] == datetime.timedelta(minutes=2.5)
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(ed.TIMEOUT_ENV, bad)
        with pytest.raises(InputError, match=ed.TIMEOUT_ENV):
            rank_timeout()


def test_more_ranks_than_gpus_is_one_line_naming_the_rank(rank1_of_2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError) as caught:
        init_distributed("auto")
    text = str(caught.value)
    assert "rank 1" in text and "1 CUDA device" in text and "--nproc-per-node 1" in text and "\n" not in text
    assert "backend" not in rank1_of_2  # refused before joining the job


def test_the_cli_exits_2_with_that_line(rank1_of_2, monkeypatch, cli):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    rc, out, err = cli("attack", "--model", "n100-100-10", "-n", "2", "--device", "cuda")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "rank 1" in err and "Traceback" not in err


def test_a_collective_that_fails_says_which_rank_waited(monkeypatch):
    def lost(out, value):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "all_gather_object", lost)
    with pytest.raises(RuntimeError, match=r"rank 1 of 3: waiting for every rank .*BLINDSPOT_RANK_TIMEOUT=.*closed"):
        gather({"images": 1}, Ranks(1, 3, 1))
