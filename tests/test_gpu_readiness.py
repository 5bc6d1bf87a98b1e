"""What the first GPU run would have tripped on, checked on the CPU (issue 23): one image's targets split
over sub-batches, out-of-memory back-off on every kind of allocation failure, balanced chunks, batch sizing
that counts PyTorch's cached memory, TF32 settings that stay inside the operation and are recorded."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import engines.attack.operation as ar
from engines.attack.batching import (
    attack_chunk,
    auto_batch_size,
    balanced_size,
    balanced_slices,
    images_per_chunk,
    problem_bytes,
)
from engines.attack.operation import AttackRequest, run_attack
from engines.attack.search import AttackConfig
from engines.core.checkpoint import load_checkpoint
from engines.core.context import RunContext
from engines.core.data import load_split
from engines.core.errors import InputError
from engines.core.memory import device_free_memory, is_out_of_memory
from engines.core.precision import float32_precision, precision_record

BUDGET = AttackConfig(c_steps=2, max_iter=12)


def _samples(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "samples.safetensors"))


def _same_run(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert torch.equal(a["success"], b["success"]) and torch.equal(a["target"], b["target"])
    ok = a["success"].bool()
    assert ok.any()
    assert torch.allclose(a["distortion"][ok], b["distortion"][ok], rtol=0, atol=1e-6)
    assert float((a["x_adv"] - b["x_adv"]).abs().max()) <= 1e-5  # per pixel in [0, 1]: float32 rounding only


# --- item 1: one image's targets over several solver calls ----------------------------------------------------


@pytest.mark.parametrize("batch", [4, 5, 9, 13])
def test_one_images_targets_split_over_sub_batches_equal_the_unsplit_solve(batch):
    lm = load_checkpoint("n100-100-10")
    data = load_split("test")
    x, y = data.images[:3], data.labels[:3]
    args = (lm.model, x, y, None, 10, BUDGET, torch.device("cpu"))
    kw = {"on_event": lambda e: None, "cancel": lambda: False, "task": "t"}
    whole = attack_chunk(*args, 27, **kw)  # all 27 problems in one call
    split = attack_chunk(*args, batch, **kw)  # batch < 9: every image's nine targets cut across calls
    assert whole["success"].sum() >= 2
    _same_run(whole, split)
    assert torch.equal(whole["trivial"], split["trivial"])
    both = whole["success"].bool()
    assert torch.allclose(whole["c"][both], split["c"][both])


def test_target_all_run_with_fewer_problems_per_call_than_one_image_has(tmp_path):
    """A run whose batch holds less than one image's K − 1 problems (ImageNet's 999 on a GPU) still runs, with
    one image per chunk, and gives the result of a batch that holds them all."""
    runs = {}
    for bs in (27, 4):
        req = AttackRequest(model="n100-100-10", n=3, target="all", config=BUDGET, batch_size=bs)
        run_attack(req, RunContext(device="cpu", out=tmp_path / f"b{bs}"))
        runs[bs] = _samples(tmp_path / f"b{bs}")
    _same_run(runs[27], runs[4])
    record = json.loads((tmp_path / "b4" / "run.json").read_text())
    assert record["batch"]["problems_per_call"] == 4 and record["batch"]["images_per_chunk"] == 1
    assert len(list((tmp_path / "b4" / "chunks").glob("*.safetensors"))) == 3


# --- item 4: balanced chunks, memory counted with PyTorch's cache -----------------------------------------------


@pytest.mark.parametrize(("total", "most"), [(10000, 4444), (90000, 65536), (10, 4), (7, 7), (1, 5), (999, 400)])
def test_chunks_are_balanced_and_as_few_as_the_limit_allows(total, most):
    pieces = balanced_slices(total, most)
    sizes = [b - a for a, b in pieces]
    assert pieces[0][0] == 0 and pieces[-1][1] == total
    assert all(pieces[i][1] == pieces[i + 1][0] for i in range(len(pieces) - 1))
    assert len(pieces) == math.ceil(total / most)  # no more pieces than needed
    assert max(sizes) <= most and max(sizes) - min(sizes) <= 1  # and no small tail
    assert balanced_size(total, most) == sizes[0]


def test_a_run_is_saved_in_balanced_chunks(tmp_path):
    req = AttackRequest(model="n100-100-10", n=10, config=BUDGET, batch_size=4)
    run_attack(req, RunContext(device="cpu", out=tmp_path / "r"))
    names = sorted(p.stem for p in (tmp_path / "r" / "chunks").glob("*.safetensors"))
    sizes = [int(b) - int(a) for a, b in (n.split("-") for n in names)]
    assert sizes == [4, 3, 3]  # not 4 + 4 + 2


def test_images_per_chunk_hold_whole_images_or_one():
    assert images_per_chunk(4000, 9) == 444
    assert images_per_chunk(400, 999) == 1  # one image, its problems in sub-batches
    assert images_per_chunk(4000, 9, cap=16) == 16


def test_free_memory_on_cuda_counts_what_pytorch_caches_but_does_not_use(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    cuda = torch.device("cuda", 0)
    assert device_free_memory(cuda) == 22 * gib  # 2 free at the driver + 20 cached by an earlier job
    per = problem_bytes(784, 10, 300)
    assert auto_batch_size(784, 10, cuda, 300) == min(65536, int(0.5 * 22 * gib // per))


def test_problem_memory_counts_the_two_loop_copies_and_the_working_vectors():
    n, m = 150528, 10  # an ImageNet image, the default history
    assert problem_bytes(n, m) >= (4 * m + 24) * n * 4  # history, its per-slot copies, bounds and iterates


# --- item 3: out of memory ----------------------------------------------------------------------------------------

OOM_ERRORS = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)` (simulated)"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED (simulated)"),
    RuntimeError("CUDA error: out of memory (simulated)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory (simulated)"),
]


class FailsAboveRows(nn.Module):
    """The model, failing with `error` whenever the attack evaluates more than `rows` rows with gradients
    (what a GPU does on a batch that does not fit); the checks before the attack run without gradients."""

    def __init__(self, net: nn.Module, error: BaseException, rows: int) -> None:
        super().__init__()
        self.net, self.error, self.rows = net, error, rows
        self.failures = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.shape[0] > self.rows:
            self.failures += 1
            raise self.error
        return self.net(x)


def _run_with(tmp_path, monkeypatch, name: str, error: BaseException | None, batch: int = 100):
    real = ar.load_model
    wrappers = []

    def load(ref, device):
        lm = real(ref, device)
        if error is None:
            return lm
        wrappers.append(FailsAboveRows(lm.model, error, rows=64))
        return replace(lm, model=wrappers[-1])

    monkeypatch.setattr(ar, "load_model", load)
    req = AttackRequest(model="n100-100-10", n=100, config=AttackConfig(c_steps=2, max_iter=8), batch_size=batch)
    run_attack(req, RunContext(device="cpu", out=tmp_path / name))
    return _samples(tmp_path / name), json.loads((tmp_path / name / "run.json").read_text()), wrappers


@pytest.mark.parametrize("error", OOM_ERRORS, ids=lambda e: type(e).__name__ + ":" + str(e)[:20])
def test_every_kind_of_allocation_failure_backs_off_and_the_run_ends_as_without_it(tmp_path, monkeypatch, error):
    plain, _, _ = _run_with(tmp_path, monkeypatch, "plain", None)
    released = []
    monkeypatch.setattr(ar, "release_memory", lambda device: released.append(sys.exc_info()[0]))
    injected, record, wrappers = _run_with(tmp_path, monkeypatch, "oom", error)
    assert wrappers[0].failures >= 1  # 100 problems = 128 padded rows failed; 50 = 64 rows fit
    _same_run(plain, injected)
    assert record["batch"]["out_of_memory_backoffs"] == 1 and record["batch"]["problems_per_call"] == 50
    assert released == [None]  # memory released once, after the handler (no traceback holding the tensors)


def test_an_error_that_is_not_out_of_memory_is_not_swallowed(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        _run_with(tmp_path, monkeypatch, "bug", RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_one_problem_that_does_not_fit_is_refused_in_one_line(tmp_path, monkeypatch):
    error = torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    real = ar.load_model
    monkeypatch.setattr(
        ar, "load_model", lambda ref, d: replace(real(ref, d), model=FailsAboveRows(real(ref, d).model, error, 0))
    )
    req = AttackRequest(model="n100-100-10", n=2, config=BUDGET, batch_size=2)
    with pytest.raises(InputError, match=r"one \(image, target\) problem does not fit .* MiB") as caught:
        run_attack(req, RunContext(device="cpu", out=tmp_path / "r"))
    assert "\n" not in str(caught.value)


def test_out_of_memory_is_told_from_other_errors():
    assert all(is_out_of_memory(e) for e in OOM_ERRORS)
    assert not is_out_of_memory(RuntimeError("CUDNN_STATUS_BAD_PARAM"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the types the libraries raise


# --- item 2: TF32 ---------------------------------------------------------------------------------------------------


def test_tf32_settings_hold_inside_the_block_only_and_nest():
    before = precision_record()
    with float32_precision(False) as off:
        assert off["tf32"] == "off" and precision_record() == off
        with float32_precision(True) as on:
            assert on["tf32"] == "on" and precision_record()["tf32"] == "on"
        assert precision_record() == off  # the outer block's choice again
    assert precision_record() == before
    with pytest.raises(KeyError), float32_precision(True):
        raise KeyError("boom")
    assert precision_record() == before  # restored on an error too


@pytest.mark.parametrize("tf32", [False, True])
def test_run_json_records_precision_batch_and_peak_memory(tmp_path, tf32):
    before = precision_record()
    req = AttackRequest(model="n100-100-10", n=4, config=BUDGET)
    run_attack(req, RunContext(device="cpu", out=tmp_path / "r", tf32=tf32))
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["precision"]["tf32"] == ("on" if tf32 else "off")
    assert record["precision"]["matmul_precision"] and record["precision"]["conv_precision"]
    assert record["batch"]["chosen"] == "auto" and record["batch"]["problems_per_call"] >= 1
    assert record["batch"]["images_per_chunk"] == record["batch"]["problems_per_call"]  # one problem per image
    assert record["peak_memory"]["process_peak_rss_bytes"] > 0
    assert precision_record() == before  # nothing leaks into the rest of the process


def test_bounds_record_the_precision_and_leave_the_settings_as_they_were(tmp_path):
    from engines.bounds.operation import BoundsRequest, run_bounds

    before = precision_record()
    run_bounds(BoundsRequest(model="n100-100-10", power_iters=5), RunContext(device="cpu", out=tmp_path / "b"))
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["precision"]["tf32"] == "off"
    assert precision_record() == before


# --- item 7: bounds' power-iteration starts -------------------------------------------------------------------------


def test_both_power_iterations_of_the_bounds_start_from_the_cpu_generators_vector(monkeypatch):
    """A strided convolution too large for a dense SVD takes a power iteration on the circular operator
    (conv.py) and one on the zero-padded layer (network.py): both from the seed-0 draw of a CPU generator,
    moved to the device, so that bounds.json does not depend on which device drew it."""
    import engines.bounds.conv as bc
    import engines.bounds.network as bn

    starts = []

    def recording(real):
        def power_iteration(op, x0, *args, **kw):
            starts.append(x0.detach().clone())
            return real(op, x0, *args, **kw)

        return power_iteration

    monkeypatch.setattr(bc, "power_iteration", recording(bc.power_iteration))
    monkeypatch.setattr(bn, "power_iteration", recording(bn.power_iteration))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1)).double()
    bn.frame_bounds(model, (2, 9, 9), power_iters=5, dense_limit=1)
    assert len(starts) == 2
    for x0 in starts:
        drawn = torch.randn(*x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x0, drawn)


def test_start_vectors_are_drawn_on_the_cpu_whatever_the_device():
    from engines.bounds.conv import start_vector

    meta = start_vector((3, 4, 5), torch.float32, "meta")  # no generator exists on "meta": drawn on the CPU
    assert meta.device.type == "meta" and meta.shape == (3, 4, 5)
    drawn = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(start_vector((3, 4, 5), torch.float32, "cpu"), drawn)


@pytest.mark.gpu
def test_bounds_start_vectors_and_results_agree_between_cpu_and_cuda():
    from engines.bounds.conv import start_vector
    from engines.bounds.network import frame_bounds

    cpu = start_vector((3, 17, 17), torch.float64, "cpu")
    assert torch.equal(start_vector((3, 17, 17), torch.float64, "cuda").cpu(), cpu)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1)).double()
    a = frame_bounds(model, (3, 17, 17), power_iters=20, dense_limit=1, device="cpu")
    b = frame_bounds(model, (3, 17, 17), power_iters=20, dense_limit=1, device="cuda")
    assert a.layers[0].power["iterations"] == b.layers[0].power["iterations"]
    assert a.layers[0].power["sigma"] == pytest.approx(b.layers[0].power["sigma"], rel=1e-9)


# --- item 6: training keeps its pool and its running figures on the device -----------------------------------------


def test_an_epochs_pool_draws_at_once_are_the_draws_one_minibatch_at_a_time():
    from engines.train.adversarial_pool import AdversarialPool
    from engines.train.layer_cuts import layer_cuts, layer_shapes

    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Sigmoid(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.rand(20, 1, 6, 6)
    cuts = layer_cuts(model, None)
    pool = AdversarialPool(cuts, 91, layer_shapes(cuts, x))
    for name in pool.examples:
        pool.examples[name] = torch.randn_like(pool.examples[name])
        pool.labels[name] = torch.randint(0, 3, pool.labels[name].shape)
    draws = pool.epoch_draws(7, 13, torch.Generator().manual_seed(5))
    reference = torch.Generator().manual_seed(5)
    names = [c.name for c in cuts]
    assert len(names) == 3  # the input and both activations
    offsets = {name: sum(pool.sizes[n] for n in names[:k]) for k, name in enumerate(names)}
    for draw in draws:
        picks = torch.randint(0, len(pool), (13,), generator=reference)  # what the per-batch loop drew
        got = pool.gather(draw)
        assert sum(len(lab) for _, lab in got.values()) == 13
        for name, start in offsets.items():
            mine = picks[(picks >= start) & (picks < start + pool.sizes[name])] - start
            if len(mine):
                assert torch.equal(got[name][0], pool.examples[name][mine])
                assert torch.equal(got[name][1], pool.labels[name][mine])
            else:
                assert name not in got


@pytest.mark.gpu
def test_adversarial_training_on_cuda_keeps_its_pool_there(monkeypatch):
    import engines.train.adversarial as ta

    pools = []
    real = ta.AdversarialPool

    def recording(*args, **kw):
        pools.append(real(*args, **kw))
        return pools[-1]

    monkeypatch.setattr(ta, "AdversarialPool", recording)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Sigmoid(), nn.Linear(12, 3)).cuda()
    x, y = torch.rand(64, 1, 6, 6, device="cuda"), torch.randint(0, 3, (64,), device="cuda")
    settings = ta.AdversarialSettings(pool_size=32, c_steps=2, max_iter=5, warmup=1)
    info = ta.train_adversarial(
        model, x, y, [0.0, 0.0], settings, epochs=2, batch_size=16, lr=1e-2, seed=0,
        on_event=lambda e: None, cancel=lambda: False, task="t",
    )  # fmt: skip
    assert math.isfinite(info["final_loss"])
    assert all(t.is_cuda for t in [*pools[0].examples.values(), *pools[0].labels.values()])


# --- item 9: the workbench's model cache across worker threads ------------------------------------------------------


def test_worker_threads_share_one_copy_of_a_model_loaded_once(monkeypatch):
    import threading

    import engines.core.models as em
    from screens.state import Settings, WorkbenchState

    loads, overlapped = [], []
    guard = threading.Lock()
    started = {"softmax1": threading.Event(), "n100-100-10": threading.Event()}

    def slow_load(ref, device):
        with guard:
            loads.append(ref.name)
        started[ref.name].set()
        other = next(e for name, e in started.items() if name != ref.name)
        overlapped.append(other.wait(timeout=20))  # true only if the other model's load began meanwhile
        return object()

    monkeypatch.setattr(em, "load_model", slow_load)
    state = WorkbenchState(Settings(device="cpu"))
    got: dict[str, list[object]] = {"softmax1": [], "n100-100-10": []}

    def ask(name: str) -> None:
        got[name].append(state.load_model(name))

    threads = [threading.Thread(target=ask, args=(n,)) for n in [*["softmax1"] * 4, *["n100-100-10"] * 4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(loads) == ["n100-100-10", "softmax1"]  # each loaded once
    assert all(len(v) == 4 and all(m is v[0] for m in v) for v in got.values())  # one shared copy each
    assert overlapped == [True, True]  # the two models loaded at the same time, not one after the other
    state.forget_models()
    started["n100-100-10"].set()
    state.load_model("softmax1")
    assert loads.count("softmax1") == 2  # forgotten, then loaded afresh


# --- on a GPU (skipped without CUDA; `benchmarks/gpu_check.sh part1` runs them) --------------------------------------


@pytest.mark.gpu
def test_a_cuda_run_with_tf32_off_matches_the_cpu_run_and_records_its_batch(tmp_path):
    req = AttackRequest(model="n100-100-10", n=64, config=AttackConfig(c_steps=5, max_iter=50))
    cpu = run_attack(req, RunContext(device="cpu", out=tmp_path / "cpu"))
    gpu = run_attack(req, RunContext(device="cuda", out=tmp_path / "cuda"))
    a, b = _samples(tmp_path / "cpu"), _samples(tmp_path / "cuda")
    assert (a["success"] == b["success"]).float().mean() >= 0.95
    both = a["success"].bool() & b["success"].bool()
    assert abs(float(a["distortion"][both].mean() - b["distortion"][both].mean())) < 0.01 * cpu.mean_distortion
    assert gpu.success_rate >= cpu.success_rate - 0.05
    record = json.loads((tmp_path / "cuda" / "run.json").read_text())
    assert record["precision"]["tf32"] == "off" and record["peak_memory"]["allocated_bytes"] > 0
    assert record["batch"]["problems_per_call"] >= 64


@pytest.mark.gpu
def test_sub_batches_on_cuda_equal_the_unsplit_solve_and_free_memory_counts_the_cache():
    lm = load_checkpoint("n100-100-10", "cuda")
    data = load_split("test")
    kw = {"on_event": lambda e: None, "cancel": lambda: False, "task": "t"}
    args = (lm.model, data.images[:4], data.labels[:4], None, 10, BUDGET, torch.device("cuda"))
    with float32_precision(False):
        whole, split = attack_chunk(*args, 36, **kw), attack_chunk(*args, 5, **kw)
    _same_run(whole, split)
    cuda = torch.device("cuda")
    hold = torch.empty(256 << 20, dtype=torch.uint8, device=cuda)
    del hold  # cached by PyTorch, not in use: the next batch may have it
    free, _ = torch.cuda.mem_get_info(cuda)
    assert device_free_memory(cuda) >= free + (200 << 20)
    assert auto_batch_size(784, 10, cuda, 300) >= 1024
