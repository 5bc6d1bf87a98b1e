"""The attack: targets, box, bookkeeping of the best success, run folders, resume, bad input."""

import json
import math

import numpy as np
import pytest
import scipy.optimize as so
import torch
from safetensors.torch import load_file

from engines.attack.chunks import load_samples
from engines.attack.lbfgsb import minimize
from engines.attack.objective import _Objective
from engines.attack.operation import AttackRequest, resume_attack, run_attack
from engines.attack.results import AttackResult
from engines.attack.search import AttackConfig, attack_problems, paper_distortion, validate_images
from engines.attack.targets import choose_targets, expand_all_targets, parse_target
from engines.core.checkpoint import check_classifier, load_checkpoint
from engines.core.context import RunContext
from engines.core.data import load_split
from engines.core.errors import Cancelled, InputError, ModelError
from engines.core.events import SolverStep, never_cancel

QUICK = AttackConfig(c_steps=4, max_iter=40)


def test_paper_distortion_is_rms_over_pixels():
    x = torch.zeros(2, 1, 28, 28)
    y = x.clone()
    y[0, 0, 0, :4] = 0.5
    d = paper_distortion(x, y)
    assert d[0].item() == pytest.approx(math.sqrt(4 * 0.25 / 784))
    assert d[1].item() == 0.0


def test_random_targets_are_seeded_and_never_the_label():
    labels = torch.arange(10).repeat(50)
    a = choose_targets("random", labels, 10, seed=5)
    assert not bool((a == labels).any())
    assert torch.equal(a, choose_targets("random", labels, 10, seed=5))
    assert not torch.equal(a, choose_targets("random", labels, 10, seed=6))
    assert torch.equal(a[:100], choose_targets("random", labels, 10, seed=5)[:100])
    assert len(set(a.tolist())) == 10


def test_next_least_likely_fixed_and_all_targets():
    labels = torch.tensor([0, 3, 9])
    assert choose_targets("next", labels, 10).tolist() == [1, 4, 0]
    assert choose_targets(7, labels, 10).tolist() == [7, 7, 7]
    lm = load_checkpoint("softmax1")
    x = load_split("test").images[:3]
    expected = lm.model(x).argmin(1)
    assert torch.equal(choose_targets("least-likely", labels, 10, model=lm.model, images=x), expected)
    image, target = expand_all_targets(labels, 10)
    assert image.tolist() == [0] * 9 + [1] * 9 + [2] * 9
    for i, lab in enumerate(labels.tolist()):
        assert sorted(target[image == i].tolist()) == [c for c in range(10) if c != lab]


def test_target_parsing_rejects_out_of_range_labels():
    assert parse_target("all", 10) == "all" and parse_target("3", 10) == 3
    with pytest.raises(InputError, match="out of range"):
        parse_target("10", 10)
    with pytest.raises(InputError):
        parse_target("nearest", 10)


def test_bad_images_are_refused():
    with pytest.raises(InputError, match="NaN"):
        validate_images(torch.tensor([0.5, float("nan")]))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        validate_images(torch.tensor([0.5, 1.2]))


def test_a_model_that_is_no_classifier_is_refused():
    with pytest.raises(ModelError, match="not a classifier"):
        check_classifier(torch.nn.Identity(), (1, 28, 28))
    with pytest.raises(ModelError, match="rejects"):
        check_classifier(torch.nn.Linear(5, 10), (1, 28, 28))


def test_best_success_is_recorded_at_any_evaluation():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[0.9, 0.1, 0.0, 0.0]])
    obj = _Objective(model, (4,), x, torch.tensor([1]), "l2sq")
    rows = torch.tensor([0])
    far = torch.tensor([[0.1, 0.9, 0.0, 0.0]])  # class 1: a success
    near = torch.tensor([[0.45, 0.55, 0.0, 0.0]])  # class 1 and closer
    fail = torch.tensor([[0.8, 0.2, 0.0, 0.0]])  # still class 0
    obj(far, rows)
    assert obj.best_sq.item() == pytest.approx(1.28)
    obj(near, rows)
    obj(fail, rows)
    assert obj.best_sq.item() == pytest.approx(0.405)
    assert torch.equal(obj.best_x, near)


