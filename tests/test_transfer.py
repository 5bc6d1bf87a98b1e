"""Transfer: cache, diagonal, noise and amplified rms, matrix round trip, run folder, Wilson oracle, CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import binomtest

from engines.attack.adversarial_sets import adversarial_set
from engines.attack.operation import AttackRequest
from engines.attack.perturb import amplify, gaussian_noise, unclipped_noise
from engines.attack.search import AttackConfig, paper_distortion
from engines.core.context import RunContext
from engines.core.errors import Cancelled, InputError
from engines.core.events import SetReady, Step
from engines.core.io import read_json, write_json_atomic
from engines.core.models import ModelRef
from engines.core.runs import redo_interrupted
from engines.transfer.cells import cell_examples
from engines.transfer.matrix import wilson_interval
from engines.transfer.operation import run_transfer
from engines.transfer.request import (
    TransferRequest,
    model_refs,
    named_models,
    numbers,
    per_model,
    scaled_pairs,
)
from engines.transfer.store import load_matrix

QUICK = AttackConfig(c_steps=3, max_iter=30)
CPU = RunContext(device="cpu")


def advset(model: str, n: int, **changes) -> AttackRequest:
    return AttackRequest(**{"model": model, "split": "test", "n": n, "target": "all", "config": QUICK, **changes})


def test_adversarial_sets_are_cached_and_invalidated_by_any_setting(isolated_cache):
    a = adversarial_set(advset("softmax1", 3), CPU)
    assert not a.cached
    b = adversarial_set(advset("softmax1", 3), CPU)
    assert b.cached and b.folder == a.folder
    assert torch.equal(a.samples["x_adv"], b.samples["x_adv"])
    for changed in (dict(config=AttackConfig(c_steps=3, max_iter=31)), dict(seed=1), dict(offset=1)):
        c = adversarial_set(advset("softmax1", 3, **changed), CPU)
        assert not c.cached and c.folder != a.folder, changed
    d = adversarial_set(advset("softmax2", 3), CPU)
    assert not d.cached and d.folder != a.folder
    with pytest.raises(InputError, match="target all"):
        adversarial_set(advset("softmax1", 3, target="random"), CPU)


def test_an_interrupted_set_resumes_from_its_chunks(isolated_cache):
    calls = {"n": 0}

    def cancel_soon() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        adversarial_set(advset("softmax1", 2), RunContext(device="cpu", cancelled=cancel_soon))
    s = adversarial_set(advset("softmax1", 2), CPU)
    assert not s.cached and s.samples["x_adv"].shape == (2, 1, 28, 28)


def test_matrix_diagonal_noise_amplified_round_trip_and_events(tmp_path):
    request = TransferRequest(
        sources=("softmax1", "n100-100-10"),
        targets=("softmax1", "n100-100-10", "softmax2"),
        split="test",
        n=6,
        noise=(0.1, 0.3),
        unclipped=(0.3,),
        amplify_rms=0.1,
        scaled=(("n100-100-10", 0.058),),
        config=QUICK,
    )
    events = []
    m = run_transfer(request, RunContext(device="cpu", out=tmp_path / "t", on_event=events.append))
    assert m.folder == tmp_path / "t"
    names = [r.name for r in m.rows]
    assert names[0] == "softmax1" and names[2] == "n100-100-10"
    for i, src in ((0, "softmax1"), (2, "n100-100-10")):
        summary = m.settings["sources"][src]["summary"]
        # the diagonal is the source's error on its own set: its successes plus the images it misclassifies anyway
        assert m.values[i, m.columns.index(src)] == pytest.approx(
            100 * (summary["n_success"] + summary["n_trivial"]) / summary["n"]
        )
        assert m.rows[i].distortion == pytest.approx(summary["mean_distortion"], rel=1e-5)
    noise_rows = [r for r in m.rows if r.kind == "noise"]
    assert [(r.stddev, r.clipped) for r in noise_rows] == [(0.1, True), (0.3, True), (0.3, False)]
    for r in noise_rows:
        assert r.distortion == pytest.approx(r.stddev, rel=0.05)
    raw = load_file(str(tmp_path / "t" / noise_rows[2].set_file))["x_pert"]
    assert float(raw.min()) < 0 and float(raw.max()) > 1  # left outside the box
    for r in (r for r in m.rows if r.kind == "amplified"):
        assert r.distortion == pytest.approx(0.1, rel=0.01)
    # --scale-to: only the named source gets a row, its perturbations at that rms, in the same directions
    (scaled,) = [r for r in m.rows if r.kind == "scaled"]
    assert (scaled.source, scaled.stddev, scaled.name) == ("n100-100-10", 0.058, "n100-100-10 scaled to rms 0.058")
    assert scaled.distortion == pytest.approx(0.058, rel=0.01)
    clean = load_file(str(tmp_path / "t" / "sets" / "images.safetensors"))["x"]
    own = load_file(str(tmp_path / "t" / m.rows[2].set_file))["x_pert"]
    big = load_file(str(tmp_path / "t" / scaled.set_file))["x_pert"]
    r_own, r_big = (own - clean).flatten(1), (big - clean).flatten(1)
    moved = r_own.norm(dim=1) > 0
    cos = torch.nn.functional.cosine_similarity(r_own[moved], r_big[moved])
    assert (cos > 0.9).all()  # clipping to the box bends a direction a little, never turns it
    back = load_matrix(tmp_path / "t" / "matrix.json")
    assert back.columns == m.columns and [r.name for r in back.rows] == names
    assert [r.clipped for r in back.rows] == [r.clipped for r in m.rows]
    assert np.array_equal(back.errors, m.errors) and np.allclose(back.values, m.values)
    data = json.loads((tmp_path / "t" / "matrix.json").read_text())
    assert data["values"] == np.round(m.values, 4).tolist()
    assert data["distortions"] == pytest.approx([r.distortion for r in m.rows], nan_ok=True)
    csv_lines = (tmp_path / "t" / "matrix.csv").read_text().splitlines()
    assert csv_lines[0] == "row,kind,softmax1,n100-100-10,softmax2,distortion,n"
    assert csv_lines[1].split(",")[2] == f"{m.values[0, 0]:.2f}"
    ex = cell_examples(back, 0, 0, k=3)
    assert 1 <= len(ex) <= 3 and all(e["pred"] != e["label"] for e in ex)
    # the run folder records the request it was made from, and its end
    run = read_json(tmp_path / "t" / "run.json")
    assert run["kind"] == "transfer" and run["status"] == "done"
    assert TransferRequest.from_json(run["request"]) == request
    # each source's set is announced once it is ready; the first time it was computed
    ready = [e for e in events if isinstance(e, SetReady)]
    assert [(e.source, e.cached, e.done, e.total) for e in ready] == [
        ("softmax1", False, 1, 2),
        ("n100-100-10", False, 2, 2),
    ]
    evaluated = [e for e in events if isinstance(e, Step) and e.task == "evaluate"]
    assert evaluated[-1].done == evaluated[-1].total == len(m.rows)
    events.clear()
    again = run_transfer(request, RunContext(device="cpu", out=tmp_path / "t2", on_event=events.append))
    assert [e.cached for e in events if isinstance(e, SetReady)] == [True, True]
    assert np.array_equal(again.errors, m.errors)


def test_request_validation_and_defaults(tmp_path):
    r = TransferRequest(sources=["softmax1"], noise=[0.1])
    assert r.targets == (ModelRef("softmax1"),) and r.noise == (0.1,)
    assert TransferRequest.from_json(r.to_json()) == r and r.to_json()["targets"] == ["softmax1"]
    for bad, message in (
        (dict(), "nothing to evaluate"),
        (dict(noise=(0.1,)), "at least one target"),
        (dict(sources=("softmax1",), n=0), "--n must be at least 1"),
        (dict(sources=("softmax1",), offset=-1), "--offset must be at least 0"),
        (dict(sources=("softmax1",), noise=(1.5,)), "must lie in"),
        (dict(sources=("softmax1",), amplify_rms=0.0), "must lie in"),
        (dict(sources=("softmax1",), scaled=(("softmax2", 0.1),)), "not one of the sources"),
        (dict(sources=("softmax1",), scaled=(("softmax1", 1.5),)), "must lie in"),
    ):
        with pytest.raises(InputError, match=message):
            TransferRequest(**bad)
    with pytest.raises(InputError, match="damaged"):
        TransferRequest.from_json({"sources": ["softmax1"]})


def test_an_interrupted_matrix_folder_may_be_run_again_a_finished_one_not(tmp_path):
    request = TransferRequest(targets=("softmax1",), split="test", n=4, noise=(0.1,))
    out = tmp_path / "m"
    out.mkdir()
    write_json_atomic(out / "run.json", {"format": 1, "kind": "transfer", "status": "interrupted", "request": {}})
    (out / "matrix.csv").write_text("stale")
    m = run_transfer(request, RunContext(device="cpu", out=out))
    assert m.errors.shape == (1, 1) and read_json(out / "run.json")["status"] == "done"
    assert (out / "matrix.csv").read_text().startswith("row,kind")
    with pytest.raises(InputError, match="already holds results"):
        run_transfer(request, RunContext(device="cpu", out=out))
    with pytest.raises(Cancelled):  # noise rows: the evaluation loop checks too
        run_transfer(request, RunContext(device="cpu", out=tmp_path / "c", cancelled=lambda: True))


def test_noise_and_amplification_hit_their_rms_per_image():
    x = torch.rand(5, 1, 28, 28)
    x[:, :, :10] = 0.0  # a black band, where clipping cuts the noise in half
    for rms in (0.06, 0.1, 0.3):
        assert torch.allclose(paper_distortion(x, gaussian_noise(x, rms, seed=2)), torch.full((5,), rms), rtol=1e-3)
    x_adv = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    amp = amplify(x, x_adv, 0.1)
    assert torch.allclose(paper_distortion(x, amp), torch.full((5,), 0.1), rtol=1e-3)
    assert float(amp.min()) >= 0 and float(amp.max()) <= 1
    cos = torch.nn.functional.cosine_similarity((amp - x).flatten(1), (x_adv - x).flatten(1))
    assert bool((cos > 0.9).all())


def test_unclipped_noise_is_seeded_raw_gaussian_noise():
    x = torch.zeros(4, 1, 28, 28)
    a, b = unclipped_noise(x, 0.3, seed=5), unclipped_noise(x, 0.3, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, unclipped_noise(x, 0.3, seed=6))
    assert float((a - x).std()) == pytest.approx(0.3, rel=0.03)
    assert abs(float((a - x).mean())) < 0.01  # unbiased, unlike noise clipped on a black background
    assert float(gaussian_noise(x, 0.3, seed=5).sub(x).mean()) > 0.1


@pytest.mark.parametrize("n", [1, 2, 7, 20, 50, 333, 1000])
def test_wilson_interval_matches_scipy(n):
    """Independent oracle: scipy's Wilson score interval for the same counts."""
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9), (k, n)


