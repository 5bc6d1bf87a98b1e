"""§3 engine and CLI: top-k, random directions, scores, statistics, activation cache, figures, `units`/`layers`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blindspot.cli import main
from engines.core.checkpoint import load_checkpoint, save_checkpoint
from engines.core.context import RunContext
from engines.core.data import Dataset, load_split
from engines.core.errors import Cancelled, InputError
from engines.core.events import Step
from engines.core.runs import read_run_record
from engines.core.zoo import build_model, mlp_spec
from engines.report.grids import captioned_grid
from engines.units.activations import Activations, LayerInfo, layer_activations, list_layers
from engines.units.directions import compare_units, random_directions
from engines.units.operation import LayersRequest, UnitsRequest, run_layers, run_units
from engines.units.scores import label_scores, mean_pairwise_cosine, top_k
from engines.units.stats import brief_verdict, cliffs_delta, compare_scores, dissent, verdict_sentence

torch.set_num_threads(1)


def _acts(features: torch.Tensor, name: str = "toy") -> Activations:
    info = LayerInfo(name, "Linear", (int(features.shape[1]),))
    return Activations(features, info, "none", key="test", cached=False)


def _brute_top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values by a plain Python scan: repeated argmax with removal."""
    remaining = list(range(len(scores)))
    picked = []
    for _ in range(k):
        best = max(remaining, key=lambda i: scores[i])
        picked.append(best)
        remaining.remove(best)
    return picked


@pytest.fixture()
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    spec = mlp_spec([12, 8])
    model = build_model(spec)
    return save_checkpoint(model, {"id": "tiny", "spec": spec}, tmp_path / "models" / "tiny.safetensors")


def test_top_k_matches_brute_force_for_units_and_random_directions():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(300, 20, generator=gen)
    labels = torch.randint(0, 10, (300,), generator=gen)
    images = torch.rand(300, 1, 28, 28, generator=gen)
    res = compare_units(_acts(feats), labels, k=5, seed=7, n_random=40, images=images, n_boot=50)
    f64 = feats.double().numpy()
    for row, unit in enumerate(res.units.ids):
        assert res.units.top[row].tolist() == _brute_top(f64[:, unit], 5)
        assert res.units.top[row, 0] == int(np.argmax(f64[:, unit]))
    dirs = random_directions(20, 40, seed=7).double().numpy()
    for row, number in enumerate(res.random.ids):
        proj = [float(np.dot(f64[i], dirs[number])) for i in range(300)]
        assert res.random.top[row].tolist() == _brute_top(np.array(proj), 5)
    vals, idx = top_k(feats, 3, largest=False)
    assert idx[4].tolist() == _brute_top(-f64[:, 4], 3)
    assert torch.allclose(vals[4], feats[idx[4], 4])


def test_random_directions_unit_norm_and_reproducible():
    a = random_directions(50, 600, seed=3)
    assert a.shape == (600, 50)
    assert torch.allclose(a.norm(dim=1), torch.ones(600), atol=1e-5)
    assert torch.equal(a, random_directions(50, 600, seed=3))
    assert not torch.allclose(a, random_directions(50, 600, seed=4))
    # direction i depends only on (seed, i), not on how many were asked for or where the slice starts
    assert torch.equal(a[250:270], random_directions(50, 20, seed=3, start=250))
    assert torch.equal(a[:10], random_directions(50, 10, seed=3))
    # Gaussian directions are spread out: no two of the first 100 nearly coincide
    gram = a[:100] @ a[:100].T - torch.eye(100)
    assert float(gram.abs().max()) < 0.8


def test_purity_and_entropy_on_hand_made_label_sets():
    labels = np.array([[1, 1, 1, 1], [0, 1, 2, 3], [0, 0, 1, 1], [2, 2, 2, 5]])
    purity, entropy, majority = label_scores(labels, 10)
    assert purity.tolist() == [1.0, 0.25, 0.5, 0.75]
    assert entropy[:3] == pytest.approx([0.0, 2.0, 1.0])
    assert entropy[3] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert majority.tolist()[0] == 1 and majority.tolist()[3] == 2


