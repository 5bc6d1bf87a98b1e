"""Lipschitz factors of the layers between the weight layers: activations, pooling, normalisation.

The paper (§4.3) takes ReLU and max-pooling as contractive (×1). That holds for max-pooling only when
windows do not overlap: an input that is the maximum of m windows moves m outputs, so the exact
constant is √m (AlexNet's 3×3/2 pooling: m = 4, factor 2). Both the exact factor and the paper's are
kept, so the product can be shown either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engines.bounds.conv import pair, power_iteration

# sup |f'| of smooth activations, maximised numerically once and rounded up
SILU_MAX_SLOPE = 1.0998394
GELU_MAX_SLOPE = 1.1289042
MISH_MAX_SLOPE = 1.0884982

_ONE = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Tanh,
    nn.Softsign,
    nn.Softplus,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Softmax,
)
_SLOPES: dict[type, tuple[float, str]] = {
    nn.Sigmoid: (0.25, "sup σ' = 1/4"),
    nn.Hardsigmoid: (1 / 6, "slope 1/6"),
    nn.Hardswish: (1.5, "sup slope 3/2"),
    nn.SiLU: (SILU_MAX_SLOPE, "sup slope of x·σ(x)"),
    nn.GELU: (GELU_MAX_SLOPE, "sup slope of x·Φ(x)"),
    nn.Mish: (MISH_MAX_SLOPE, "sup slope of x·tanh(softplus x)"),
}


@dataclass
class Factor:
    """One non-weight layer's contribution to the product of upper bounds."""

    name: str
    kind: str
    factor: float | None  # exact Lipschitz constant (None: unknown, the product is then not a bound)
    paper_factor: float | None  # what the paper's convention counts (max-pooling ×1)
    reason: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "factor": self.factor,
            "paper_factor": self.paper_factor,
            "reason": self.reason,
        }


def lipschitz_factor(name: str, module: nn.Module, in_shape: tuple[int, ...]) -> Factor:
    """The Lipschitz constant (ℓ2) of a parameter-free or elementwise layer at this input shape."""
    kind = type(module).__name__
    if isinstance(module, nn.Sigmoid | nn.Hardsigmoid | nn.Hardswish | nn.SiLU | nn.GELU | nn.Mish):
        value, why = _SLOPES[type(module)]
        return Factor(name, kind, value, value, why)
    if isinstance(module, _ONE):
        why = (
            "identity in eval mode"
            if isinstance(module, nn.Dropout | nn.Identity) or "Dropout" in kind
            else ("reshape" if isinstance(module, nn.Flatten | nn.Unflatten) else "1-Lipschitz (contractive)")
        )
        return Factor(name, kind, 1.0, 1.0, why)
    if isinstance(module, nn.LeakyReLU):
        v = max(1.0, abs(module.negative_slope))
        return Factor(name, kind, v, v, f"max(1, |slope {module.negative_slope:g}|)")
    if isinstance(module, nn.ELU | nn.CELU):
        v = max(1.0, float(module.alpha))
        return Factor(name, kind, v, v, f"max(1, α={module.alpha:g})")
    if isinstance(module, nn.SELU):
        v = 1.0507009873554805 * 1.6732632423543772
        return Factor(name, kind, v, v, "scale·α")
    if isinstance(module, nn.PReLU):
        v = max(1.0, float(module.weight.detach().abs().max()))
        return Factor(name, kind, v, v, "max(1, max |a|)")
    if isinstance(module, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
        m = max_pool_multiplicity(module, in_shape[-2:])
        why = (
            "non-overlapping windows: contractive"
            if m == 1
            else (f"overlapping windows: an input sits in up to {m} windows, so √{m} (the paper counts ×1)")
        )
        return Factor(name, kind, math.sqrt(m), 1.0, why)
    if isinstance(module, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        v = _linear_pool_norm(module, in_shape[-2:])
        return Factor(name, kind, v, v, "linear: its operator norm")
    scale = batchnorm_scale(module)
    if scale is not None:
        v = float(scale.abs().max())
        return Factor(name, kind, v, v, "eval mode: per-channel scale γ/√(var+ε), its largest |·|")
    return Factor(name, kind, None, None, "unknown Lipschitz constant")


def batchnorm_scale(module: nn.Module) -> torch.Tensor | None:
    """An eval-mode BatchNorm's per-channel scale γ/√(var+ε) (float64; γ = 1 without affine), None for others.

    Its shift β − γ·mean/√(var+ε) moves outputs only: it enters no difference, so no bound.
    """
    if not isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) or module.running_var is None:
        return None
    scale = 1 / torch.sqrt(module.running_var.detach().double() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().double()
    return scale


def _windows(n: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> list[range]:
    return [
        range(i * stride - padding, i * stride - padding + dilation * (kernel - 1) + 1, dilation) for i in range(out)
    ]


def _adaptive_windows(n: int, out: int) -> list[range]:
    return [range((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def max_pool_multiplicity(module: nn.MaxPool2d | nn.AdaptiveMaxPool2d, in_hw: tuple[int, ...]) -> int:
    """Largest number of pooling windows that share one input position."""
    best = 1
    for axis, n in enumerate(in_hw):
        if isinstance(module, nn.AdaptiveMaxPool2d):
            size = module.output_size  # an int, or one entry per axis where None keeps the input's size
            out = size if isinstance(size, int) else size[axis] if size is not None else None
            wins = _adaptive_windows(n, out or n)
        else:
            k, s = pair(module.kernel_size)[axis], pair(module.stride or module.kernel_size)[axis]
            p, d = pair(module.padding)[axis], pair(module.dilation)[axis]
            size = n + 2 * p - d * (k - 1) - 1
            out = (-(-size // s) if module.ceil_mode else size // s) + 1
            if module.ceil_mode and (out - 1) * s >= n + p:
                out -= 1  # PyTorch drops a last window that would start in the right padding
            wins = _windows(n, out, k, s, p, d)
        count = [0] * n
        for w in wins:
            for u in w:
                if 0 <= u < n:
                    count[u] += 1
        best *= max(count)
    return best


def _linear_pool_norm(module: nn.Module, in_hw: tuple[int, ...]) -> float:
    """Operator norm of an average pooling (channels never mix: one channel's matrix is enough)."""
    h, w = int(in_hw[0]), int(in_hw[1])
    if h * w <= 4096:
        eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
        return float(torch.linalg.svdvals(module(eye).reshape(h * w, -1))[0])
    x0 = torch.randn(1, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return power_iteration(module, x0, max_iter=300, tol=1e-9).sigma