def test_wilson_interval_without_images_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_transfer_cli(cli, tmp_path):
    rc, out, _ = cli(
        "transfer",
        "--sources",
        "softmax1",
        "--targets",
        "softmax1,softmax2",
        "--split",
        "test",
        "--n",
        "3",
        "--c-steps",
        "2",
        "--max-iter",
        "20",
        "--noise",
        "0.1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "m",
        "--json",
    )
    assert rc == 0
    data = json.loads(out)
    assert data["columns"] == ["softmax1", "softmax2"] and [r["name"] for r in data["rows"]] == [
        "softmax1",
        "Gaussian noise rms 0.1",
    ]
    assert data["folder"] == str(tmp_path / "m")
    assert data == json.loads((tmp_path / "m" / "matrix.json").read_text()) | {"folder": str(tmp_path / "m")}
    assert read_json(tmp_path / "m" / "run.json")["request"]["config"]["c_steps"] == 2
    for args, message in (
        (("--noise", "abc"), "comma-separated numbers"),
        (("--n", "0"), "--n must be at least 1"),
        (("--noise", "2"), "must lie in (0, 1)"),
        (("--weights", "a=x", "--weights", "a=y"), "--weights is given twice for a"),
        (("--num-classes", "softmax1=many"), "--num-classes takes a number (or NAME=NUMBER), got 'many'"),
        (("--scale-to", "0.1"), "--scale-to takes SOURCE=RMS"),
    ):
        rc, _, err = cli("transfer", "--sources", "softmax1", *args, "--out", tmp_path / "x")
        assert rc == 2 and message in err, err
        assert not (tmp_path / "x").exists()  # refused before any folder was made