def test_pairwise_cosine_of_identical_and_orthogonal_images():
    space = torch.zeros(4, 6)
    space[0, 0] = space[1, 0] = 2.0  # same direction, different length
    space[2, 1] = space[3, 2] = 1.0  # orthogonal to everything else
    cos = mean_pairwise_cosine(space, np.array([[0, 1], [1, 2], [0, 2]]))
    assert cos == pytest.approx([1.0, 0.0, 0.0])
    assert mean_pairwise_cosine(space, np.array([[0, 1, 2]]))[0] == pytest.approx(1 / 3)


def test_statistics_no_difference_on_identical_distributions():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=300)
    c = compare_scores(a, rng.permutation(a), seed=1, n_boot=300)
    assert c.p_value > 0.9
    assert c.cliffs_delta == pytest.approx(0.0)
    assert c.mean_diff_ci[0] <= 0 <= c.mean_diff_ci[1]
    assert c.delta_ci[0] <= 0 <= c.delta_ci[1]
    assert c.favours == "neither" and not c.significant
    assert "not more coherent" in verdict_sentence("fc1", c, 8)


def test_statistics_detect_clearly_separated_distributions():
    rng = np.random.default_rng(0)
    units, rand = rng.normal(1.0, 0.1, 100), rng.normal(0.0, 0.1, 400)
    c = compare_scores(units, rand, score="purity", seed=1, n_boot=300)
    assert c.p_value < 1e-10
    assert c.cliffs_delta == pytest.approx(1.0)
    assert c.mean_diff_ci[0] > 0.8 and c.delta_ci[0] > 0.9
    assert c.favours == "units" and c.effect == "large"
    assert "units are more coherent" in verdict_sentence("fc1", c, 8)
    # for entropy lower is more coherent, so the same numbers favour the random directions
    e = compare_scores(units, rand, score="entropy", higher_is_coherent=False, seed=1, n_boot=100)
    assert e.favours == "random" and "less coherent" in verdict_sentence("fc1", e, 8)


def test_the_verdict_names_scores_that_disagree_with_the_primary_one():
    rng = np.random.default_rng(0)
    same = rng.uniform(size=300)
    units, rand = rng.normal(1.0, 0.1, 100), rng.normal(0.0, 0.1, 400)
    flat = compare_scores(same, rng.permutation(same), score="purity", seed=1, n_boot=100)
    clear = compare_scores(units, rand, score="cosine", seed=1, n_boot=100)
    also_flat = compare_scores(same, rng.permutation(same), score="entropy", higher_is_coherent=False, n_boot=100)
    text = dissent({"purity": flat, "cosine": clear, "entropy": also_flat}, "purity")
    assert text.startswith("Other scores disagree: by mean pairwise cosine, units are more coherent")
    assert "entropy" not in text
    assert dissent({"purity": flat, "entropy": also_flat}, "purity") == ""
    brief = brief_verdict({"purity": flat, "cosine": clear, "entropy": also_flat}, "purity")
    assert brief.startswith("units vs random: not more coherent") and "; but more coherent by mean pairwise" in brief
    assert len(brief) < 240 and "entropy" not in brief


def test_cliffs_delta_is_the_rank_biserial_of_mann_whitney():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 5, 60) / 4, rng.integers(0, 6, 80) / 5  # many ties, like purity
    u = mannwhitneyu(a, b).statistic
    assert cliffs_delta(a, b) == pytest.approx(2 * u / (60 * 80) - 1)


