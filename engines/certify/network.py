"""A model as a chain of operations (`ops`) that bound propagation can walk, in float64.

Sequential models of Linear, Conv2d, BatchNorm (eval), ReLU, sigmoid, tanh, max/avg pooling, Flatten and
Dropout are supported, with the input normalization the model carries, and torchvision's residual BasicBlock
(a Fork op where the block starts, an Add op where its shortcut joins); anything else is refused in one line. The chain is checked against the
model itself on the images to be certified (`check_matches`), so a hook or custom forward cannot slip by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engines.certify.ops import (
    ACTIVATION_FUNCTIONS,
    Activation,
    Add,
    AvgPool,
    ChannelAffine,
    Conv,
    Fork,
    Linear,
    MaxPool,
    Op,
    Reshape,
    interval_through,
)
from engines.core.errors import InputError

__all__ = ["ACTIVATION_FUNCTIONS", "Activation", "Add", "Fork", "MaxPool", "Network", "Op", "interval_through"]

SUPPORTED = (
    "Linear, Conv2d, BatchNorm1d/2d (eval), ReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout, "
    "torchvision's BasicBlock (residual)"
)
DENSE_BUDGET = 60_000_000  # floats of a dense input-to-layer matrix we agree to build (480 MB in float64)


_ACTIVATIONS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}


@dataclass
class Network:
    """The chain of operations from pixel images (in [0, 1]) to logits."""

    ops: list[Op]
    input_shape: tuple[int, ...]
    _dense: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def affine(self) -> bool:
        return all(op.affine for op in self.ops)

    @property
    def classes(self) -> int:
        return int(math.prod(self.ops[-1].out_shape)) if self.ops else int(math.prod(self.input_shape))

    def forward(self, x: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        saved: list[torch.Tensor] = []
        for op in self.ops[:stop]:
            if isinstance(op, Fork):
                saved.append(x)
            x = op.join(x, saved.pop()) if isinstance(op, Add) else op.forward(x)
        return x

    def dense_prefix(self, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map of ops[:stop] (all affine) as a matrix (N, n) and bias (N,), built once."""
        if stop not in self._dense:
            n = int(math.prod(self.input_shape))
            out = int(math.prod(self.ops[stop - 1].out_shape)) if stop else n
            if n * out > DENSE_BUDGET:
                raise InputError(
                    f"layer {self.ops[stop - 1].name} has {out} outputs over {n} inputs: too large for certify "
                    f"(at most {DENSE_BUDGET:,} entries)"
                )
            p = next((t for op in self.ops for t in vars(op).values() if torch.is_tensor(t)), None)
            dev = p.device if p is not None else torch.device("cpu")
            zero = torch.zeros(1, *self.input_shape, dtype=torch.float64, device=dev)
            bias = self.forward(zero, stop).reshape(-1)
            cols = []
            for i in range(0, n, 256):
                eye = torch.eye(n, dtype=torch.float64, device=dev)[i : i + 256].view(-1, *self.input_shape)
                cols.append(self.forward(eye, stop).reshape(eye.shape[0], -1) - bias)
            self._dense[stop] = (torch.cat(cols).T.contiguous(), bias)
        return self._dense[stop]

    def check_matches(self, model: nn.Module, x: torch.Tensor) -> None:
        """The chain computes what the model computes on these images, or an InputError says it does not."""
        device = next(model.parameters()).device
        with torch.no_grad():
            want = model(x.to(device)).double()
            got = self.forward(x.to(want.device, torch.float64))
        scale = float(want.abs().max()) + 1.0
        err = float((want - got).abs().max()) if want.shape == got.shape else math.inf
        if not err <= 1e-4 * scale:
            raise InputError(
                "the model's output differs from its layers run in sequence (a custom forward or hook?): "
                f"certify bounds sequential models of {SUPPORTED}"
            )


def network_of(
    model: nn.Module,
    input_shape: Sequence[int],
    normalization: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> Network:
    """The model as a chain of operations, or an InputError naming the first layer certify cannot bound."""
    shape = tuple(int(v) for v in input_shape)
    ops: list[Op] = []
    if normalization:
        std = torch.tensor(normalization["std"], dtype=torch.float64, device=device)
        mean = torch.tensor(normalization["mean"], dtype=torch.float64, device=device)
        ops.append(ChannelAffine(1.0 / std, -mean / std, shape, name="normalize"))
    opened: list[tuple[int, ...]] = []  # input shapes of the residual blocks not closed yet
    for name, module in _leaves(model, ""):
        if module is _OPENING:
            opened.append(shape)
            op: Op | None = Fork(shape, name=name)
        elif isinstance(module, _Closing):
            op = Add(_shortcut(name, module.shortcut, opened.pop(), shape, device), shape, name=name)
        else:
            op = _op_of(name, module, shape, device)
        if op is not None:
            ops.append(op)
            shape = op.out_shape
    net = Network(ops, tuple(int(v) for v in input_shape))
    if len(shape) != 1:
        raise InputError(f"the model's output has shape {shape}, not (classes,): certify needs logits")
    return net


class _Closing:
    """Where a residual block's Add goes, with the block's shortcut module (None: the identity)."""

    def __init__(self, shortcut: nn.Module | None) -> None:
        self.shortcut = shortcut


_OPENING = object()  # where a residual block's Fork goes


def _basic_block(module: nn.Module) -> bool:
    try:
        from torchvision.models.resnet import BasicBlock
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(module, BasicBlock)


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, Any]]:
    if _basic_block(module):  # relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)), as its forward computes
        p = f"{prefix}." if prefix else ""
        main = [(f"{p}{n}", getattr(module, n)) for n in ("conv1", "bn1", "relu", "conv2", "bn2")]
        closing = _Closing(module.downsample)  # type: ignore[arg-type]
        return [(f"{p}fork", _OPENING), *main, (f"{p}add", closing), (f"{p}relu", module.relu)]
    children = list(module.named_children())
    if not children:
        return [(prefix or type(module).__name__, module)]
    if not isinstance(module, nn.Sequential):
        raise InputError(
            f"certify bounds sequential models only: {prefix or 'the model'} ({type(module).__name__}) has its own "
            f"forward; supported layers: {SUPPORTED}"
        )
    out = []
    for name, child in children:
        out += _leaves(child, f"{prefix}.{name}" if prefix else name)
    return out