def test_value_and_gradient_come_from_one_objective():
    lm = load_checkpoint("n100-100-10")
    x = load_split("test").images[:2].flatten(1).double()
    model = lm.model.double()
    obj = _Objective(model, (1, 28, 28), x, torch.tensor([3, 5]), "l2sq")
    obj.c = torch.tensor([0.7, 2.0], dtype=torch.float64)
    xp = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    f, g = obj(xp, torch.arange(2))
    v = torch.randn_like(xp)
    eps = 1e-6
    fp, _ = obj(xp + eps * v, torch.arange(2))
    fm, _ = obj(xp - eps * v, torch.arange(2))
    assert torch.allclose((fp - fm) / (2 * eps), (g * v).sum(1), rtol=1e-5)
    lm.model.float()


def _ctx(out=None, cancelled=never_cancel, **kw) -> RunContext:
    return RunContext(device="cpu", out=out, cancelled=cancelled, **kw)


def _run(tmp_path, name, cancelled=never_cancel, **kw) -> tuple[AttackResult, object]:
    req = AttackRequest(
        model=kw.pop("model", "n100-100-10"),
        n=kw.pop("n", 12),
        target=kw.pop("target", "random"),
        seed=1,
        config=kw.pop("config", QUICK),
        **kw,
    )
    return run_attack(req, _ctx(tmp_path / name, cancelled)), tmp_path / name


def test_attack_succeeds_inside_the_box_and_reaches_its_targets(tmp_path):
    summary, folder = _run(tmp_path, "run")
    s = load_samples(folder)
    ok = s["success"].bool()
    assert summary.success_rate == pytest.approx(ok.float().mean().item()) and ok.float().mean() >= 0.9
    assert float(s["x_adv"].min()) >= 0.0 and float(s["x_adv"].max()) <= 1.0
    pred = load_checkpoint("n100-100-10").model(s["x_adv"]).argmax(1)
    assert torch.equal(pred[ok], s["target"][ok])
    assert not bool((s["target"] == s["label"]).any())
    assert torch.allclose(s["distortion"][ok], paper_distortion(s["x"], s["x_adv"])[ok])
    assert summary.mean_distortion == pytest.approx(s["distortion"][ok].mean().item(), rel=1e-6)
    assert (folder / "figure.png").stat().st_size > 1000
    # every figure of the result is the statistic it names, and summary.json holds exactly to_json()
    diff = (s["x_adv"] - s["x"]).flatten(1)[ok]
    assert summary.median_distortion == pytest.approx(s["distortion"][ok].median().item(), rel=1e-6)
    assert summary.mean_l2 == pytest.approx(diff.norm(dim=1).mean().item(), rel=1e-5)
    assert summary.mean_linf == pytest.approx(diff.abs().amax(1).mean().item(), rel=1e-5)
    assert (summary.model, summary.n, summary.target, summary.device) == ("n100-100-10", 12, "random", "cpu")
    assert summary.n_success == int(ok.sum()) and summary.seconds > 0 and summary.run == str(folder)
    assert json.loads((folder / "summary.json").read_text()) == json.loads(json.dumps(summary.to_json()))
    assert AttackResult.from_json(summary.to_json()) == summary


def test_all_targets_keep_the_closest_success(tmp_path):
    all_summary, all_dir = _run(tmp_path, "all", n=4, target="all")
    nxt_summary, nxt_dir = _run(tmp_path, "next", n=4, target="next")
    a, b = load_samples(all_dir), load_samples(nxt_dir)
    assert bool(a["success"].all())
    both = a["success"].bool() & b["success"].bool()
    assert bool((a["distortion"][both] <= b["distortion"][both] + 1e-6).all())
    assert all_summary.mean_distortion <= nxt_summary.mean_distortion + 1e-6
    pred = load_checkpoint("n100-100-10").model(a["x_adv"]).argmax(1)
    assert torch.equal(pred, a["target"]) and not bool((a["target"] == a["label"]).any())


def test_larger_c_gives_smaller_minimisers():
    # the paper's convention: c multiplies the distance, so the minimiser moves less for a larger c
    lm = load_checkpoint("softmax1")
    x = load_split("test").images[:6].flatten(1)
    t = (load_split("test").labels[:6] + 1) % 10
    dist = []
    for c in (0.1, 1.0, 10.0):
        obj = _Objective(lm.model, (1, 28, 28), x, t, "l2sq")
        obj.c = torch.full((6,), c)
        res = minimize(obj, x.clone(), 0.0, 1.0, max_iter=200)
        dist.append((res.x - x).norm(dim=1))
    assert bool((dist[1] < dist[0]).all()) and bool((dist[2] < dist[1]).all())