FLAGS = {"weights": "--weights", "num_classes": "--num-classes", "normalize": "--normalize"}


def test_per_model_options_are_parsed_in_the_engine_as_the_cli_parsed_them(tmp_path):
    assert per_model(["resnet18=a.pth", " alexnet = b.pth ", "all.pth"], "--weights") == {
        "resnet18": "a.pth",
        "alexnet": "b.pth",
        None: "all.pth",
    }
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"")
    refs = model_refs(
        ["resnet18", "alexnet", "softmax1", str(ckpt), "pkg.nets:cnn"],
        weights=["resnet18=~/w/r18.pth", "all.pth"],
        num_classes=["resnet18=7", "4"],
        normalize=["pkg.nets:cnn=none", "imagenet"],
    )
    home = str(Path("~").expanduser())
    assert refs[0] == ModelRef("resnet18", weights=f"{home}/w/r18.pth", num_classes=7, normalize="imagenet")
    assert refs[1] == ModelRef("alexnet", weights="all.pth", num_classes=4, normalize="imagenet")
    # zoo models and checkpoint files carry their own weights, head and normalisation: bare values skip them
    assert refs[2] == ModelRef("softmax1") and refs[3] == ModelRef(str(ckpt))
    assert refs[4] == ModelRef(factory="pkg.nets:cnn", weights="all.pth", num_classes=4, normalize="none")
    assert model_refs([]) == ()
    assert scaled_pairs(["softmax1=0.058", "m1 = 0.1"]) == (("softmax1", 0.058), ("m1", 0.1))
    assert numbers(" 0.1, 0.3,", "--noise") == [0.1, 0.3] and numbers(None, "--noise") == []


