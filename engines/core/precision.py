"""float32 arithmetic on NVIDIA GPUs: TF32 off for the attack and the bounds unless asked, and what was in force.

Ampere and later GPUs can run float32 matrix products and convolutions in TF32 (a 10-bit mantissa; PyTorch
allows it for cuDNN convolutions by default). Its ~1e-3 relative error is far above the float32 rounding
the attack's line search and convergence tests assume (`engines.attack.lbfgsb`): line searches stop early
and distortions differ from the CPU's. `float32_precision(tf32)` sets it for one operation and restores the
process's settings afterwards; `precision_record()` is what run.json records. On the CPU nothing changes.

PyTorch 2.9 added per-backend `fp32_precision` settings and refuses reads that mix them with the older
`allow_tf32` flags; the newer API is used where it exists, the older otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_LOCK = threading.RLock()
_ACTIVE: list[tuple[object, bool]] = []  # (block, tf32) of every block inside `float32_precision`, oldest first
_SAVED: list[dict[str, Any]] = []  # the process's settings before the first of them


def _fp32_api() -> bool:
    """Whether this PyTorch has the per-backend `fp32_precision` settings (2.9 and later)."""
    cudnn = torch.backends.cudnn
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        getattr(cudnn, "conv", None), "fp32_precision"
    )


def _settings() -> dict[str, Any]:
    if _fp32_api():
        cudnn = torch.backends.cudnn
        return {
            "matmul": torch.backends.cuda.matmul.fp32_precision,
            "conv": cudnn.conv.fp32_precision,  # type: ignore[attr-defined]  # PyTorch 2.9's API, not in its stubs
            "rnn": cudnn.rnn.fp32_precision,  # type: ignore[attr-defined]
        }
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


def _apply(settings: dict[str, Any]) -> None:
    if _fp32_api():
        cudnn = torch.backends.cudnn
        torch.backends.cuda.matmul.fp32_precision = settings["matmul"]
        cudnn.conv.fp32_precision = settings["conv"]  # type: ignore[attr-defined]
        cudnn.rnn.fp32_precision = settings["rnn"]  # type: ignore[attr-defined]
    else:
        torch.backends.cuda.matmul.allow_tf32 = settings["matmul"]
        torch.backends.cudnn.allow_tf32 = settings["cudnn"]


def _wanted(tf32: bool) -> dict[str, Any]:
    if _fp32_api():
        mode = "tf32" if tf32 else "ieee"
        return {"matmul": mode, "conv": mode, "rnn": mode}
    return {"matmul": tf32, "cudnn": tf32}


def tf32_enabled() -> bool:
    """Whether float32 matrix products or convolutions may run in TF32 now."""
    s = _settings()
    if _fp32_api():
        return "tf32" in (s["matmul"], s["conv"]) or (s["matmul"] == "none" and _global_matmul() in ("high", "medium"))
    return bool(s["matmul"] or s["cudnn"])


def _global_matmul() -> str:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:  # mixed legacy and per-backend settings made elsewhere: PyTorch refuses to say
        return "unknown"


def precision_record() -> dict[str, Any]:
    """What run.json records: `tf32` on/off, the float32 matrix-product precision, the convolutions' setting."""
    s = _settings()
    if _fp32_api():
        matmul = s["matmul"] if s["matmul"] != "none" else _global_matmul()
        conv = s["conv"]
    else:
        matmul = "tf32" if s["matmul"] else _global_matmul()
        conv = "tf32" if s["cudnn"] else "ieee"
    return {"tf32": "on" if tf32_enabled() else "off", "matmul_precision": matmul, "conv_precision": conv}


@contextmanager
def float32_precision(tf32: bool = False) -> Iterator[dict[str, Any]]:
    """TF32 on or off for float32 products and convolutions while inside; yields `precision_record()` as set.

    Blocks may nest and run in several threads at once (the flags are process-wide): while several are inside,
    the newest one's choice holds; when one leaves, the newest remaining one's; when the last leaves, the
    settings from before the first."""
    block = object()
    with _LOCK:
        if not _ACTIVE:
            _SAVED[:] = [_settings()]
        _ACTIVE.append((block, tf32))
        _apply(_wanted(tf32))
        record = precision_record()
    try:
        yield record
    finally:
        with _LOCK:
            _ACTIVE[:] = [a for a in _ACTIVE if a[0] is not block]
            _apply(_wanted(_ACTIVE[-1][1]) if _ACTIVE else _SAVED.pop())
