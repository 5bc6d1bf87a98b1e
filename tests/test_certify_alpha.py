"""α-CROWN (optimised slopes) against independent oracles: every slope it may pick encloses the activation,
its margin bounds never exceed what 1e5 random points and an attack find in the ball, it is never looser than
CROWN (and tighter on the zoo's sigmoid net), and it is the exact minimum on an affine model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.certify.alpha import alpha_linear_bounds
from engines.certify.concretize import tight_lower
from engines.certify.crown import margin_lower, margin_spec
from engines.certify.network import network_of
from engines.certify.radius import crown_radius
from engines.certify.relax import free_tangents, relax, tangent_line
from tests.test_certify_bounds import _affine_instance, _images, _nets, _worst_in_ball, zoo_sigmoid  # noqa: F401

F64 = torch.float64


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_every_tangent_point_in_the_free_ranges_encloses_the_function(kind: str) -> None:
    g = torch.Generator().manual_seed(11)
    lo = torch.randn(3000, generator=g, dtype=F64) * 4
    hi = lo + torch.rand(3000, generator=g, dtype=F64) ** 2 * 8
    t = free_tangents(kind, lo, hi)
    assert bool(t.low_free.any()) and bool(t.up_free.any())
    crown = relax(kind, lo, hi)
    z = lo + torch.linspace(0, 1, 401, dtype=F64)[:, None] * (hi - lo)
    f = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[kind](z)
    for alpha in (torch.zeros_like(lo), torch.ones_like(lo), torch.rand(3000, generator=g, dtype=F64)):
        for upper, free, a, b in ((False, t.low_free, t.low_a, t.low_b), (True, t.up_free, t.up_a, t.up_b)):
            k, off = tangent_line(kind, a + alpha * (b - a), lo, hi, upper)
            line = k * z + off
            ok = line >= f - 1e-15 if upper else line <= f + 1e-15
            assert bool(ok[:, free].all()), (kind, upper)
    # CROWN's own choice is the starting point of the ranges
    for upper, free, a, b, init in (
        (False, t.low_free, t.low_a, t.low_b, t.low_init),
        (True, t.up_free, t.up_a, t.up_b, t.up_init),
    ):
        k, _ = tangent_line(kind, a + init * (b - a), lo, hi, upper)
        own = crown.upper_slope if upper else crown.lower_slope
        assert torch.allclose(k[free], own[free], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["sigmoid-mlp", "tanh-mlp", "relu-conv"])
def test_alpha_crown_bounds_are_sound_against_random_points_and_attacks_in_the_ball(name: str) -> None:
    model = _nets()[name].eval()
    net = network_of(model, (1, 6, 6))
    x = _images(3, 36, seed=8)
    labels = net.forward(x.view(3, 1, 6, 6)).argmax(1)
    spec = margin_spec(labels, 5)
    for eps_value in (0.1, 0.5, 1.5):
        eps = torch.full((3,), eps_value, dtype=F64)
        a, bias, _ = alpha_linear_bounds(net, x, eps, spec, steps=8)
        bound = (tight_lower(a, x, eps) + bias).amin(1)
        crown = margin_lower(net, x, eps, spec, "crown").amin(1)
        found = _worst_in_ball(net, x, eps, spec)
        assert torch.all(bound <= found + 1e-9), (name, eps_value, bound, found)
        assert torch.all(bound >= crown - 1e-9), (name, eps_value, bound, crown)


def test_alpha_crown_is_never_looser_than_crown_and_tighter_on_the_zoo_net(zoo_sigmoid) -> None:  # noqa: F811
    _, net, x, labels = zoo_sigmoid
    spec = margin_spec(labels, 10)
    eps = torch.full((len(x),), 0.8, dtype=F64)
    a, bias, _ = alpha_linear_bounds(net, x, eps, spec)
    alpha = tight_lower(a, x, eps) + bias
    crown = margin_lower(net, x, eps, spec, "crown")
    assert torch.all(alpha >= crown - 1e-9)
    assert float((alpha - crown).amin(1).median()) > 0  # the optimised slopes buy something on most images
    top = torch.full((len(x),), 3.0, dtype=F64)
    r_crown = crown_radius(net, x, spec, top)
    r_alpha = crown_radius(net, x, spec, top, alpha_steps=5)
    assert torch.all(r_alpha >= r_crown)
    assert bool((r_alpha > r_crown * 1.01).any())
    found = _worst_in_ball(net, x, r_alpha, spec, samples=20_000)
    assert torch.all(found > 0)


def _resnet() -> nn.Module:
    """A small residual net: a stem, a BasicBlock, and a strided BasicBlock with a conv + batch-norm shortcut."""
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(3)
    down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        BasicBlock(4, 4),
        BasicBlock(4, 8, stride=2, downsample=down),
        nn.Flatten(),
        nn.Linear(72, 5),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("method", ["crown", "alpha-crown", "ibp"])
def test_residual_blocks_are_bounded_soundly(method: str) -> None:
    model = _resnet()
    net = network_of(model, (1, 6, 6))
    x = _images(3, 36, seed=12)
    net.check_matches(model, x.view(3, 1, 6, 6).float())  # the chain computes the blocks' own forward
    labels = net.forward(x.view(3, 1, 6, 6)).argmax(1)
    spec = margin_spec(labels, 5)
    for eps_value in (0.05, 0.3, 1.0):
        eps = torch.full((3,), eps_value, dtype=F64)
        if method == "alpha-crown":
            a, bias, _ = alpha_linear_bounds(net, x, eps, spec, steps=5)
            bound = (tight_lower(a, x, eps) + bias).amin(1)
        else:
            bound = margin_lower(net, x, eps, spec, method).amin(1)
        found = _worst_in_ball(net, x, eps, spec)
        assert torch.all(bound <= found + 1e-9), (method, eps_value, bound, found)
        if method == "crown":
            assert torch.all(bound >= margin_lower(net, x, eps, spec, "ibp").amin(1) - 1e-9)