@pytest.mark.parametrize(
    ("call", "cli_message", "field_message"),
    [
        (lambda L: model_refs(["a"], weights=["a=x", "a=y"], labels=L), "--weights is given twice for a", "weights"),
        (lambda L: model_refs(["a"], weights=["x", "y"], labels=L), "--weights is given twice for every model", None),
        (lambda L: model_refs(["a"], normalize=["a=none", "a=none"], labels=L), "--normalize is given twice", None),
        (
            lambda L: model_refs(["resnet18"], num_classes=["resnet18=many"], labels=L),
            "--num-classes takes a number (or NAME=NUMBER), got 'many'",
            "num_classes takes a number",
        ),
        (lambda L: model_refs(["resnet18"], num_classes=["1"], labels=L), "--num-classes must be at least 2", None),
        (lambda L: model_refs(["resnet18"], normalize=["bogus"], labels=L), "normaliz", None),
        (
            lambda L: model_refs(["softmax1"], weights=["softmax1=x.pt"], labels=L),
            "softmax1 is a zoo model or checkpoint file with its own weights and head: --weights applies to "
            "torchvision names and factories",
            "weights applies to torchvision names",
        ),
        (
            lambda L: model_refs(["resnet18", "softmax1"], num_classes=["softmax1=3"], labels=L),
            "--num-classes applies to torchvision names and factories",
            "num_classes applies",
        ),
        (lambda L: scaled_pairs(["0.1"], L["scale"]), "--scale-to takes SOURCE=RMS, e.g. softmax2=0.1", "scaled"),
        (lambda L: scaled_pairs(["a=x"], L["scale"]), "--scale-to takes comma-separated numbers, got 'x'", None),
        (lambda L: scaled_pairs(["a="], L["scale"]), "--scale-to takes one number per source", None),
        (lambda L: numbers("0.1,abc", L["noise"]), "--noise takes comma-separated numbers, got '0.1,abc'", "noise"),
    ],
)
def test_per_model_options_refuse_what_the_cli_refused_naming_the_field(call, cli_message, field_message):
    """With the CLI's flags as labels the messages are the CLI's own; without, they name the request's field."""
    with pytest.raises(InputError) as refused:
        call({**FLAGS, "scale": "--scale-to", "noise": "--noise"})
    assert cli_message in str(refused.value) and len(str(refused.value).splitlines()) == 1
    if field_message:
        with pytest.raises(InputError, match=field_message):
            call({"scale": "scaled", "noise": "noise"})