def test_degenerate_units_are_left_out_and_large_layers_sampled():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(200, 30, generator=gen)
    feats[:, 3] = 0.5  # constant: no top-k
    feats[:, 7] = 0.0
    feats[:2, 7] = 1.0  # fires on 2 < k images
    labels = torch.randint(0, 10, (200,), generator=gen)
    res = compare_units(_acts(feats), labels, k=4, n_random=30, images=torch.rand(200, 784, generator=gen), n_boot=50)
    assert res.units.degenerate.tolist() == [i in (3, 7) for i in range(30)]
    assert res.comparisons["purity"].n_units == 28 and res.comparisons["purity"].n_random == 30
    assert not set(res.units.ids[res.shown_units]) & {3, 7}
    sampled = compare_units(_acts(feats), labels, k=4, max_units=10, images=torch.rand(200, 5), n_boot=20)
    assert sampled.units_sampled and len(sampled.units) == 10 and len(sampled.random) >= 10
    with pytest.raises(InputError):
        compare_units(_acts(feats), labels, k=4, n_random=5, images=torch.rand(200, 5))


def test_activation_cache_hits_then_misses_on_new_layer_or_checkpoint(tmp_path, monkeypatch, tiny_ckpt):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(tmp_path / "cache"))
    gen = torch.Generator().manual_seed(0)
    data = Dataset(
        torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen), "toy", np.arange(64)
    )
    loaded = load_checkpoint(tiny_ckpt)
    first = layer_activations(loaded, "fc1", data, batch_size=10)
    second = layer_activations(loaded, "fc1", data)
    assert not first.cached and second.cached
    assert torch.equal(first.features, second.features)
    with torch.no_grad():
        assert torch.allclose(first.features, loaded.model.fc1(data.images.flatten(1)), atol=1e-6)
    assert not layer_activations(loaded, "act1", data).cached
    other = Dataset(data.images.flip(0), data.labels, "toy", np.arange(64))
    assert not layer_activations(loaded, "fc1", other).cached
    with torch.no_grad():
        loaded.model.fc1.bias.add_(1.0)
    changed = save_checkpoint(loaded.model, {"id": "tiny", "spec": loaded.meta["spec"]}, tmp_path / "b.safetensors")
    again = layer_activations(load_checkpoint(changed), "fc1", data)
    assert not again.cached
    assert torch.allclose(again.features, first.features + 1.0, atol=1e-5)


def test_list_layers_names_and_shapes():
    model = build_model(
        {
            "kind": "conv",
            "input": [1, 28, 28],
            "channels": 4,
            "kernel": 5,
            "pool": 2,
            "hidden": 16,
            "dropout": 0.5,
            "activation": "relu",
            "classes": 10,
        }
    )
    layers = {info.name: info for info in list_layers(model)}
    assert list(layers) == ["conv1", "act1", "pool1", "flatten", "fc1", "act2", "dropout", "fc2"]
    assert layers["pool1"].shape == (4, 12, 12) and layers["pool1"].size == 576
    assert layers["fc2"].shape == (10,)


def test_captioned_grid_draws_each_image_in_its_cell():
    rows = np.zeros((2, 3, 28, 28), dtype=np.float32)
    rows[1, 2] = 1.0  # one full-white digit: drawn black (inverted, as in the paper)
    img = captioned_grid(rows, ["a", "b"], "", scale=1)
    arr = np.asarray(img)
    right, bottom = img.width - 4, img.height - 4  # PAD after the last cell
    assert (arr[bottom - 28 : bottom, right - 28 : right] == 0).all()
    assert (arr[bottom - 28 : bottom, right - 60 : right - 32] == 255).all()
    with pytest.raises(ValueError):
        captioned_grid(rows, ["only one"], "")