def test_interrupted_run_keeps_chunks_and_resumes_to_the_same_result(tmp_path):
    full, full_dir = _run(tmp_path, "full", n=6, batch_size=2)
    calls = {"n": 0}

    def cancel_after_first_chunk() -> bool:
        calls["n"] += 1
        return len(list((tmp_path / "cut" / "chunks").glob("*.safetensors"))) >= 1

    req = AttackRequest(model="n100-100-10", n=6, target="random", seed=1, config=QUICK, batch_size=2)
    with pytest.raises(Cancelled):
        run_attack(req, _ctx(tmp_path / "cut", cancel_after_first_chunk))
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert [p.name for p in (tmp_path / "cut" / "chunks").glob("*")] == ["000000-000002.safetensors"]
    kept = load_file(str(tmp_path / "cut" / "chunks" / "000000-000002.safetensors"))
    resumed = resume_attack(tmp_path / "cut", _ctx())
    a, b = load_samples(full_dir), load_samples(tmp_path / "cut")
    assert torch.equal(a["x_adv"], b["x_adv"]) and torch.equal(a["target"], b["target"])
    assert torch.equal(kept["x_adv"], b["x_adv"][:2])
    assert resumed.success_rate == full.success_rate and resumed.run == str(tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "done"
    # a finished run is left alone: resuming again reads its result back
    again = resume_attack(tmp_path / "cut", _ctx())
    assert again.to_json() == json.loads((tmp_path / "cut" / "summary.json").read_text())


def test_cli_attack_json_and_bad_inputs(cli, tmp_path):
    rc, out, _ = cli(
        "attack",
        "--model",
        "softmax1",
        "--n",
        "3",
        "--c-steps",
        "3",
        "--max-iter",
        "30",
        "--device",
        "cpu",
        "--out",
        tmp_path / "r",
        "--json",
    )
    assert rc == 0
    summary = json.loads(out)
    assert summary["model"] == "softmax1" and summary["n"] == 3 and summary["device"] == "cpu"
    assert (tmp_path / "r" / "summary.json").is_file() and (tmp_path / "r" / "samples.safetensors").is_file()
    for args in (["--target", "12"], ["--n", "0"], ["--offset", "9999"], ["--distance", "l1"], ["--model", "nope"]):
        rc, _, err = cli("attack", "--model", "softmax1", "--device", "cpu", "--out", tmp_path / f"bad{args[1]}", *args)
        assert rc == 2, args
        assert "Traceback" not in err and "error" in err and len(err.strip().splitlines()) == 1
    # a refused run leaves nothing that blocks the same --out once the input is fixed
    assert not (tmp_path / "bad12" / "run.json").exists()
    rc, _, err = cli("attack", "--model", "softmax1", "--n", "2", "--c-steps", "2", "--out", tmp_path / "bad12")
    assert rc == 0, err
    rc, _, err = cli("attack", "--n", "abc")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--n" in err


def test_cli_ctrl_c_keeps_finished_chunks_and_resume_finishes_the_run(cli, tmp_path, monkeypatch):
    import blindspot.console

    folder = tmp_path / "r"
    # the first Ctrl-C, as the CLI's cancel check sees it, arrives once the first chunk is saved
    monkeypatch.setattr(blindspot.console.CtrlC, "__call__", lambda self: any((folder / "chunks").glob("*")))
    args = ("--model", "softmax1", "--n", "4", "--batch-size", "2", "--c-steps", "2", "--max-iter", "20")
    rc, out, err = cli("attack", *args, "--device", "cpu", "--out", folder)
    assert rc == 130 and out == ""
    assert f"blindspot attack --resume {folder}" in " ".join(err.split())
    assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
    assert [p.name for p in (folder / "chunks").iterdir()] == ["000000-000002.safetensors"]
    monkeypatch.undo()
    rc, out, err = cli("attack", "--resume", folder, "--model", "softmax1", "--json")
    assert rc == 0, err
    assert "--model ignored" in err
    resumed = json.loads(out)
    assert resumed == json.loads((folder / "summary.json").read_text())
    assert resumed["n"] == 4 and resumed["run"] == str(folder)
    # the table goes to stdout, the log line with the run folder to stderr
    rc, out, err = cli("attack", "--resume", folder)
    assert rc == 0 and "attack on softmax1" in out and f"{100 * resumed['success_rate']:.1f}%" in out
    assert f"run folder: {folder}" in err
    rc, _, err = cli("attack", "--resume", tmp_path / "nothing")
    assert rc == 2 and "holds no run" in err


@pytest.mark.slow
def test_done_criterion_n100_random_targets(cli, tmp_path):
    rc, out, _ = cli(
        "attack",
        "--model",
        "n100-100-10",
        "--n",
        "100",
        "--target",
        "random",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "r",
        "--json",
    )
    assert rc == 0
    s = json.loads(out)
    assert s["success_rate"] >= 0.99 and s["mean_distortion"] < 0.06


@pytest.mark.gpu
def test_cuda_attack_matches_the_cpu_attack():
    lm_cpu = load_checkpoint("n100-100-10", "cpu")
    lm_gpu = load_checkpoint("n100-100-10", "cuda")
    data = load_split("test")
    x, t = data.images[:32], (data.labels[:32] + 1) % 10
    cfg = AttackConfig(c_steps=5, max_iter=50)
    a = attack_problems(lm_cpu.model, x, t, cfg)
    b = attack_problems(lm_gpu.model, x.cuda(), t.cuda(), cfg)
    assert b.x_adv.is_cuda
    assert (a.success == b.success.cpu()).float().mean() >= 0.95
    both = a.success & b.success.cpu()
    da, db = paper_distortion(x, a.x_adv)[both], paper_distortion(x, b.x_adv.cpu())[both]
    assert abs(da.mean() - db.mean()) / da.mean() < 0.02


def test_out_of_memory_halves_the_chunk_and_goes_on(tmp_path, monkeypatch):
    import engines.attack.batching as ar

    real = ar.attack_problems
    sizes = []

    def flaky(model, x, target, config, **kw):
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, target, config, **kw)

    monkeypatch.setattr(ar, "attack_problems", flaky)
    summary, folder = _run(tmp_path, "oom", n=6, batch_size=8)
    assert sizes == [6, 3, 1, 1, 1, 1, 1, 1] and summary.n == 6
    assert len(list((folder / "chunks").glob("*.safetensors"))) == 6