def test_model_lists_may_carry_their_weights(tmp_path):
    """The Transfer screen's fields: `NAME=FILE` entries give a model its weights, each pair once."""
    names, pairs = named_models(["resnet18=~/w.pth", "softmax1", "pkg.nets:cnn = c.pt", "resnet18=~/w.pth"])
    assert names == ["resnet18", "softmax1", "pkg.nets:cnn", "resnet18"]
    assert pairs == ["resnet18=~/w.pth", "pkg.nets:cnn=c.pt"]
    odd = tmp_path / "run=3.safetensors"  # an existing file is a checkpoint, '=' or not
    odd.write_bytes(b"")
    assert named_models([str(odd)]) == ([str(odd)], [])
    for bad in ("=w.pth", "resnet18="):
        with pytest.raises(InputError, match="NAME=FILE"):
            named_models([bad])


def test_an_interrupted_run_of_the_same_kind_may_be_redone(tmp_path):
    out = tmp_path / "r"
    ctx = RunContext(device="cpu", out=out)
    assert redo_interrupted(ctx, "transfer") is ctx  # nothing there yet
    out.mkdir()
    for kind, status, redo in (
        ("transfer", "interrupted", True),
        ("transfer", "done", False),
        ("reproduce", "interrupted", False),
    ):
        write_json_atomic(out / "run.json", {"format": 1, "kind": kind, "status": status, "request": {}})
        assert redo_interrupted(ctx, "transfer").overwrite is redo, (kind, status)
    (out / "run.json").write_text("{damaged")
    assert redo_interrupted(ctx, "transfer") is ctx


def test_model_errors_name_the_flag_on_the_command_line_and_words_in_the_workbench(cli, tmp_path):
    """The transfer request's list fields and a model's options are named by flag (CLI) or label (workbench); an
    explicit NAME=FILE on a zoo model is refused before any job, and load_model words its own refusal likewise."""
    from engines.core.models import load_model

    with pytest.raises(InputError) as caught:
        TransferRequest()
    assert str(caught.value) == "nothing to evaluate: give --sources and/or --noise"
    assert caught.value.worded("label") == "nothing to evaluate: give sources and/or noise"
    with pytest.raises(InputError) as caught:
        TransferRequest(sources=("softmax1",), scaled=(("m1", 0.1),))
    assert str(caught.value) == "--scale-to m1=…: m1 is not one of the sources"
    assert caught.value.worded("label") == "scaled m1=…: m1 is not one of the sources"
    with pytest.raises(InputError) as caught:
        load_model(ModelRef("softmax1", weights="x.pt"))
    assert (
        str(caught.value) == "--weights applies to torchvision names and --model-factory; a checkpoint has its weights"
    )
    assert "--" not in caught.value.worded("label")
    rc, _, err = cli(
        "transfer",
        "--sources",
        "softmax1",
        "--weights",
        "softmax1=x.pt",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "x"),
    )
    assert rc == 2 and "--weights applies to torchvision names and factories" in " ".join(err.split()), err
    assert not (tmp_path / "x").exists()  # refused before any folder was made