def test_cli_unknown_model_and_layer_exit_2_with_one_line(capsys, tiny_ckpt, monkeypatch, tmp_path):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(tmp_path / "cache"))
    assert main(["units", "--model", "no-such-model", "--layer", "fc1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown model" in lines[0]
    assert main(["units", "--model", str(tiny_ckpt), "--layer", "fc9", "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown layer 'fc9'" in lines[0] and "fc1" in lines[0]
    assert main(["layers", "--model", "no-such-model"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["units", "--model", str(tiny_ckpt), "--layer", "fc1", "--k", "0"]) == 2
    assert (
        main(["units", "--model", str(tiny_ckpt), "--layer", "fc1", "--space", "fc1", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "layer under study" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _act1(ckpt, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """φ = act1(fc1(x)) of the tiny model over the test split, computed without the engine; and the labels."""
    model = load_checkpoint(ckpt).model
    data = load_split("test", data_dir)
    with torch.no_grad():
        feats = model.act1(model.fc1(data.images.flatten(1))).double().numpy()
    return feats, data.labels.numpy()


def _purity(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))


UNITS_ARGS = ["--layer", "act1", "--k", "4", "--units", "5", "--random", "3", "--stat-random", "60", "--seed", "3"]


def test_cli_units_json_holds_the_measured_values(cli, tiny_ckpt, tiny_mnist, tmp_path):
    out = tmp_path / "run"
    args = ["units", "--model", tiny_ckpt, *UNITS_ARGS, "--data", tiny_mnist, "--device", "cpu", "--out", out]
    rc, stdout, _err = cli(*args, "--json")
    assert rc == 0
    doc = json.loads(stdout)
    full = json.loads((out / "units.json").read_text())
    assert doc == {k: v for k, v in full.items() if k != "all"}  # --json prints the run folder's summary
    assert (doc["layer"], doc["units_scored"], doc["random_scored"], doc["n_images"]) == ("act1", 12, 60, 100)
    assert doc["run"] == str(out) and doc["files"]["json"] == str(out / "units.json")
    # the top-k of every unit and random direction, against a plain argsort of φ computed here
    feats, labels = _act1(tiny_ckpt, tiny_mnist)
    assert [sorted(t) for t in full["all"]["units"]["top"]] == [sorted(np.argsort(-feats[:, u])[:4]) for u in range(12)]
    proj = feats @ random_directions(12, 60, seed=3).double().numpy().T
    assert [sorted(t) for t in full["all"]["random"]["top"]] == [sorted(np.argsort(-proj[:, j])[:4]) for j in range(60)]
    # every score from the labels of those top-k, and the test statistics from scipy on those scores
    from scipy.stats import mannwhitneyu

    for kind in ("units", "random"):
        part = full["all"][kind]
        assert part["purity"] == pytest.approx([_purity(labels[t]) for t in part["top"]])
        assert not any(part["degenerate"])
    u_pur, r_pur = np.array(full["all"]["units"]["purity"]), np.array(full["all"]["random"]["purity"])
    purity = doc["comparisons"]["purity"]
    assert purity["units_mean"] == pytest.approx(u_pur.mean()) and purity["random_mean"] == pytest.approx(r_pur.mean())
    assert purity["p_value"] == pytest.approx(mannwhitneyu(u_pur, r_pur).pvalue)
    assert purity["cliffs_delta"] == pytest.approx(cliffs_delta(u_pur, r_pur))
    assert doc["verdict"].startswith(verdict_sentence("act1", compare_scores(u_pur, r_pur, n_boot=10), 4)[:40])
    shown = doc["shown"]["units"]
    assert len(shown) == 5 and len(doc["shown"]["random"]) == 3
    for row in shown:
        assert row["top"] == full["all"]["units"]["top"][row["id"]]
        assert row["top_values"] == pytest.approx(feats[row["top"], row["id"]], abs=1e-6)
    # figures: one 56-pixel row per shown direction (scale 2), k tiles wide
    for name, rows in (("units_top", 5), ("random_top", 3)):
        with Image.open(out / f"{name}.png") as im:
            assert im.width > 4 * 56 and im.height > rows * 56
    run = read_run_record(out)
    assert run["status"] == "done" and run["kind"] == "units"
    assert UnitsRequest.from_json(run["request"]) == UnitsRequest(
        model=str(tiny_ckpt),
        layer="act1",
        k=4,
        show_units=5,
        show_random=3,
        n_random=60,
        seed=3,
        data_dir=str(tiny_mnist),
    )
    rc, _text, err = cli(*args)  # a second run into the same --out is refused without --overwrite
    assert rc == 2 and "--overwrite" in err
    assert UnitsRequest.from_json(read_run_record(out)["request"]).k == 4  # the refused run left the folder alone
    rc, text, _err = cli(*args, "--overwrite")  # replaces it; activations from the cache
    assert rc == 0
    assert "verdict: At layer act1" in text and f"{purity['units_mean']:.3f}" in text
    again = json.loads((out / "units.json").read_text())
    assert again["activations_cached"] and again["comparisons"] == full["comparisons"]
    assert again["all"] == full["all"]


def test_cli_layers_json(cli, tiny_ckpt):
    rc, stdout, _err = cli("layers", "--model", tiny_ckpt, "--json")
    assert rc == 0
    doc = json.loads(stdout)
    assert [(r["name"], r["shape"], r["size"]) for r in doc["layers"]] == [
        ("flatten", [784], 784),
        ("fc1", [12], 12),
        ("act1", [12], 12),
        ("fc2", [8], 8),
        ("act2", [8], 8),
        ("fc3", [10], 10),
    ]
    assert doc == run_layers(LayersRequest(model=str(tiny_ckpt)), RunContext(device="cpu")).to_json()


def test_cli_units_bottom_k_and_other_layer_space(cli, tiny_ckpt, tiny_mnist, tmp_path):
    out = tmp_path / "run"
    args = ["units", "--model", tiny_ckpt, "--layer", "act2", "--space", "fc1", "--k", "3", "--data", tiny_mnist]
    rc, stdout, _err = cli(*args, "--bottom", "--units", "2", "--random", "2", "--out", out, "--json")
    assert rc == 0
    doc = json.loads(stdout)
    assert doc["coherence_space"] == "fc1" and doc["random_scored"] == 1000
    model = load_checkpoint(tiny_ckpt).model
    data = load_split("test", tiny_mnist)
    with torch.no_grad():
        fc1 = model.fc1(data.images.flatten(1))
        act2 = model.act2(model.fc2(model.act1(fc1))).double().numpy()
    for row in doc["shown"]["units"]:
        assert sorted(row["bottom"]) == sorted(np.argsort(act2[:, row["id"]])[:3])
        assert max(row["bottom_values"]) <= min(row["top_values"])
        assert row["cosine"] == pytest.approx(mean_pairwise_cosine(fc1, np.array([row["top"]]))[0], abs=1e-5)
    assert (out / "units_bottom.png").is_file() and (out / "random_bottom.png").is_file()
    rc, _stdout, _err = cli(*args, "--out", out, "--json", "--overwrite")  # without --bottom: no stale bottom figures
    assert rc == 0
    assert not (out / "units_bottom.png").exists() and not (out / "random_bottom.png").exists()


def test_units_request_validates_and_round_trips():
    request = UnitsRequest(model="m", layer="fc1", n=50, k=3, n_random=10, pool="max", bottom=True, data_dir="d")
    assert UnitsRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    for bad, words in (
        ({"k": 0}, "--k must be at least 1"),
        ({"show_units": -1}, "cannot be negative"),
        ({"n_random": 1}, "--stat-random must be at least 2"),
        ({"max_units": 1}, "--max-units"),
        ({"pool": "sum"}, "unknown --pool"),
        ({"split": "val"}, "unknown --split"),
        ({"n": 0}, "at least 1"),
        ({"space": "fc1"}, "layer under study"),
    ):
        with pytest.raises(InputError, match=words):
            UnitsRequest(model="m", layer="fc1", **bad)
    with pytest.raises(InputError, match="damaged"):
        UnitsRequest.from_json({"layer": "fc1"})


def test_run_units_names_its_folder_emits_events_and_honours_n(tiny_ckpt, tiny_mnist, tmp_path):
    events: list[Step] = []
    ctx = RunContext(device="cpu", runs_root=tmp_path / "runs", on_event=events.append)
    request = UnitsRequest(model=str(tiny_ckpt), layer="act1", n=40, k=4, n_random=300, data_dir=str(tiny_mnist))
    result = run_units(request, ctx)
    folder = Path(result.run)
    assert folder.parent == tmp_path / "runs" and re.fullmatch(r"units-tiny-\d{8}-\d{6}", folder.name)
    assert result.comparison.n_images == 40 and list(result.source_indices) == list(range(40))
    assert read_run_record(folder)["request"] == request.to_json()
    assert json.loads((folder / "units.json").read_text()) == json.loads(json.dumps(result.to_json(full=True)))
    acts = [(e.done, e.total) for e in events if e.task == "activations act1"]
    dirs = [(e.done, e.total, e.message) for e in events if e.task == "directions act1"]
    assert acts[-1] == (40, 40)
    assert dirs == [(12, 312, "units"), (12 + 256, 312, "random directions"), (312, 312, "random directions")]


def test_run_units_cancels_in_the_activation_and_scoring_loops(tiny_ckpt, tiny_mnist, tmp_path, isolated_cache):
    request = UnitsRequest(model=str(tiny_ckpt), layer="act1", k=4, n_random=600, data_dir=str(tiny_mnist))
    out = tmp_path / "cancelled"
    with pytest.raises(Cancelled):  # before the first batch of images
        run_units(request, RunContext(device="cpu", out=out, cancelled=lambda: True))
    assert not out.exists() and not list(isolated_cache.rglob("*.safetensors"))
    seen: list[Step] = []

    def after_first_block() -> bool:
        return any(e.task.startswith("directions") for e in seen)

    with pytest.raises(Cancelled):
        run_units(request, RunContext(device="cpu", out=out, on_event=seen.append, cancelled=after_first_block))
    scored = [e.done for e in seen if e.task.startswith("directions")]
    assert scored == [12]  # stopped after the units block, before any of the three random blocks
    assert not out.exists()  # nothing was produced: the folder is gone, the same --out is free
    assert len(list(isolated_cache.rglob("*.safetensors"))) == 1  # the finished activations are kept


def test_unwritable_cache_does_not_stop_units(cli, tiny_ckpt, tiny_mnist, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("BLINDSPOT_CACHE", str(blocker / "cache"))
    out = tmp_path / "run"
    rc, stdout, err = cli("units", "--model", tiny_ckpt, *UNITS_ARGS, "--data", tiny_mnist, "--out", out, "--json")
    assert rc == 0
    assert json.loads(stdout)["activations_cached"] is False and (out / "units.json").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "engines.core.cache"]
    assert warnings == [
        f"warning: cache folder {blocker / 'cache'} cannot be written (Not a directory); "
        "running without a cache (set BLINDSPOT_CACHE to fix)"
    ]


def test_units_errors_name_the_flag_on_the_command_line_and_the_label_in_the_workbench(
    cli, tiny_ckpt, tiny_mnist, tmp_path
):
    """What the Gallery can meet reads in its words (`worded("label")`); the command line keeps its flags."""
    for bad, flagged, labelled in (
        ({"pool": "sum"}, "unknown --pool 'sum'", "unknown reduce 'sum'"),
        ({"layer": ""}, "say which layer: --layer NAME (see `blindspot layers --model ID`)", "pick one of"),
        ({"space": "fc1"}, "--space 'fc1' is the layer under study", "space 'fc1' is the layer under study"),
    ):
        with pytest.raises(InputError) as caught:
            UnitsRequest(model="m", **{"layer": "fc1", **bad})
        assert str(caught.value).startswith(flagged)
        assert labelled in caught.value.worded("label") and "--" not in caught.value.worded("label")
    request = UnitsRequest(model=str(tiny_ckpt), layer="act1", n=5, k=6, data_dir=str(tiny_mnist))
    with pytest.raises(InputError) as caught:
        run_units(request, RunContext(device="cpu", runs_root=tmp_path / "runs"))
    assert caught.value.worded("label").startswith("top-k must be between 1 and the 5 images of")
    args = ("units", "--model", str(tiny_ckpt), "--layer", "act1", "--n", "5", "--k", "6", "--data", str(tiny_mnist))
    rc, _, err = cli(*args, "--out", tmp_path / "u", "--device", "cpu")
    assert rc == 2 and " ".join(err.split()).startswith("error: --k must be between 1 and the 5 images of"), err