def _shortcut(
    name: str, module: nn.Module | None, shape: tuple[int, ...], out: tuple[int, ...], device: torch.device | str
) -> list[Op]:
    """A residual block's shortcut as affine ops from the block's input shape to its output's (`out`)."""
    ops: list[Op] = []
    for sub, leaf in [] if module is None else _leaves(module, f"{name}.shortcut"):
        op = _op_of(sub, leaf, shape, device)
        if op is None:
            continue
        if not op.affine:
            raise InputError(f"certify cannot bound layer {sub}: a residual shortcut must be affine (conv, batch norm)")
        ops.append(op)
        shape = op.out_shape
    if shape != out:
        raise InputError(f"certify cannot bound {name}: its shortcut gives shape {shape}, its branch {out}")
    return ops


def _f64(t: torch.Tensor | None, like: int, device: torch.device | str) -> torch.Tensor:
    if t is None:
        return torch.zeros(like, dtype=torch.float64, device=device)
    return t.detach().to(device, torch.float64)


def _op_of(name: str, m: nn.Module, shape: tuple[int, ...], device: torch.device | str) -> Op | None:
    """The operation of one layer (None for layers that are the identity in eval mode)."""
    refuse = f"certify cannot bound layer {name} ({type(m).__name__}"
    if isinstance(m, (nn.Dropout, nn.Identity)):
        return None
    if isinstance(m, nn.Linear):
        if shape != (m.in_features,):
            raise InputError(f"{refuse}): it takes {m.in_features} features but receives shape {shape}")
        return Linear(_f64(m.weight, 0, device), _f64(m.bias, m.out_features, device), name=name)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise InputError(f"{refuse} with start_dim {m.start_dim}, end_dim {m.end_dim}): only Flatten()")
        return Reshape(shape, (int(math.prod(shape)),), name=name)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str) and m.padding != "valid":
            raise InputError(f"{refuse} with padding {m.padding!r}/{m.padding_mode}): give numeric zero padding")
        if len(shape) != 3 or shape[0] != m.in_channels:
            raise InputError(f"{refuse}): it takes {m.in_channels} channels but receives shape {shape}")
        pad = 0 if m.padding == "valid" else m.padding
        w = _f64(m.weight, 0, device)
        return Conv(w, _f64(m.bias, m.out_channels, device), shape, m.stride, pad, m.dilation, m.groups, name=name)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None or m.running_var is None or m.training:
            raise InputError(f"{refuse}): batch norm needs running statistics and eval mode")
        c = m.num_features
        scale = 1.0 / torch.sqrt(_f64(m.running_var, c, device) + m.eps)
        if m.affine:
            scale = scale * _f64(m.weight, c, device)
        shift = -_f64(m.running_mean, c, device) * scale + (_f64(m.bias, c, device) if m.affine else 0.0)
        return ChannelAffine(scale, shift, shape, name=name)
    if type(m) in _ACTIVATIONS:
        return Activation(_ACTIVATIONS[type(m)], shape, name=name)
    if isinstance(m, nn.MaxPool2d):
        pair = nn.modules.utils._pair
        if len(shape) != 3:
            raise InputError(f"{refuse}): it receives shape {shape}, not (C, H, W)")
        if pair(m.padding) != (0, 0) or m.ceil_mode or m.return_indices:
            raise InputError(f"{refuse} with padding or ceil_mode): only unpadded max pooling")
        stride = pair(m.stride if m.stride is not None else m.kernel_size)
        return MaxPool(pair(m.kernel_size), stride, pair(m.dilation), shape, name=name)
    if isinstance(m, nn.AvgPool2d):
        if len(shape) != 3:
            raise InputError(f"{refuse}): it receives shape {shape}, not (C, H, W)")
        return AvgPool(m, shape, name=name)
    raise InputError(f"{refuse}); supported: {SUPPORTED}")
