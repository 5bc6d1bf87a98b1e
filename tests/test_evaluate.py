"""Batched inference (`engines.core.evaluate`) against one full-batch forward pass of the same model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.core.evaluate import count_wrong, error_rate, least_likely, logit_slices, logits, predict


class Recorder(nn.Module):
    """A small random convolutional classifier (float64, 4 classes) that records the batch sizes it is given."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 4)).double()
        self.seen: list[int] = []
        self.grad: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(x))
        self.grad.append(torch.is_grad_enabled())
        return self.net(x)


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(model: Recorder, x: torch.Tensor) -> torch.Tensor:
    """The independent answer: every image in one forward pass of the inner network."""
    with torch.no_grad():
        return model.net(x)


@pytest.mark.parametrize("batch", [1, 5, 7, 23, 100, None])
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_each_function_equals_one_full_batch_pass_for_uneven_slices(batch, device):
    model, x = Recorder(), images(23)
    full = reference(model, x)
    z = logits(model, x, device, batch)
    assert z.device.type == "cpu" and z.dtype == torch.float64 and z.shape == (23, 4)
    assert torch.allclose(z, full, rtol=1e-12, atol=1e-12)
    assert torch.equal(predict(model, x, device, batch), full.argmax(1))
    assert torch.equal(least_likely(model, x, device, batch), full.argmin(1))
    step = batch or 23  # eval_batch gives thousands of images this small
    sizes = [min(step, 23 - s) for s in range(0, 23, step)]
    assert model.seen == sizes * 3  # sliced as asked (the last slice shorter), once per call
    assert not any(model.grad)  # no graph is built


def test_error_rate_and_count_wrong_count_the_wrong_argmaxes():
    model, x = Recorder(), images(23)
    truth = reference(model, x).argmax(1)
    labels = truth.clone()
    labels[[0, 4, 11, 22]] = (truth[[0, 4, 11, 22]] + 1) % 4  # four images the model gets "wrong"
    assert count_wrong(model, x, labels, "cpu", 5) == 4
    assert error_rate(model, x, labels, "cpu", 5) == pytest.approx(100.0 * 4 / 23)
    assert error_rate(model, x, truth, "cpu") == 0.0


def test_no_images_gives_empty_answers_and_a_zero_error():
    model, x = Recorder(), images(0)
    assert error_rate(model, x, torch.zeros(0, dtype=torch.long)) == 0.0
    assert model.seen == []  # nothing to run
    assert predict(model, x, "cpu").shape == (0,) and logits(model, x, "cpu").shape == (0, 4)


def test_logit_slices_say_where_each_slice_starts_and_leave_gradients_on_between_slices():
    model, x = Recorder(), images(12)
    full = reference(model, x)
    starts = []
    for start, z in logit_slices(model, x, "cpu", 5):
        assert torch.is_grad_enabled()  # the caller's code runs in its own mode
        assert not z.requires_grad
        assert torch.allclose(z, full[start : start + len(z)], rtol=1e-12, atol=1e-12)
        starts.append(start)
        if start == 5:
            break  # a caller may stop early: the rest is never computed
    assert starts == [0, 5] and model.seen == [5, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_on_the_gpu_answers_on_the_cpu_as_on_the_cpu():
    model, x = Recorder(), images(23)
    want = predict(model, x, "cpu", 5)
    model.cuda()
    got = predict(model, x, "cuda", 5)
    assert got.device.type == "cpu" and torch.equal(got, want)
    assert torch.equal(least_likely(model, x, "cuda"), reference(model.cpu(), x).argmin(1))


def test_the_adversarial_pool_error_counts_every_layers_wrong_examples():
    from engines.core.zoo import build_model, mlp_spec
    from engines.train.adversarial_pool import AdversarialPool
    from engines.train.layer_cuts import layer_cuts, layer_shapes

    torch.manual_seed(0)
    model = build_model(mlp_spec([12, 8], classes=3) | {"input": [1, 6, 6]}).train()
    cuts = layer_cuts(model, None)
    pool = AdversarialPool(cuts, 3 * 4100 + 1, layer_shapes(cuts, torch.rand(1, 1, 6, 6)))  # 4096 + 5, + 4, + 4
    gen = torch.Generator().manual_seed(2)
    wrong = 0
    for cut in cuts:
        pool.examples[cut.name] = torch.rand(pool.examples[cut.name].shape, generator=gen)
        pool.labels[cut.name] = torch.randint(0, 3, pool.labels[cut.name].shape, generator=gen)
        with torch.no_grad():
            wrong += int((cut.upper(pool.examples[cut.name]).argmax(1) != pool.labels[cut.name]).sum())
    assert 0 < wrong < len(pool)
    assert pool.error(model, "cpu") == pytest.approx(100.0 * wrong / len(pool))
    assert model.training  # left in the mode it was in
