"""Frame bounds (§4.3, Table 5): exact against dense operators, the paper's Δ factor, products, cancellation.

The command and the operation (run folders) are tested in `test_bounds_cli_and_runs.py`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engines.bounds.conv import aliased_symbol_matrices, conv_spectrum, linear_singular_values
from engines.bounds.factors import max_pool_multiplicity
from engines.bounds.models import parse_input_shape
from engines.bounds.network import frame_bounds
from engines.bounds.polyphase import polyphase_spectrum
from engines.core.errors import Cancelled, InputError

RTOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_reference(w: np.ndarray, n_hw, stride, groups=1, dilation=(1, 1)) -> np.ndarray:
    """Singular values of y[f,n] = Σ_{c,j} w[f,c,j] x[c,(n·s + j·d) mod N], n·s < N, built from the definition."""
    f_out, cg, kh, kw = w.shape
    (nh, nw), (sh, sw), (dh, dw) = n_hw, stride, dilation
    mh, mw = -(-nh // sh), -(-nw // sw)
    fg = f_out // groups
    t = np.zeros((f_out, mh, mw, cg * groups, nh, nw))
    for f in range(f_out):
        c0 = (f // fg) * cg
        for n1 in range(mh):
            for n2 in range(mw):
                for j1 in range(kh):
                    for j2 in range(kw):
                        t[f, n1, n2, c0 : c0 + cg, (n1 * sh + j1 * dh) % nh, (n2 * sw + j2 * dw) % nw] += w[
                            f, :, j1, j2
                        ]
    return np.linalg.svd(t.reshape(f_out * mh * mw, -1), compute_uv=False)


# (C, F, k, stride, N, groups, dilation): divisible and not divisible by the stride, kernels wider than the grid
CASES = [
    (2, 3, 3, 1, 6, 1, 1),
    (3, 4, 5, 2, 8, 1, 1),
    (1, 2, 11, 4, 8, 1, 1),
    (3, 2, 4, 3, 9, 1, 1),
    (4, 2, 2, 2, 6, 1, 1),
    (3, 8, 5, 3, 6, 1, 1),
    (2, 5, 3, 2, 7, 1, 1),
    (2, 3, 3, 4, 10, 1, 1),
    (3, 3, 5, 3, 7, 1, 1),
    (2, 4, 3, 4, 9, 1, 1),
    (4, 6, 3, 2, 8, 2, 1),
    (4, 4, 3, 2, 7, 4, 1),
    (2, 3, 3, 1, 7, 1, 2),
    (2, 2, 3, 2, 8, 1, 2),
    (1, 1, 1, 1, 5, 1, 1),
]


@pytest.mark.parametrize("c,f,k,s,n,groups,dil", CASES)
def test_conv_bounds_equal_dense_operator(c, f, k, s, n, groups, dil):
    gen = torch.Generator().manual_seed(c * 1000 + f * 100 + k * 10 + s + n)
    w = torch.randn(f, c // groups, k, k, dtype=torch.float64, generator=gen)
    ref = dense_reference(w.numpy(), (n, n), (s, s), groups, (dil, dil))
    cs = conv_spectrum(w, (n, n), (s, s), (dil, dil), groups)
    assert cs.exact
    assert ("polyphase" in cs.method) == (n % s == 0)
    assert cs.upper == pytest.approx(ref[0], rel=RTOL)
    assert cs.lower == pytest.approx(ref[-1], rel=RTOL)
    np.testing.assert_allclose(cs.values.numpy(), ref, rtol=0, atol=1e-9 * ref[0])  # the whole spectrum
    assert cs.wide == (f * math.ceil(n / s) ** 2 < c * n * n)


def test_non_square_grid_and_stride():
    w = torch.randn(3, 2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for n_hw, stride in (((8, 6), (2, 3)), ((7, 6), (2, 3)), ((6, 9), (1, 3))):
        ref = dense_reference(w.numpy(), n_hw, stride)
        cs = conv_spectrum(w, n_hw, stride)
        assert (cs.upper, cs.lower) == (pytest.approx(ref[0], rel=RTOL), pytest.approx(ref[-1], rel=RTOL))


@pytest.mark.parametrize("k,s,n", [(3, 1, 6), (5, 2, 8), (3, 2, 7), (5, 3, 10)])
def test_matches_pytorch_circular_layer_on_identity_basis(k, s, n):
    """The circular operator is what nn.Conv2d(padding_mode='circular', padding=(k-1)/2) computes."""
    torch.manual_seed(k * 10 + s)
    layer = nn.Conv2d(3, 4, k, stride=s, padding=k // 2, padding_mode="circular", bias=False).double()
    eye = torch.eye(3 * n * n, dtype=torch.float64).reshape(-1, 3, n, n)
    with torch.no_grad():
        ref = torch.linalg.svdvals(layer(eye).reshape(3 * n * n, -1))
    cs = conv_spectrum(layer.weight.detach(), (n, n), (s, s))
    assert cs.upper == pytest.approx(float(ref[0]), rel=RTOL)
    assert cs.lower == pytest.approx(float(ref[-1]), rel=RTOL)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_paper_aliased_formula_is_delta_times_too_large(s):
    w = torch.randn(5, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
    n = 4 * s
    a = aliased_symbol_matrices(w, (n, n), (s, s))
    sv_paper = torch.linalg.svdvals(a)  # (M, M, rank): per frequency, unnormalised FFTs
    cs = polyphase_spectrum(w, (n, n), (s, s))
    assert float(sv_paper.max()) == pytest.approx(s * cs.upper, rel=1e-10)
    assert float(sv_paper[..., -1].min()) == pytest.approx(s * cs.lower, rel=1e-10)
    # frequency by frequency, not only the extremes
    np.testing.assert_allclose(sv_paper[..., 0].numpy() / s, cs.freq_max.numpy(), rtol=1e-10)


def test_stride_not_dividing_large_case_is_flagged_approximate():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = dense_reference(w.numpy(), (9, 9), (2, 2))
    cs = conv_spectrum(w, (9, 9), (2, 2), dense_limit=10)
    assert not cs.exact and "approximate" in cs.method
    assert cs.upper <= ref[0] * (1 + 1e-12)  # power iteration approaches from below
    assert cs.upper == pytest.approx(ref[0], rel=1e-4)


def _conv_net(layer: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(layer.double())


@pytest.mark.parametrize(
    "c,f,k,s,n,pad",
    [
        (3, 4, 5, 2, 8, 0),
        (2, 3, 3, 1, 7, 0),
        (3, 5, 3, 2, 9, 0),
        (2, 2, 11, 4, 12, 0),
        (3, 4, 5, 2, 8, 2),
        (2, 3, 3, 1, 7, 1),
        (3, 6, 11, 4, 16, 2),
        (2, 3, 4, 3, 9, 1),
    ],
)
def test_power_iteration_through_zero_padded_layer(c, f, k, s, n, pad):
    torch.manual_seed(c + f + k + s + n + pad)
    result = frame_bounds(_conv_net(nn.Conv2d(c, f, k, s, pad)), (c, n, n), power_iters=300)
    layer = result.layers[0]
    power = layer.power["sigma"]
    assert power <= layer.upper_real * (1 + 1e-9)  # guaranteed bound of the layer as it runs
    if pad == 0:  # a valid convolution is rows of the circular one: never above the circular bound
        assert power <= layer.upper * (1 + 1e-9)
        assert layer.upper_real == pytest.approx(layer.upper, rel=1e-12) or n % s
    assert power >= 0.5 * layer.upper  # and it is a real estimate, not a token value


def test_zero_padding_can_exceed_the_circular_bound():
    """Documented case: [1, -1] on a 3-wide grid with padding 1. Circular max |1 − e^{iω}| over ω ∈ 2πZ/3 is √3,
    the zero-padded 4×3 difference matrix has norm √(2 + √2) ≈ 1.848."""
    conv = nn.Conv2d(1, 1, (1, 2), padding=(0, 1), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0]]]]))
    layer = frame_bounds(_conv_net(conv), (1, 3, 3), power_iters=500).layers[0]
    assert layer.upper == pytest.approx(math.sqrt(3), rel=1e-12)
    assert layer.power["sigma"] == pytest.approx(math.sqrt(2 + math.sqrt(2)), rel=1e-6)
    assert layer.power["sigma"] > layer.upper
    assert layer.power["sigma"] <= layer.upper_real * (1 + 1e-9)
    assert any("may exceed" in note for note in layer.notes)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40)])
@pytest.mark.parametrize("method", ["auto", "svd", "gram"])
def test_linear_singular_values_match_numpy(shape, method):
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(shape[0]))
    ref = np.linalg.svd(w.numpy(), compute_uv=False)
    np.testing.assert_allclose(linear_singular_values(w, method).numpy(), ref, rtol=1e-9)


def test_linear_layer_bounds_and_lower_convention():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 30), nn.ReLU(), nn.Linear(30, 40))
    result = frame_bounds(net, (50,))
    wide, tall = result.layers
    for layer, lin in zip(result.layers, (net[0], net[2]), strict=True):
        ref = np.linalg.svd(lin.weight.detach().double().numpy(), compute_uv=False)
        assert (layer.upper, layer.lower) == (pytest.approx(ref[0], rel=1e-12), pytest.approx(ref[-1], rel=1e-12))
    assert (wide.size, wide.wide, wide.lower_frame) == ("50×30", True, 0.0)  # null space: true lower bound 0
    assert wide.lower > 0
    assert (tall.size, tall.wide, tall.lower_frame) == ("30×40", False, tall.lower)
    assert [x.label for x in result.layers] == ["FC. 1", "FC. 2"]


def test_product_uses_each_activation_factor():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(20, 15), nn.Sigmoid(), nn.Linear(15, 10), nn.Tanh(), nn.Linear(10, 5), nn.ReLU()
    )
    result = frame_bounds(net, (4, 5))
    sig = [np.linalg.svd(net[i].weight.detach().double().numpy(), compute_uv=False)[0] for i in (1, 3, 5)]
    expected = sig[0] * sig[1] * sig[2] * 0.25
    assert result.chain
    assert result.product_table == pytest.approx(expected, rel=1e-12)
    assert result.lipschitz_upper == pytest.approx(expected, rel=1e-12)
    assert {f.kind: f.factor for f in result.factors} == {"Flatten": 1.0, "Sigmoid": 0.25, "Tanh": 1.0, "ReLU": 1.0}
    x = torch.randn(200, 4, 5)
    with torch.no_grad():  # the bound holds on random pairs
        d = 1e-3 * torch.randn_like(x)
        emp = (net(x + d) - net(x)).norm(dim=1) / d.flatten(1).norm(dim=1)
    assert float(emp.max()) <= result.lipschitz_upper * (1 + 1e-4)


def test_overlapping_max_pool_is_not_contractive():
    """3×3/2 pooling (AlexNet's): an input in 4 windows moves 4 outputs, so the factor is 2, not the paper's 1."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = nn.Sequential(conv, nn.MaxPool2d(3, 2))
    result = frame_bounds(net, (1, 9, 9))
    pool = result.factors[0]
    assert (pool.factor, pool.paper_factor) == (2.0, 1.0)
    assert result.product_table == pytest.approx(1.0) and result.lipschitz_upper == pytest.approx(2.0)
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 2, 2] = 10.0
    x2 = x.clone()
    x2[0, 0, 2, 2] += 1.0
    with torch.no_grad():
        assert float((net(x2) - net(x)).norm()) == pytest.approx(2.0)  # the factor is reached
    assert max_pool_multiplicity(nn.MaxPool2d(2), (8, 8)) == 1
    assert max_pool_multiplicity(nn.MaxPool2d(3, 1), (8, 8)) == 9


