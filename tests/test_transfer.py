"""Transfer tables: cache, diagonal, noise and amplified rms, matrix round trip, CLI."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engines.attack.adversarial_sets import adversarial_set
from engines.attack.problems import AttackConfig, paper_distortion
from engines.attack.perturb import amplify, gaussian_noise, unclipped_noise
from engines.attack.transfer import cell_examples, compute_transfer, load_matrix, wilson_interval

QUICK = AttackConfig(c_steps=3, max_iter=30)


def test_adversarial_sets_are_cached_and_invalidated_by_any_setting(isolated_cache):
    a = adversarial_set("softmax1", "test", 3, config=QUICK)
    assert not a.cached
    b = adversarial_set("softmax1", "test", 3, config=QUICK)
    assert b.cached and b.folder == a.folder
    assert torch.equal(a.samples["x_adv"], b.samples["x_adv"])
    for changed in (
        dict(config=AttackConfig(c_steps=3, max_iter=31)),
        dict(config=QUICK, seed=1),
        dict(config=QUICK, offset=1),
    ):
        c = adversarial_set("softmax1", "test", 3, **changed)
        assert not c.cached and c.folder != a.folder, changed
    d = adversarial_set("softmax2", "test", 3, config=QUICK)
    assert not d.cached and d.folder != a.folder


def test_an_interrupted_set_resumes_from_its_chunks(isolated_cache):
    from engines.core.errors import Cancelled

    calls = {"n": 0}

    def cancel_soon() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        adversarial_set("softmax1", "test", 2, config=QUICK, cancel=cancel_soon)
    s = adversarial_set("softmax1", "test", 2, config=QUICK)
    assert not s.cached and s.samples["x_adv"].shape == (2, 1, 28, 28)


def test_matrix_diagonal_noise_amplified_and_round_trip(tmp_path):
    m = compute_transfer(
        ["softmax1", "n100-100-10"],
        ["softmax1", "n100-100-10", "softmax2"],
        "test",
        6,
        tmp_path / "t",
        noise=[0.1, 0.3],
        unclipped=[0.3],
        amplify_rms=0.1,
        config=QUICK,
    )
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
    back = load_matrix(tmp_path / "t" / "matrix.json")
    assert back.columns == m.columns and [r.name for r in back.rows] == names
    assert [r.clipped for r in back.rows] == [r.clipped for r in m.rows]
    assert np.array_equal(back.errors, m.errors) and np.allclose(back.values, m.values)
    data = json.loads((tmp_path / "t" / "matrix.json").read_text())
    assert data["values"] == np.round(m.values, 4).tolist() and "distortions" in data
    assert (tmp_path / "t" / "matrix.csv").read_text().splitlines()[0].startswith("row,kind,softmax1")
    ex = cell_examples(back, 0, 0, k=3)
    assert 1 <= len(ex) <= 3 and all(e["pred"] != e["label"] for e in ex)


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


def test_wilson_interval():
    lo, hi = wilson_interval(0, 50)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.05 < hi < 0.08
    lo, hi = wilson_interval(25, 50)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.27, abs=0.01)


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
    assert data["columns"] == ["softmax1", "softmax2"] and len(data["rows"]) == 2
    rc, _, err = cli("transfer", "--sources", "softmax1", "--noise", "abc", "--out", tmp_path / "x")
    assert rc == 2 and "comma-separated numbers" in err
