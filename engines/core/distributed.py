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
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from engines.core.errors import InputError

T = TypeVar("T")
TIMEOUT_ENV = "BLINDSPOT_RANK_TIMEOUT"  # minutes a rank waits for its partners in one collective step
TIMEOUT_MINUTES = 60.0  # long enough for ranks whose shards finish minutes apart, short of a night's hang
_TAKES_DEVICE_ID = "device_id" in inspect.signature(dist.init_process_group).parameters  # PyTorch 2.3 on
GOODBYE_SECONDS = 30.0  # the last barrier before exit: a partner that is gone must not hold the others


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


def rank_timeout() -> datetime.timedelta:
    """How long a rank waits for the others in one collective step: `BLINDSPOT_RANK_TIMEOUT` minutes (60)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        minutes = float(text) if text else TIMEOUT_MINUTES
    except ValueError:
        raise InputError(f"{TIMEOUT_ENV} must be a number of minutes, got {text!r}") from None
    if not minutes > 0:
        raise InputError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {text!r}")
    return datetime.timedelta(minutes=minutes)


def init_distributed(device: str) -> Ranks:
    """Join the torchrun job when there is one: NCCL for CUDA devices, gloo otherwise. Idempotent.

    On CUDA each rank takes the device of its LOCAL_RANK and names it to NCCL (`device_id`, so the
    communicator is made at once for that device); a node started with more ranks than it has GPUs is
    refused in one line. Every collective waits at most `rank_timeout()` for the partners."""
    ranks = ranks_from_env()
    if not ranks.sharded or dist.is_initialized():
        return ranks
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    timeout = rank_timeout()
    if not cuda:
        dist.init_process_group("gloo", timeout=timeout)
        return ranks
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise InputError(
            f"rank {ranks.rank}: LOCAL_RANK {ranks.local_rank} but this node has {count} CUDA device"
            f"{'' if count == 1 else 's'}: start at most {count} per node (torchrun --nproc-per-node {max(count, 1)})"
        )
    torch.cuda.set_device(ranks.local_rank)
    bound: dict[str, Any] = {"device_id": torch.device("cuda", ranks.local_rank)} if _TAKES_DEVICE_ID else {}
    dist.init_process_group("nccl", timeout=timeout, **bound)
    return ranks


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wait_for_ranks(seconds: float = GOODBYE_SECONDS) -> None:
    """A barrier that never raises and waits at most `seconds` (a rank may be gone): lets rank 0 report
    before the others exit, and lets no rank hang on a partner that died."""
    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):
        work = dist.barrier(async_op=True)
        if work is not None:
            work.wait(timeout=datetime.timedelta(seconds=seconds))


def _collective(what: str, ranks: Ranks, step: Callable[[], T]) -> T:
    """Run one collective step; a failure (a partner gone, or silent past the timeout) says which rank waited
    for what, and how long it may wait (still a RuntimeError, as the callers expect)."""
    try:
        return step()
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise RuntimeError(
            f"rank {ranks.rank} of {ranks.world}: {what} failed or timed out ({TIMEOUT_ENV}="
            f"{rank_timeout().total_seconds() / 60:g} min): {detail}"
        ) from exc


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank."""
    if not ranks.sharded:
        return value
    box = [value if ranks.main else None]
    _collective("waiting for rank 0", ranks, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (also a barrier)."""
    if not ranks.sharded:
        return [value]
    out: list[Any] = [None] * ranks.world
    _collective("waiting for every rank", ranks, lambda: dist.all_gather_object(out, value))
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