def test_residual_network_has_no_product_bound():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(x + self.conv(x))

    result = frame_bounds(Residual(), (2, 6, 6))
    assert not result.chain and result.lipschitz_upper is None
    assert "not a plain chain" in result.lipschitz_note


def test_histogram_and_spectra_are_consistent():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    result = frame_bounds(net, (3, 32, 32))
    conv = result.layers[0].to_json()
    hist = conv["histogram"]
    assert hist["count"] == 16 * 16 * min(8, 3 * 4) == sum(hist["counts"]) + hist["zeros"]
    assert hist["max"] == pytest.approx(conv["upper"]) and hist["min"] == pytest.approx(conv["lower"])
    spectra = result.spectra()
    assert spectra["0"].shape == (hist["count"],) and spectra["0.freq_max"].shape == (16, 16)
    assert float(spectra["0.freq_max"].max()) == pytest.approx(conv["upper"], rel=1e-6)


def test_parse_input_shape():
    assert parse_input_shape("3x224x224") == (3, 224, 224)
    assert parse_input_shape("1×28×28") == (1, 28, 28)
    for bad in ("3x224", "axbxc", "0x2x2", "3x224x224x1", ""):
        with pytest.raises(InputError):
            parse_input_shape(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    w = torch.randn(16, 8, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cpu = conv_spectrum(w, (24, 24), (2, 2))
    gpu = conv_spectrum(w.cuda(), (24, 24), (2, 2))
    assert gpu.upper == pytest.approx(cpu.upper, rel=1e-10) and gpu.lower == pytest.approx(cpu.lower, rel=1e-10)
    odd = conv_spectrum(w.cuda(), (7, 7), (2, 2))
    assert odd.upper == pytest.approx(conv_spectrum(w, (7, 7), (2, 2)).upper, rel=1e-10)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    a, b = frame_bounds(net, (3, 16, 16), device="cpu"), frame_bounds(net, (3, 16, 16), device="cuda")
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert lb.upper == pytest.approx(la.upper, rel=1e-9) and lb.lower == pytest.approx(la.lower, rel=1e-9)


def test_frame_bounds_honours_cancel_between_layers_and_inside_power_iteration():
    import pytest as _pytest

    from engines.bounds.conv import power_iteration

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 3))
    calls = {"n": 0}

    def after_first_layer() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with _pytest.raises(Cancelled):
        frame_bounds(model, (1, 8, 8), power_iters=0, cancel=after_first_layer)
    with _pytest.raises(Cancelled):
        power_iteration(lambda v: 2 * v, torch.ones(4), cancel=lambda: True)


