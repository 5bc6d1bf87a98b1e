"""One forward pass with hooks: every leaf layer's actual input shape, and whether the net is a plain chain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engines.core.errors import ModelError


@dataclass
class LayerCall:
    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...] = ()
    follows: bool = False  # its input is the previous leaf call's output (e.g. a BatchNorm right after its conv)


def trace_layers(model: nn.Module, input_shape: Sequence[int], seed: int = 0) -> tuple[list[LayerCall], str | None]:
    """Leaf-module calls in forward order with their input shapes, and where the plain chain breaks.

    The chain breaks where a layer's input is not the previous layer's output (a residual sum, a
    branch, a functional op that changes values): products of layer bounds then bound nothing.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.rand(1, *input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    calls: list[LayerCall] = []
    state: dict[str, Any] = {"prev": x, "break": None}

    def pre(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            arg = inputs[0] if len(inputs) == 1 else None
            if not isinstance(arg, torch.Tensor):
                state["break"] = state["break"] or name
                calls.append(LayerCall(name, module, ()))
                return
            prev = state["prev"]
            same = prev is not None and prev.numel() == arg.numel() and torch.equal(prev.reshape(-1), arg.reshape(-1))
            if not same:
                state["break"] = state["break"] or name
            calls.append(LayerCall(name, module, tuple(arg.shape[1:]), follows=same and bool(calls)))

        return hook

    def post(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                calls[-1].out_shape = tuple(output.shape[1:])
                state["prev"] = output.detach().clone()
            else:
                state["prev"] = None

        return hook

    handles = []
    for name, module in model.named_modules():
        if not any(True for _ in module.children()):
            handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
    modes = {m: m.training for m in model.modules()}  # restored module by module: a BatchNorm may train alone
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # a model rejects a shape in many ways
        raise ModelError(
            f"the model rejects inputs of shape {'x'.join(map(str, input_shape))}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    last = state["prev"]
    if state["break"] is None and not (
        isinstance(out, torch.Tensor) and last is not None and torch.equal(out.reshape(-1), last.reshape(-1))
    ):
        state["break"] = "(model output)"
    return calls, state["break"]
