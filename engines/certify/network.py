"""A model as a chain of operations that bound propagation can walk, in float64.

Each operation knows its forward map, its interval map (IBP), and, when affine, how a linear function of
its output pulls back to its input (`back`: Λ ↦ Λ·A and the bias Λ·b). Sequential models of Linear, Conv2d,
BatchNorm (eval), ReLU, sigmoid, tanh, max/avg pooling, Flatten and Dropout are supported, with the input
normalization the model carries; anything else is refused in one line. The chain is checked against the
model itself on the images to be certified (`check_matches`), so a hook or custom forward cannot slip by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engines.core.errors import InputError

SUPPORTED = "Linear, Conv2d, BatchNorm1d/2d (eval), ReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout"
DENSE_BUDGET = 60_000_000  # floats of a dense input-to-layer matrix we agree to build (480 MB in float64)


class Op:
    """One step of the chain; shapes are per image (no batch dimension)."""

    affine = True
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For Λ of shape (B, S, *out): (Λ·A of shape (B, S, *in), Λ·b of shape (B, S))."""
        raise NotImplementedError


def _rows(lam: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return lam.reshape(-1, *shape)


@dataclass
class Linear(Op):
    weight: torch.Tensor
    bias: torch.Tensor
    name: str = "linear"

    def __post_init__(self) -> None:
        self.in_shape, self.out_shape = (self.weight.shape[1],), (self.weight.shape[0],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, r = self.forward((lo + hi) / 2), ((hi - lo) / 2) @ self.weight.abs().T
        return c - r, c + r

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lam @ self.weight, lam @ self.bias


@dataclass
class Conv(Op):
    weight: torch.Tensor
    bias: torch.Tensor
    in_shape: tuple[int, ...]
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    name: str = "conv"

    def __post_init__(self) -> None:
        probe = torch.zeros(1, *self.in_shape, dtype=self.weight.dtype, device=self.weight.device)
        self.out_shape = tuple(self._conv(probe, self.weight).shape[1:])

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight) + self.bias.view(-1, 1, 1)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, r = self.forward((lo + hi) / 2), self._conv((hi - lo) / 2, self.weight.abs())
        return c - r, c + r

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = lam.shape[:2]
        flat = _rows(lam, self.out_shape)
        grad = torch.nn.grad.conv2d_input(
            (flat.shape[0], *self.in_shape), self.weight, flat, self.stride, self.padding, self.dilation, self.groups
        )
        bias = (lam.sum(dim=(-1, -2)) * self.bias).sum(-1)
        return grad.view(b, s, *self.in_shape), bias


@dataclass
class ChannelAffine(Op):
    """y = x·scale[c] + shift[c] per channel: input normalization and BatchNorm in eval mode."""

    scale: torch.Tensor
    shift: torch.Tensor
    in_shape: tuple[int, ...]
    name: str = "channel-affine"

    def __post_init__(self) -> None:
        self.out_shape = self.in_shape
        view = (-1,) + (1,) * (len(self.in_shape) - 1)
        self._scale, self._shift = self.scale.view(view), self.shift.view(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._scale + self._shift

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.forward(lo), self.forward(hi)
        return torch.minimum(a, b), torch.maximum(a, b)

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = (lam * self._shift).flatten(2).sum(-1)
        return lam * self._scale, bias


@dataclass
class Reshape(Op):
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    name: str = "flatten"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(lo), self.forward(hi)

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lam.reshape(*lam.shape[:2], *self.in_shape), lam.new_zeros(lam.shape[:2])


@dataclass
class AvgPool(Op):
    """An average pooling: a linear map with non-negative weights and no bias."""

    module: nn.AvgPool2d
    in_shape: tuple[int, ...]
    name: str = "avgpool"

    def __post_init__(self) -> None:
        self.out_shape = tuple(self.module(torch.zeros(1, *self.in_shape)).shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module(lo), self.module(hi)

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = lam.shape[:2]
        flat = _rows(lam, self.out_shape)
        x0 = torch.zeros(flat.shape[0], *self.in_shape, dtype=lam.dtype, device=lam.device, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.module(x0), x0, flat)
        return grad.view(b, s, *self.in_shape), lam.new_zeros((b, s))


@dataclass
class Activation(Op):
    """An elementwise monotone activation: relu, sigmoid or tanh."""

    kind: str
    in_shape: tuple[int, ...]
    name: str = "activation"
    affine = False

    def __post_init__(self) -> None:
        self.out_shape = self.in_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATION_FUNCTIONS[self.kind](x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(lo), self.forward(hi)


@dataclass
class MaxPool(Op):
    """Max pooling without padding (windows read with unfold, so any kernel, stride and dilation)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    in_shape: tuple[int, ...]
    name: str = "maxpool"
    affine = False
    _index: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        c, h, w = self.in_shape
        oh = (h - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        ow = (w - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        self.out_shape = (c, oh, ow)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, k, L): each output's window, k = kernel area, L = output positions."""
        b, c = x.shape[:2]
        cols = F.unfold(x.reshape(b * c, 1, *x.shape[2:]), self.kernel, self.dilation, 0, self.stride)
        return cols.view(b, c, cols.shape[1], cols.shape[2])

    def window_index(self, device: torch.device) -> torch.Tensor:
        """(k, L): the flat input position (h·W + w) of each window element."""
        if self._index is None or self._index.device != device:
            h, w = self.in_shape[1:]
            pos = torch.arange(h * w, dtype=torch.float64, device=device).view(1, 1, h, w)
            self._index = self.windows(pos)[0, 0].round().long()
        return self._index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.windows(x).amax(2).view(x.shape[0], *self.out_shape)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(lo), self.forward(hi)


ACTIVATION_FUNCTIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
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
        for op in self.ops[:stop]:
            x = op.forward(x)
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
    for name, module in _leaves(model, ""):
        op = _op_of(name, module, shape, device)
        if op is not None:
            ops.append(op)
            shape = op.out_shape
    net = Network(ops, tuple(int(v) for v in input_shape))
    if len(shape) != 1:
        raise InputError(f"the model's output has shape {shape}, not (classes,): certify needs logits")
    return net


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
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
