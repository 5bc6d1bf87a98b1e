"""Frame bounds with BatchNorm: an eval-mode BatchNorm after a conv or linear layer is folded into it (the exact
norm of the composed map, against the dense operator); one that must not be folded stays a factor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engines.bounds.network import folded_name, frame_bounds


class _ConvBN(nn.Module):
    """conv1 → bn1 (→ ReLU): the pattern whose BatchNorm is folded into the convolution's bound."""

    def __init__(self, stride: int, padding_mode: str = "circular", relu_first: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride, padding=1, padding_mode=padding_mode)
        self.act = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(4)
        self.relu_first = relu_first

    def forward(self, x):
        return self.bn1(self.act(self.conv1(x))) if self.relu_first else self.act(self.bn1(self.conv1(x)))


def _randomise_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        bn.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.05)
        bn.weight.copy_(torch.randn(n, generator=gen) * 2)
        bn.bias.copy_(torch.randn(n, generator=gen))


def _dense_linear_part(fn, in_shape) -> torch.Tensor:
    """The matrix of x ↦ fn(x) − fn(0) (the map without its bias), from the identity basis."""
    d = math.prod(in_shape)
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *in_shape)
    with torch.no_grad():
        return (fn(eye) - fn(torch.zeros(1, *in_shape, dtype=torch.float64))).reshape(d, -1)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_batchnorm_is_folded_into_the_exact_norm_of_the_composed_map(stride):
    torch.manual_seed(stride)
    net = _ConvBN(stride).double().eval()
    _randomise_bn(net.bn1, seed=10 + stride)
    result = frame_bounds(net, (3, 8, 8), power_iters=300)
    (layer,) = result.layers
    assert (layer.name, layer.label, layer.folded) == ("conv1+bn1", "Conv. 1+BN", "bn1")
    assert "bn1 folded in" in " ".join(layer.notes) and "BatchNorm bn1 folded in" in layer.method
    assert [f.kind for f in result.factors] == ["ReLU"]  # the BatchNorm is no factor any more
    # circular padding: the layer as it runs is the circular operator, conv∘BN's matrix built from the identity
    ref = torch.linalg.svdvals(_dense_linear_part(lambda x: net.bn1(net.conv1(x)), (3, 8, 8)))
    assert layer.upper == pytest.approx(float(ref[0]), rel=1e-10)
    assert layer.upper_real == pytest.approx(float(ref[0]), rel=1e-10)
    np.testing.assert_allclose(layer.spectrum.numpy(), ref.numpy(), rtol=0, atol=1e-10 * float(ref[0]))
    assert layer.lower == pytest.approx(float(ref[-1]), rel=1e-8)
    assert layer.power["sigma"] <= layer.upper * (1 + 1e-9) and layer.power["sigma"] >= 0.9 * layer.upper
    # tighter than (or equal to) the product the factor route gives: ‖conv‖ · max |γ/√(var+ε)|
    scale = (net.bn1.weight / torch.sqrt(net.bn1.running_var + net.bn1.eps)).detach().abs().max()
    conv_only = torch.linalg.svdvals(_dense_linear_part(net.conv1, (3, 8, 8)))[0]
    assert layer.upper < float(conv_only * scale) * (1 - 1e-3)


def test_folded_zero_padded_layer_keeps_a_guaranteed_bound():
    torch.manual_seed(3)
    net = _ConvBN(2, padding_mode="zeros").double().eval()
    _randomise_bn(net.bn1, seed=4)
    (layer,) = frame_bounds(net, (3, 8, 8), power_iters=500).layers
    real = torch.linalg.svdvals(_dense_linear_part(lambda x: net.bn1(net.conv1(x)), (3, 8, 8)))[0]
    assert layer.folded == "bn1"
    assert layer.power["sigma"] == pytest.approx(float(real), rel=1e-4)  # power iteration through conv∘BN
    assert float(real) <= layer.upper_real * (1 + 1e-12)


@pytest.mark.parametrize("case", ["after_relu", "train_mode"])
def test_batchnorm_that_must_not_be_folded_stays_a_factor(case):
    torch.manual_seed(5)
    net = _ConvBN(1, relu_first=case == "after_relu").double().eval()
    _randomise_bn(net.bn1, seed=6)
    if case == "train_mode":
        net.bn1.train()
    result = frame_bounds(net, (3, 8, 8), power_iters=0)
    (layer,) = result.layers
    assert (layer.name, layer.label, layer.folded) == ("conv1", "Conv. 1", "")
    bn = [f for f in result.factors if f.kind == "BatchNorm2d"]
    scale = (net.bn1.weight / torch.sqrt(net.bn1.running_var + net.bn1.eps)).detach().abs().max()
    assert len(bn) == 1 and bn[0].name == "bn1" and bn[0].factor == pytest.approx(float(scale), rel=1e-12)
    conv_only = torch.linalg.svdvals(_dense_linear_part(net.conv1, (3, 8, 8)))[0]
    assert layer.upper == pytest.approx(float(conv_only), rel=1e-10)
    assert result.product_table == pytest.approx(float(conv_only * scale), rel=1e-10)


def test_linear_batchnorm1d_is_folded():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(12, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 5)).double().eval()
    _randomise_bn(net[1], seed=8)
    result = frame_bounds(net, (12,))
    first, second = result.layers
    assert (first.name, first.label, first.folded) == ("0+1", "FC. 1+BN", "1")
    ref = torch.linalg.svdvals(_dense_linear_part(lambda x: net[1](net[0](x)), (12,)))
    np.testing.assert_allclose(first.spectrum.numpy(), ref.numpy(), rtol=1e-10)
    assert second.folded == "" and [f.kind for f in result.factors] == ["ReLU"]
    assert result.chain and result.lipschitz_upper == pytest.approx(first.upper * second.upper, rel=1e-12)


def test_folded_names():

    assert folded_name("conv1", "bn1") == "conv1+bn1"
    assert folded_name("layer1.0.conv1", "layer1.0.bn1") == "layer1.0.conv1+bn1"
    assert folded_name("layer2.0.downsample.0", "layer2.0.downsample.1") == (
        "layer2.0.downsample.0+layer2.0.downsample.1"
    )
