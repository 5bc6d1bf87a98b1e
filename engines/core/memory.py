"""How much memory there is, how much one image costs a model (the inputs of batch sizing), and what to do
when an allocation fails: tell it from other errors, release what the failed batch held, report the peak."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import torch
from torch import nn


def available_memory() -> int:
    """Bytes of RAM other processes leave free (MemAvailable), or a conservative 4 GiB when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def activation_floats(model: nn.Module, x: torch.Tensor, device: torch.device | str) -> int:
    """Floats the model's layers output for one image: what a backward pass keeps alive per image."""
    total = 0

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out[0].numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1].to(device))
    finally:
        for h in handles:
            h.remove()
    return total


def eval_batch(x: torch.Tensor, cap: int = 4096) -> int:
    """Images per inference batch: thousands of MNIST digits, about a hundred ImageNet-sized images
    (16 M input floats: the activations of a large network stay within a few GB)."""
    per_image = max(1, int(x[0].numel())) if len(x) else 1
    return max(1, min(cap, (16 << 20) // per_image))


# Allocation failures as the CUDA libraries report them: PyTorch's own allocator raises OutOfMemoryError;
# cuBLAS, cuDNN and the CPU allocator arrive as plain RuntimeErrors whose message says so.
OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "can't allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure (worth retrying on a smaller batch), not a bug."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m.lower() in str(exc).lower() for m in OUT_OF_MEMORY_MESSAGES)


def release_memory(device: torch.device | str) -> None:
    """Give memory back after a failed or finished batch: collect cycles (a traceback's frames hold tensors),
    then return PyTorch's unused cached blocks to the driver. Call outside an `except` block."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def device_free_memory(device: torch.device | str) -> int:
    """Bytes a new batch can use: on CUDA the driver's free memory plus what PyTorch holds cached but unused
    (reserved − allocated: an earlier job's blocks, reusable without the driver); on the CPU `available_memory`."""
    device = torch.device(device)
    if device.type != "cuda":
        return available_memory()
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def reset_peak_memory(device: torch.device | str) -> None:
    """Start counting the peak of `peak_memory` here (CUDA; the CPU's peak is the process's)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict[str, Any]:
    """The most memory the work took since `reset_peak_memory`: on CUDA the allocator's peak (tensors) and
    reserve; on the CPU the process's peak resident size (everything the process held, not only this work)."""
    device = torch.device(device)
    if device.type == "cuda":
        return {
            "device": str(device),
            "allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
            "reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
        }
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        rss = 0
    return {"device": str(device), "process_peak_rss_bytes": int(rss)}