def test_a_long_convolution_is_cancelled_between_frequency_chunks():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    polls = {"n": 0}

    def third_poll() -> bool:
        polls["n"] += 1
        return polls["n"] >= 3

    with pytest.raises(Cancelled):
        polyphase_spectrum(w, (16, 16), (1, 1), chunk_elements=1, cancel=third_poll)
    assert polls["n"] == 3  # stopped inside the layer, two chunks in, not after all 16 rows
    assert polyphase_spectrum(w, (16, 16), (1, 1), chunk_elements=1).upper > 0


# --- the fast paths give the dense operator's values ---------------------------------------------------------


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


FAST_CASES = [  # (C, F, k, stride, N, groups): square, wide and tall blocks, a 1×1 conv, a kernel narrower than its stride
    (4, 4, 3, 1, 8, 1),
    (3, 8, 3, 2, 8, 1),
    (6, 3, 5, 1, 6, 1),
    (4, 6, 1, 2, 8, 1),
    (3, 5, 2, 3, 9, 1),
    (4, 8, 3, 2, 8, 2),
]


def _dense_circular(w: torch.Tensor, n: int, s: int, groups: int = 1) -> torch.Tensor:
    """Singular values of y[f, m] = Σ_{c,j} w[f, c, j]·x[c, (m·s + j) mod n], its matrix built from the identity."""
    c, k = w.shape[1] * groups, w.shape[-1]
    eye = torch.eye(c * n * n, dtype=torch.float64).reshape(-1, c, n, n)
    wrapped = torch.nn.functional.pad(eye, (0, k - 1, 0, k - 1), mode="circular")
    matrix = torch.nn.functional.conv2d(wrapped, w, stride=s, groups=groups).reshape(c * n * n, -1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # MKL's multi-threaded SVD of a few hundred rows can take a second
    try:
        return torch.linalg.svdvals(matrix)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("lags", [True, False])
@pytest.mark.parametrize("c,f,k,s,n,groups", FAST_CASES)
@pytest.mark.usefixtures("two_threads")
def test_gram_routes_and_threads_equal_the_dense_operator(c, f, k, s, n, groups, lags, monkeypatch):
    """Gram matrices from the tap products (lags) or from the blocks, eigvalsh split over two threads."""
    from engines.bounds import polyphase, polyphase_blocks

    if lags:
        monkeypatch.setattr(polyphase_blocks, "LAG_ADVANTAGE", 1e9)
    else:
        monkeypatch.setattr(polyphase_blocks, "LAG_ENTRIES", 0)
    w = torch.randn(f, c // groups, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(c + f + k + s))
    ref = _dense_circular(w, n, s, groups).numpy()
    pp = polyphase_blocks.split_phases(w, (n, n), (s, s), groups)
    assert (pp.lags is not None) == lags and (pp.spec is None) == lags
    cs = polyphase.polyphase_spectrum(w, (n, n), (s, s), groups)
    assert torch.get_num_threads() == 2  # the workers' single-threaded setting does not leak
    assert cs.upper == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(cs.values.numpy(), ref, rtol=0, atol=1e-10 * ref[0])
    for near in ((), [(0.3, 0.1)], [(f_ / 7, 0.5) for f_ in range(7)]):
        assert polyphase.polyphase_norm(w, (n, n), (s, s), groups, near=near) == pytest.approx(ref[0], rel=1e-12)
    # the tap products of one grid serve another grid of the same kernel
    kept = polyphase.polyphase_spectrum(w, (n, n), (s, s), groups, keep_products=True)
    reused = polyphase.polyphase_norm(w, (n + s, n + s), (s, s), groups, near=[(0.0, 0.0)], products=kept.products)
    assert (kept.products is not None) == lags
    assert reused == pytest.approx(float(_dense_circular(w, n + s, s, groups)[0]), rel=1e-12)


def test_narrow_kernel_zero_columns_give_exact_zeros():
    """A 1×1 kernel with stride 2 reads one input phase in four: the other columns are zero, the block is the
    same at every frequency, and its null space shows as exact zeros and a lower bound 0."""
    w = torch.randn(10, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cs = conv_spectrum(w, (8, 8), (2, 2))
    ref = dense_reference(w.numpy(), (8, 8), (2, 2))
    assert cs.lower == 0.0 and cs.wide is False and cs.block == (10, 8)
    np.testing.assert_allclose(cs.values.numpy(), ref, rtol=0, atol=1e-12 * ref[0])
    assert int((cs.values == 0).sum()) == 16 * 6  # 8 columns, 2 of them non-zero: 6 zeros per block
    np.testing.assert_allclose(cs.freq_max.numpy(), ref[0], rtol=1e-12)


def test_ill_conditioned_blocks_are_decomposed_without_the_gram_matrix():
    """Two equal filters make every block singular: through the Gram matrix σ_min would come out ~1e-8·σ_max."""
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w[3] = w[2]
    ref = dense_reference(w.numpy(), (6, 6), (1, 1))
    cs = conv_spectrum(w, (6, 6), (1, 1))
    assert cs.lower < 1e-12 * cs.upper
    np.testing.assert_allclose(cs.values.numpy(), ref, rtol=0, atol=1e-12 * ref[0])


def test_explicit_adjoint_equals_autograd_in_power_iteration():
    from engines.bounds.conv import power_iteration
    from engines.bounds.network import _conv_adjoint

    for c, f, k, s, d, p, g, hw in [
        (3, 4, 3, 1, 1, 1, 1, (9, 7)),
        (4, 6, 3, 2, 1, 1, 2, (9, 8)),
        (2, 3, 3, 1, 2, 0, 1, (10, 9)),
        (3, 3, 5, 3, 1, 2, 1, (11, 12)),
        (2, 2, 3, 1, 1, 3, 1, (6, 6)),
    ]:
        torch.manual_seed(c * 7 + k)
        m = nn.Conv2d(c, f, k, s, p, d, g, bias=False).double()
        w = m.weight.detach()
        adj = _conv_adjoint(m, w, hw)
        x, y = torch.randn(1, c, *hw, dtype=torch.float64), torch.randn_like(m(torch.zeros(1, c, *hw).double()))
        with torch.no_grad():
            assert float((m(x) * y).sum()) == pytest.approx(float((x * adj(y)).sum()), rel=1e-12)
        x0 = torch.randn(c, *hw, dtype=torch.float64)
        a = power_iteration(m, x0, max_iter=20, tol=0.0)
        b = power_iteration(m, x0, max_iter=20, tol=0.0, adjoint_op=adj)
        assert b.sigma == pytest.approx(a.sigma, rel=1e-12) and b.iterations == a.iterations == 20


def test_symmetric_gram_equals_the_plain_product():
    from engines.bounds.conv import symmetric_gram

    a = torch.randn(1100, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(symmetric_gram(a).numpy(), (a @ a.T).numpy(), rtol=0, atol=1e-12)


def test_padded_grid_norm_is_cancelled_between_chunks():
    from engines.bounds.polyphase import polyphase_norm

    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    polls = {"n": 0}

    def second_poll() -> bool:
        polls["n"] += 1
        return polls["n"] >= 2

    with pytest.raises(Cancelled):
        polyphase_norm(w, (16, 16), (1, 1), chunk_elements=1, cancel=second_poll)
    assert polls["n"] == 2
