"""The operations of a chain that bound propagation walks (`network.Network`), in float64.

Each operation knows its forward map, its interval map (IBP), and, when affine, how a linear function of its
output pulls back to its input (`back`: Λ ↦ Λ·A and the bias Λ·b). A residual block is a Fork where it starts
and an Add where its shortcut (affine ops) joins the main branch; the chain's walkers keep a stack of the open
blocks' inputs (`interval_through`, `Network.forward`, `crown.back_substitute`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input


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
        grad = conv2d_input(
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


class _Identity(Op):
    """An op that passes its input on unchanged (the residual block's ends, on the main path)."""

    def __post_init__(self) -> None:
        self.out_shape = self.in_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo, hi

    def back(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lam, lam.new_zeros(lam.shape[:2])


@dataclass
class Fork(_Identity):
    """The start of a residual block: the identity, whose output the block's Add takes up again."""

    in_shape: tuple[int, ...]
    name: str = "fork"


@dataclass
class Add(_Identity):
    """The end of a residual block: main branch + shortcut(the Fork's output), the shortcut a chain of affine
    ops (none: the identity). On the main path it is the identity; `join*` and `back_skip` add the shortcut."""

    shortcut: list[Op]
    in_shape: tuple[int, ...]
    name: str = "add"

    def join(self, x: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
        for op in self.shortcut:
            saved = op.forward(saved)
        return x + saved

    def join_interval(self, lo: torch.Tensor, hi: torch.Tensor, saved: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        slo, shi = saved
        for op in self.shortcut:
            slo, shi = op.interval(slo, shi)
        return lo + slo, hi + shi

    def back_skip(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Λ pulled back through the shortcut to the Fork's output: (Λ·S, Λ·s)."""
        bias = lam.new_zeros(lam.shape[:2])
        for op in reversed(self.shortcut):
            lam, b = op.back(lam)
            bias = bias + b
        return lam, bias


def interval_through(op: Op, lo: torch.Tensor, hi: torch.Tensor, saved: list) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through one op of a chain; `saved` is the chain's stack of open residual blocks' inputs."""
    if isinstance(op, Fork):
        saved.append((lo, hi))
    elif isinstance(op, Add):
        return op.join_interval(lo, hi, saved.pop())
    return op.interval(lo, hi)


ACTIVATION_FUNCTIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