def test_cpu_allocator_keeps_freed_memory_on_glibc():
    import platform
    import sys

    from engines.core.device import keep_freed_memory

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True and keep_freed_memory() is True


def test_progress_speaks_for_the_whole_run_and_counts_images():
    from engines.attack.results import RunTally

    def step(done: int, rate: float, dist: float) -> SolverStep:
        return SolverStep(
            task="attack",
            done=done,
            total=10,
            c_step=1,
            c_steps=2,
            iteration=done,
            objective=1.0,
            running=2,
            success_rate=rate,
            mean_distortion=dist,
        )

    tally = RunTally()
    tally.add({"success": torch.tensor([1, 1, 0], dtype=torch.uint8), "distortion": torch.tensor([0.1, 0.3, math.nan])})
    seen = []
    emit = tally.progress(seen.append, finished=3, chunk=2, total=5)
    emit(step(1, 0.5, 0.5))
    last = seen[-1]
    assert last.success_rate == pytest.approx(3 / 5)  # 2 of 3 finished + 1 of 2 in this chunk
    assert last.mean_distortion == pytest.approx((0.1 + 0.3 + 0.5) / 3)
    assert (last.images_done, last.images_total, last.chunk_images) == (3, 5, 2)
    emit(step(2, 0.0, math.nan))
    assert seen[-1].mean_distortion == pytest.approx(0.2)  # only the finished chunks so far

    # --target all: several problems per image; progress counts images, not (image, target) problems
    lm = load_checkpoint("softmax1")
    data = load_split("test")
    image, tgt = expand_all_targets(data.labels[:3], 10)
    events = []
    res = attack_problems(
        lm.model, data.images[:3][image], tgt, QUICK, on_event=events.append, progress_every=0.0, groups=image
    )
    assert events and all(isinstance(e, SolverStep) for e in events)
    assert all((e.success_rate * 3) % 1 == pytest.approx(0) for e in events)
    per_image = res.success.view(3, 9).any(1).float().mean()
    assert events[-1].success_rate == pytest.approx(float(per_image))


