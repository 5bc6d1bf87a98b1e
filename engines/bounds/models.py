"""Models for `blindspot bounds`: every model `engines.core.models.load_model` takes, on the CPU.

The bounds are those of the network itself; a model's input normalization (ImageNet's for the
torchvision names) is a diagonal map in front of it, reported apart with its own factor max 1/std.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from engines.core.errors import InputError
from engines.core.models import ModelRef, load_model, parse_normalization, torchvision_names

__all__ = ["BoundsModel", "load_bounds_model", "parse_input_shape", "torchvision_names"]


@dataclass
class BoundsModel:
    """A model ready for `frame_bounds`, with the input shape it expects and where it came from."""

    model: nn.Module
    name: str
    input_shape: tuple[int, int, int]
    source: str
    normalization: dict[str, Any] | None = None


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'3x224x224' (also ×, *, commas or spaces) -> (3, 224, 224)."""
    parts = [p for p in re.split(r"[x×*,\s]+", text.strip().lower()) if p]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InputError(f"--input must look like CxHxW (e.g. 3x224x224), got {text!r}")
    c, h, w = (int(p) for p in parts)
    if min(c, h, w) < 1 or max(c, h, w) > 16384:
        raise InputError(f"--input sizes must lie in 1..16384, got {text!r}")
    return c, h, w


def load_bounds_model(ref: ModelRef | str) -> BoundsModel:
    """A zoo id, a checkpoint path, a torchvision classifier name or the user's factory; on the CPU."""
    if isinstance(ref, str):
        ref = ModelRef(ref.strip())
    # the network itself is bounded; its input normalization (a diagonal map in front of it) is reported apart
    lm = load_model(replace(ref, normalize="none"), "cpu")
    norm = parse_normalization(ref.normalize or ("imagenet" if lm.kind == "torchvision" else "none"))
    c, h, w = lm.input_shape or (3, 224, 224)
    # a torchvision model keeps its architecture's name (the paper's rows are matched on "alexnet"); whether its
    # weights are random is said by `source`, which every output of the bounds shows
    name = ref.name if lm.kind == "torchvision" else lm.id
    return BoundsModel(
        lm.model,
        name,
        (int(c), int(h), int(w)),
        lm.source,
        norm.to_json() | {"factor": norm.lipschitz} if norm else None,
    )
