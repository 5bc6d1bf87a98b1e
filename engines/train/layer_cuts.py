"""A model cut after a layer: the lower part maps images to the layer's output, the upper part maps it to logits.

§4.2's adversarial examples for layer k are found for the upper part g_k, from φ_k(x), in the box of the layer's
activation ([0, 1] for sigmoid, [-1, 1] for tanh, [0, ∞) for ReLU; "input" is the image box [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engines.core.errors import InputError

INPUT = "input"
BOXES: dict[type[nn.Module], tuple[float, float]] = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.ReLU: (0.0, math.inf),
}


@dataclass(frozen=True)
class LayerCut:
    """The model cut after one layer: `lower` maps images to the layer's output, `upper` maps it to logits."""

    name: str
    lower: nn.Module
    upper: nn.Module
    box: tuple[float, float]


def layer_cuts(model: nn.Module, layers: tuple[str, ...] | None) -> list[LayerCut]:
    """The cuts for `layers` (None: "input" and every activation of the model), in the model's order."""
    if not isinstance(model, nn.Sequential):
        if layers is None or tuple(layers) == (INPUT,):
            return [LayerCut(INPUT, nn.Identity(), model, (0.0, 1.0))]
        raise InputError("per-layer adversarial examples need an nn.Sequential model: use --adv-layers input")
    children = list(model.named_children())
    acts = [name for name, m in children if type(m) in BOXES]
    wanted = (INPUT, *acts) if layers is None else tuple(layers)
    unknown = [w for w in wanted if w != INPUT and w not in acts]
    if unknown:
        raise InputError(f"unknown layer {unknown[0]!r} for --adv-layers: choose from {', '.join((INPUT, *acts))}")
    cuts = []
    if INPUT in wanted:
        cuts.append(LayerCut(INPUT, nn.Identity(), model, (0.0, 1.0)))
    for i, (name, module) in enumerate(children):
        if name in wanted:
            cuts.append(LayerCut(name, model[: i + 1], model[i + 1 :], BOXES[type(module)]))
    return cuts


def layer_shapes(cuts: list[LayerCut], example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The shape of each cut's layer output for one example (the pool's slots)."""
    with torch.no_grad():
        return {c.name: tuple(c.lower(example[:1]).shape[1:]) for c in cuts}
