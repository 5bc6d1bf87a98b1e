"""Ranks of a torchrun job: PyTorch's own distributed engine (gloo on CPU, NCCL on GPUs), and the few
collective steps the operations need.

blindspot's problems are independent per image, so an operation shards a run's images into contiguous
ranges by index, one per rank; every rank writes its finished chunks into the one run folder (a file system
shared by all nodes is assumed), and rank 0 alone creates, locks, records and merges it. Without torchrun
(`WORLD_SIZE` unset or 1) nothing here does anything, and every operation behaves as in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from engines.core.errors import InputError

T = TypeVar("T")
TIMEOUT = datetime.timedelta(hours=6)  # ranks wait this long for each other (a long attack between collectives)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank, number of ranks, and its device index on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def shard(self, total: int) -> tuple[int, int]:
        """This rank's contiguous range of [0, total): every index exactly once over all ranks, no padding."""
        return self.rank * total // self.world, (self.rank + 1) * total // self.world


def ranks_from_env() -> Ranks:
    """What torchrun tells each process (RANK, WORLD_SIZE, LOCAL_RANK); one rank without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"rank {rank} of {world} ranks: not a valid torchrun setting")
    return Ranks(rank, world, local)


def init_distributed(device: str) -> Ranks:
    """Join the torchrun job when there is one: NCCL for CUDA devices, gloo otherwise. Idempotent."""
    ranks = ranks_from_env()
    if not ranks.sharded or dist.is_initialized():
        return ranks
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return ranks


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wait_for_ranks() -> None:
    """A barrier that never raises (a rank may be gone): lets rank 0 report before the others exit."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank."""
    if not ranks.sharded:
        return value
    box = [value if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (also a barrier)."""
    if not ranks.sharded:
        return [value]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def on_main_first(ranks: Ranks, step: Callable[[], T], share: Callable[[T], Any] | None = None) -> T:
    """Run `step` on rank 0 and hand its result to every rank (`share(result)` instead, where the whole result
    is too large to send); an error there is raised on every rank (as an InputError with its one line on the
    others), so no rank waits for a partner that gave up."""
    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    mine: Any = None
    if ranks.main:
        try:
            mine = step()
            outcome = ("ok", share(mine) if share is not None and ranks.sharded else mine)
        except BaseException as exc:  # the others must hear of it, whatever it is
            error, outcome = exc, ("error", f"rank 0: {exc}")
    outcome = broadcast(outcome, ranks)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise InputError(outcome[1])
    return mine if ranks.main else outcome[1]


def first_error(statuses: list[Any]) -> str | None:
    """The first failure message among the ranks' statuses (dicts with an 'error' entry), if any."""
    for rank, status in enumerate(statuses):
        if isinstance(status, dict) and status.get("error"):
            return f"rank {rank}: {status['error']}"
    return None
