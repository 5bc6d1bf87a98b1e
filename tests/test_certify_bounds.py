"""Certified bounds (issue 25) against independent oracles: scipy's SLSQP, random search, random points in the
ball, projected-gradient attacks inside it, and the exact minimum of affine models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from engines.certify.concretize import BallBox, certified_radius, cheap_lower, tight_lower
from engines.certify.crown import margin_lower, margin_spec
from engines.certify.exact import exact_untargeted, solve_targets
from engines.certify.lipschitz import certified_radius as lipschitz_radius
from engines.certify.lipschitz import lipschitz_constant
from engines.certify.network import network_of
from engines.certify.radius import bisect_radius, crown_radius
from engines.certify.relax import relax
from engines.core.errors import InputError
from engines.core.model_data import open_model_data, take_images
from engines.core.models import load_model

F64 = torch.float64


def _images(b: int, n: int, seed: int = 0) -> torch.Tensor:
    """Images like MNIST's: a third of the pixels at 0, some at 1, the rest in between."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, generator=g, dtype=F64)
    x[:, : n // 3] = 0
    x[:, n // 3 : n // 3 + n // 6] = 1
    return x


def _slsqp_min(a: np.ndarray, x: np.ndarray, eps: float) -> float:
    cons = [{"type": "ineq", "fun": lambda z: eps**2 - ((z - x) ** 2).sum(), "jac": lambda z: -2 * (z - x)}]
    r = minimize(
        lambda z: a @ z,
        x,
        jac=lambda z: a,
        bounds=[(0, 1)] * len(x),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return float(r.fun)


@pytest.mark.parametrize("eps", [0.05, 0.4, 1.2, 5.0])
def test_the_ball_box_minimum_matches_slsqp_and_never_exceeds_it(eps: float) -> None:
    x = _images(3, 14)
    a = torch.randn(3, 2, 14, generator=torch.Generator().manual_seed(1), dtype=F64)
    e = torch.full((3,), eps, dtype=F64)
    tight, cheap = tight_lower(a, x, e), cheap_lower(a, x, e)
    ref = torch.tensor(
        [[_slsqp_min(a[b, s].numpy(), x[b].numpy(), eps) for s in range(2)] for b in range(3)], dtype=F64
    )
    assert torch.all(tight <= ref + 1e-7)  # sound (SLSQP meets the ball constraint to about 1e-8)
    assert torch.allclose(tight, ref, atol=1e-6)  # and tight
    assert torch.all(cheap <= tight + 1e-9)


def test_the_closed_form_radius_is_certified_and_the_largest() -> None:
    x = _images(4, 20, seed=2)
    a = torch.randn(4, 3, 20, generator=torch.Generator().manual_seed(3), dtype=F64)
    bias = (a * x[:, None]).sum(-1).neg() + torch.tensor([0.5, 1.0, 2.0], dtype=F64)  # margin 0.5.. at x
    r = certified_radius(a, bias, x, torch.full((4,), 100.0, dtype=F64))
    box = BallBox(a, x)
    assert torch.all(r > 0)
    assert torch.all((box.lower(r) + bias).amin(-1) > 0)
    worst_beyond = torch.tensor(
        [
            min(_slsqp_min(a[b, s].numpy(), x[b].numpy(), float(r[b]) * 1.001) + float(bias[b, s]) for s in range(3))
            for b in range(4)
        ],
        dtype=F64,
    )
    assert torch.all(worst_beyond < 0)  # a hair further out, some row is beaten: nothing left on the table


def _affine_instance(k: int = 4, n: int = 12, b: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(k, n, generator=g, dtype=F64), torch.randn(k, generator=g, dtype=F64) * 0.3, _images(b, n, 5)


def _slsqp_qp(w: np.ndarray, c: np.ndarray, t: int, x: np.ndarray) -> float:
    cons = [
        {"type": "ineq", "fun": (lambda z, j=j: (w[t] - w[j]) @ z + c[t] - c[j]), "jac": (lambda z, j=j: w[t] - w[j])}
        for j in range(len(w))
        if j != t
    ]
    r = minimize(
        lambda z: 0.5 * ((z - x) ** 2).sum(),
        x,
        jac=lambda z: z - x,
        bounds=[(0, 1)] * len(x),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    return math.sqrt(2 * r.fun) if r.success else math.inf


def test_the_exact_minimum_matches_slsqp_lies_on_the_boundary_and_random_search_never_beats_it() -> None:
    w, c, x = _affine_instance()
    targets = ((x @ w.T + c).argmax(1) + torch.tensor([1, 2, 3, 1, 2])) % 4  # never the class x is in
    res = solve_targets(w, c, x, targets)
    for i, t in enumerate(targets.tolist()):
        ref = _slsqp_qp(w.numpy(), c.numpy(), t, x[i].numpy())
        assert res.lower[i] == pytest.approx(ref, rel=1e-5, abs=1e-7)
        z = res.z[i]
        assert float(z.min()) >= 0 and float(z.max()) <= 1
        slack = torch.stack([(w[t] - w[j]) @ z + c[t] - c[j] for j in range(4) if j != t])
        assert float(slack.min()) == pytest.approx(0.0, abs=1e-6)  # on the decision boundary, not beyond
    g = torch.Generator().manual_seed(6)
    for i, t in enumerate(targets.tolist()):  # 1e5 random points of the box: none in the target's region is closer
        z = torch.rand(100_000, 12, generator=g, dtype=F64) * 0.6 + (x[i] - 0.3)
        z = z.clamp(0, 1)
        hit = (z @ w.T + c).argmax(1) == t
        if hit.any():
            assert float((z[hit] - x[i]).norm(dim=1).min()) >= float(res.lower[i]) * (1 - 1e-9)


def test_the_untargeted_exact_minimum_is_the_smallest_over_targets() -> None:
    w, c, x = _affine_instance()
    labels = (x @ w.T + c).argmax(1)
    best, target, _ = exact_untargeted(w, c, x, labels)
    for i in range(len(x)):
        each = [_slsqp_qp(w.numpy(), c.numpy(), t, x[i].numpy()) for t in range(4) if t != int(labels[i])]
        assert float(best[i]) == pytest.approx(min(each), rel=1e-5)
        assert int(target[i]) != int(labels[i])


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    return {
        "sigmoid-mlp": nn.Sequential(
            nn.Flatten(), nn.Linear(36, 20), nn.Sigmoid(), nn.Linear(20, 12), nn.Sigmoid(), nn.Linear(12, 5)
        ),
        "tanh-mlp": nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 5)),
        "relu-conv": nn.Sequential(
            nn.Conv2d(1, 4, 3),
            bn,
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 2, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4, 5),
        ),
    }


def _worst_in_ball(net, x, eps, spec, samples=100_000, pgd_steps=30) -> torch.Tensor:
    """The smallest margin found in the ball ∩ box: random points (a share pushed to the sphere) and a
    projected-gradient descent on the smallest margin."""
    b, n = x.shape
    g = torch.Generator().manual_seed(7)
    worst = torch.full((b,), math.inf, dtype=F64)
    per = samples // 10
    for _ in range(10):
        d = torch.randn(b, per, n, generator=g, dtype=F64)
        scale = torch.where(
            torch.rand(b, per, 1, generator=g) < 0.5, 1.0, torch.rand(b, per, 1, generator=g, dtype=F64)
        )
        d = d / d.norm(dim=-1, keepdim=True) * eps[:, None, None] * scale
        z = (x[:, None] + d).clamp(0, 1)  # clipping only moves points closer to x
        logits = net.forward(z.view(b * per, *net.input_shape)).view(b, per, -1)
        worst = torch.minimum(worst, torch.einsum("bsk,bpk->bps", spec, logits).amin(2).amin(1))
    z = x.clone().requires_grad_(True)
    for _ in range(pgd_steps):
        m = torch.einsum("bsk,bk->bs", spec, net.forward(z.view(b, *net.input_shape))).amin(1)
        (grad,) = torch.autograd.grad(m.sum(), z)
        with torch.no_grad():
            z -= 0.2 * eps[:, None] * grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
            r = z - x
            r *= (eps / r.norm(dim=1).clamp(min=1e-12)).clamp(max=1)[:, None]
            z.copy_((x + r).clamp(0, 1))
        worst = torch.minimum(worst, m.detach())
    return worst


@pytest.mark.parametrize("name", ["sigmoid-mlp", "tanh-mlp", "relu-conv"])
@pytest.mark.parametrize("method", ["crown", "ibp"])
def test_bounds_are_sound_against_random_points_and_attacks_in_the_ball(name: str, method: str) -> None:
    model = _nets()[name].eval()
    net = network_of(model, (1, 6, 6))
    x = _images(3, 36, seed=8)
    labels = net.forward(x.view(3, 1, 6, 6)).argmax(1)
    spec = margin_spec(labels, 5)
    for eps_value in (0.1, 0.5, 1.5):
        eps = torch.full((3,), eps_value, dtype=F64)
        bound = margin_lower(net, x, eps, spec, method).amin(1)
        found = _worst_in_ball(net, x, eps, spec)
        assert torch.all(bound <= found + 1e-9), (name, method, eps_value, bound, found)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu"])
def test_activation_relaxations_enclose_the_function(kind: str) -> None:
    g = torch.Generator().manual_seed(9)
    lo = torch.randn(2000, generator=g, dtype=F64) * 4
    hi = lo + torch.rand(2000, generator=g, dtype=F64) ** 2 * 8
    hi[:50] = lo[:50] + 1e-10  # near-degenerate intervals too
    r = relax(kind, lo, hi)
    t = torch.linspace(0, 1, 401, dtype=F64)[:, None]
    z = lo + t * (hi - lo)
    f = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[kind](z)
    assert torch.all(r.lower_slope * z + r.lower_bias <= f + 1e-15)
    assert torch.all(r.upper_slope * z + r.upper_bias >= f - 1e-15)


@pytest.mark.parametrize("alpha_steps", [0, 5], ids=["crown", "alpha-crown"])
def test_crown_is_the_exact_minimum_on_an_affine_model(alpha_steps: int) -> None:
    w, c, x = _affine_instance(k=5, n=16, b=6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).double()
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(c)
    net = network_of(model, (1, 4, 4))
    labels = (x @ w.T + c).argmax(1)
    exact, _, _ = exact_untargeted(w, c, x, labels)
    r = crown_radius(net, x, margin_spec(labels, 5), torch.full((6,), 10.0, dtype=F64), alpha_steps=alpha_steps)
    assert torch.allclose(r, exact, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def zoo_sigmoid():
    lm = load_model("n100-100-10")
    data = take_images(open_model_data(lm, None, "test"), 0, 12)
    net = network_of(lm.model, (1, 28, 28), lm.normalization)
    return lm, net, data.images.reshape(12, -1).double(), data.labels


def test_crown_is_at_least_as_tight_as_ibp_and_the_global_bound_on_the_zoo_net(zoo_sigmoid) -> None:
    lm, net, x, labels = zoo_sigmoid
    spec = margin_spec(labels, 10)
    for eps_value in (0.1, 0.3, 0.6):
        eps = torch.full((len(x),), eps_value, dtype=F64)
        assert torch.all(margin_lower(net, x, eps, spec, "crown") >= margin_lower(net, x, eps, spec, "ibp") - 1e-8)
    top = torch.full((len(x),), 3.0, dtype=F64)
    crown = crown_radius(net, x, spec, top)
    ibp = bisect_radius(net, x, spec, top, "ibp", steps=14)
    lipschitz = lipschitz_radius(
        lm.model, x.view(-1, 1, 28, 28).float(), labels, lipschitz_constant(lm.model, (1, 28, 28))
    )
    assert torch.all(crown >= ibp * (1 - 1e-3))  # the bisection's grid
    assert torch.all(crown >= lipschitz.double() * (1 - 1e-6))
    assert float(crown.median()) > 2 * float(lipschitz.median())


def test_the_search_returns_certified_radii_and_the_bound_falls_with_the_radius(zoo_sigmoid) -> None:
    _, net, x, labels = zoo_sigmoid
    spec = margin_spec(labels, 10)
    r = crown_radius(net, x, spec, torch.full((len(x),), 3.0, dtype=F64))
    assert torch.all(margin_lower(net, x, r, spec, "crown").amin(1) > 0)
    grid = [margin_lower(net, x, r * f, spec, "crown").amin(1) for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    for a, b in zip(grid, grid[1:], strict=False):
        assert torch.all(b <= a + 1e-9)
    assert torch.all(grid[-1] < 0)  # four times further out, nothing is certified


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * 2


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)), "GELU"),
        (_Custom(), "sequential models only"),
        (nn.Sequential(nn.MaxPool2d(2, padding=1), nn.Flatten(), nn.Linear(4, 2)), "padding"),
    ],
)
def test_unsupported_layers_are_refused_in_one_line(model: nn.Module, words: str) -> None:
    with pytest.raises(InputError) as err:
        network_of(model, (1, 2, 2))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_hook_that_changes_the_output_is_caught() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    model.register_forward_hook(lambda m, i, o: o * 3)
    net = network_of(model, (1, 2, 2))
    with pytest.raises(InputError, match="differs"):
        net.check_matches(model, torch.rand(3, 1, 2, 2))


@pytest.mark.gpu
def test_bounds_on_cuda_equal_those_on_the_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _nets()["relu-conv"].eval()
    x = _images(4, 36, seed=10)
    labels = model(x.view(4, 1, 6, 6).float()).argmax(1)
    spec = margin_spec(labels, 5)
    eps = torch.full((4,), 0.3, dtype=F64)
    cpu = margin_lower(network_of(model, (1, 6, 6)), x, eps, spec)
    gpu = margin_lower(network_of(model.cuda(), (1, 6, 6), device="cuda"), x.cuda(), eps.cuda(), spec.cuda())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-9)
