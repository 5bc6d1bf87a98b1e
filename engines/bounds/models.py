"""Models for `blindspot bounds`: zoo checkpoints, files, and torchvision classifiers by name.

torchvision models are built with random weights from a fixed seed (no downloads); `weights` loads a
local state dict through `torch.load(weights_only=True)` or safetensors only, never a full pickle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines.core.checkpoint import TORCH_SUFFIXES, WEIGHT_SUFFIXES, load_checkpoint, load_state_file
from engines.core.errors import CheckpointError, InputError, ModelError
from engines.core.zoo import ZOO


@dataclass
class BoundsModel:
    """A model ready for `frame_bounds`, with the input shape it expects and where it came from."""

    model: nn.Module
    name: str
    input_shape: tuple[int, int, int]
    source: str


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'3x224x224' (also ×, *, commas or spaces) -> (3, 224, 224)."""
    parts = [p for p in re.split(r"[x×*,\s]+", text.strip().lower()) if p]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InputError(f"--input must look like CxHxW (e.g. 3x224x224), got {text!r}")
    c, h, w = (int(p) for p in parts)
    if min(c, h, w) < 1 or max(c, h, w) > 16384:
        raise InputError(f"--input sizes must lie in 1..16384, got {text!r}")
    return c, h, w


def torchvision_names() -> list[str]:
    """Classification models torchvision can build (``torchvision.models`` top level)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_torchvision(name: str, seed: int) -> nn.Module:
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return torchvision.models.get_model(name, weights=None)
        except Exception as exc:
            raise ModelError(f"torchvision cannot build {name!r}: {str(exc)[:200]}") from exc


def load_bounds_model(ref: str, weights: str | Path | None = None, seed: int = 0) -> BoundsModel:
    """A zoo id, a checkpoint path, 'alexnet' or any torchvision classifier name; on the CPU."""
    ref = ref.strip()
    if not ref:
        raise InputError("say which model: --model ID|alexnet|TORCHVISION_NAME|PATH")
    path = Path(ref)
    is_file = ref in ZOO or path.suffix in WEIGHT_SUFFIXES + TORCH_SUFFIXES + (".json",) or path.is_file()
    if is_file:
        if weights is not None:
            raise InputError("--weights applies to torchvision models; a checkpoint carries its own weights")
        loaded = load_checkpoint(ref, "cpu")
        spec_input = loaded.meta.get("spec", {}).get("input", [1, 28, 28])
        c, h, w = (int(v) for v in spec_input)
        return BoundsModel(
            loaded.model, loaded.id, (c, h, w), f"checkpoint {loaded.path} (sha256 {loaded.sha256[:12]})"
        )
    names = torchvision_names()
    if ref not in names:
        close = [n for n in names if ref.lower() in n][:5]
        hint = f" (torchvision has {', '.join(close)})" if close else ""
        raise ModelError(
            f"unknown model {ref!r}: not a zoo id ({', '.join(ZOO)}), an existing checkpoint file "
            f"nor a torchvision classifier{hint}"
        )
    model = _build_torchvision(ref, seed)
    source = f"torchvision {ref}, random init (seed {seed})"
    if weights is not None:
        state = load_state_file(Path(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            reason = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
            raise CheckpointError(f"{weights}: weights do not fit torchvision {ref}: {reason[:300]}") from exc
        source = f"torchvision {ref} with weights {weights}"
    model.eval()
    size = 299 if ref == "inception_v3" else 224
    return BoundsModel(model, ref, (3, size, size), source)