def test_images_the_model_already_gets_wrong_are_counted_apart_and_json_stays_strict(tmp_path):
    lm = load_checkpoint("softmax3")
    data = load_split("test")
    with torch.no_grad():
        wrong = (lm.model(data.images[:200]).argmax(1) != data.labels[:200]).nonzero().flatten()
    first_wrong = int(wrong[0])
    summary, folder = _run(tmp_path, "wrong", model="softmax3", n=3, offset=first_wrong - 2, target="all")
    s = load_samples(folder)
    trivial = s["trivial"].bool()
    assert bool(trivial[2]) and not bool(s["success"][2])  # nothing to attack: not a success at distortion 0
    assert torch.equal(s["x_adv"][2], s["x"][2])
    assert summary.n_trivial == int(trivial.sum())
    assert summary.success_rate == pytest.approx(summary.n_success / (3 - summary.n_trivial))
    assert bool((s["distortion"][s["success"].bool()] > 0).all())
    text = (folder / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_json_text_writes_non_finite_numbers_as_null():
    from engines.core.io import json_text

    text = json_text({"a": math.nan, "b": torch.tensor([1.0, math.inf]), "c": [-math.inf, 2]}, indent=None)
    assert text == '{"a": null, "b": [1.0, null], "c": [null, 2]}'


def test_labels_beyond_the_models_classes_are_refused(cli, tmp_path):
    import numpy as np

    from tests.conftest import make_mnist_dir, write_idx

    folder = make_mnist_dir(tmp_path / "mnist", compress=False)
    labels = np.full(100, 12, dtype=np.uint8)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    rc, _, err = cli("attack", "--model", "softmax1", "--data", folder, "--n", "2", "--out", tmp_path / "r")
    assert rc == 2 and "label 12" in err and "10 classes" in err


def test_c_search_matches_a_brute_force_grid_of_c_on_a_linear_softmax_model():
    """Oracle: for each problem, scipy's L-BFGS-B at every c of a fine grid (40 per decade), keeping the
    closest minimiser that reaches the target. Our c search must agree on which problems succeed and be
    as close (it also keeps trial points, and bisects c finer than the grid) but not implausibly closer."""
    gen = torch.Generator().manual_seed(3)
    n, k, b = 16, 5, 8
    model = torch.nn.Linear(n, k).double()
    x = torch.rand(b, n, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, n, generator=gen, dtype=torch.float64) * 2)
        model.bias.copy_(-model.weight @ x.mean(0))
        # the last class loses to class 0 everywhere in the box: a target no search can reach
        model.weight[k - 1] = model.weight[0] - 1.0
        model.bias[k - 1] = model.bias[0] - 1.0
        pred = model(x).argmax(1)
    target = (pred + 1 + torch.arange(b) % (k - 2)) % (k - 1)
    target[target == pred] = (target[target == pred] + 1) % (k - 1)
    target[-2:] = k - 1
    assert not bool((target == pred).any())
    config = AttackConfig(c_steps=12, max_iter=500)
    ours = attack_problems(model, x, target, config)

    w, bias = model.weight.detach().numpy(), model.bias.detach().numpy()

    def reaches(z: np.ndarray, t: int) -> bool:
        logits = w @ z + bias
        return bool(logits[t] > np.delete(logits, t).max() + config.margin)

    grid = np.logspace(-2, 3, 201)
    for i in range(b):
        xi, t = x[i].numpy(), int(target[i])
        best_sq, best_c = math.inf, math.nan
        for c in grid:

            def fun(z: np.ndarray, c: float = c, xi: np.ndarray = xi, t: int = t) -> tuple[float, np.ndarray]:
                """c‖z − x‖² + cross-entropy of the linear softmax model, and its gradient, in numpy."""
                logits = w @ z + bias
                top = logits.max()
                p = np.exp(logits - top)
                p /= p.sum()
                ce = top + math.log(np.exp(logits - top).sum()) - logits[t]
                p[t] -= 1.0
                return float(c * ((z - xi) ** 2).sum() + ce), 2 * c * (z - xi) + w.T @ p

            ref = so.minimize(fun, xi.copy(), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * n)
            if reaches(ref.x, t):
                best_sq, best_c = min(best_sq, float(((ref.x - xi) ** 2).sum())), c
        assert bool(ours.success[i]) == math.isfinite(best_sq), i
        if not math.isfinite(best_sq):
            assert torch.equal(ours.x_adv[i], x[i]) and math.isnan(float(ours.c[i]))
            continue
        adv = ours.x_adv[i]
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0 and reaches(adv.numpy(), t)
        assert float(ours.sq_dist[i]) == pytest.approx(float((adv - x[i]).pow(2).sum()), rel=1e-9)
        ours_d, brute_d = math.sqrt(float(ours.sq_dist[i])), math.sqrt(best_sq)
        assert 0.9 * brute_d <= ours_d <= brute_d * (1 + 1e-3), (i, ours_d, brute_d)
        # the largest successful c: ours is bracketed finer than the grid's step (a factor 10^(1/40))
        assert best_c / 1.2 <= float(ours.c[i]) <= best_c * 1.2, (i, float(ours.c[i]), best_c)
    assert int(ours.success.sum()) == b - 2
