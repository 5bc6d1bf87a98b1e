"""`--device auto|cpu|cuda` resolved once, the same way for every command."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engines.core.choices import DEVICES
from engines.core.errors import InputError


def usable_devices() -> tuple[str, ...]:
    """The device choices that work on this machine (cuda only where torch sees a CUDA device)."""
    return tuple(d for d in DEVICES if d != "cuda" or torch.cuda.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """auto = cuda when present else cpu; asking for cuda without one is a user error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("the cuda device was asked for but this machine has no CUDA device: use cpu or auto")
        return torch.device(name)
    raise InputError(f"unknown device {name!r}: use auto, cpu or cuda")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve large CPU tensors from its heap and keep freed memory for reuse.

    By default every buffer above 128 KiB–32 MiB is mmap'ed fresh and unmapped on free, so each
    iteration of the attack pays a page fault per 4 KiB of every temporary: a full reproduce
    spent a third of its CPU time in the kernel (114 million minor faults). Process-wide; the
    price is that the process keeps its peak memory. Returns whether the setting took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * KEEP_BYTES))


@contextmanager
def cpu_speed_settings() -> Iterator[None]:
    """CPU speed settings for the solvers: denormal floats as zero while inside (and freed memory kept).

    Saturated sigmoids and tiny softmax gradients produce denormals, and CPU arithmetic on them
    is an order of magnitude slower (measured: 16 ms -> 2.7 ms for one forward/backward of
    n100-100-10 on 100 images). The change in results is below float32 resolution.
    """
    keep_freed_memory()
    changed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def free_cores(window: float = 0.2) -> float:
    """Cores left idle by other processes, sampled over `window` seconds from /proc/stat (Linux).

    Used to size the CPU thread pool at the start of a run on a shared machine: a worker thread on
    a core that another process keeps busy stalls every parallel region of the attack.
    """

    def sample() -> tuple[float, float] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [float(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return idle, sum(fields)

    first = sample()
    if first is None:
        return float(os.cpu_count() or 1)
    time.sleep(window)
    second = sample()
    if second is None or second[1] <= first[1]:
        return float(os.cpu_count() or 1)
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def threads_for_shared_cpu(requested: int | None) -> int:
    """`--threads` when given; otherwise one thread per idle core (at least one, at most torch's default)."""
    if requested is not None:
        return requested
    return max(1, min(torch.get_num_threads(), round(free_cores())))
