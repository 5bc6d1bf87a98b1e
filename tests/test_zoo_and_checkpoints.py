import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from engines.core.checkpoint import load_checkpoint, models_dir, save_checkpoint
from engines.core.data import load_split
from engines.core.errors import CheckpointError, ModelError
from engines.core.evaluate import error_rate
from engines.core.zoo import ZOO, build_model, decay_loss, mlp_spec
from engines.train.fit import train_zoo_model
from tests.conftest import PAPER_IDS

SHIPPED = sorted(p.stem for p in models_dir().glob("*.safetensors"))


def test_decay_term_matches_the_formula_by_hand():
    model = build_model(mlp_spec([3]))
    with torch.no_grad():
        model.fc1.weight.fill_(2.0)  # 3 x 784, k = 3 units
        model.fc2.weight.fill_(-1.0)  # 10 x 3, k = 10 units
        model.fc1.bias.fill_(100.0)  # biases are not decayed
    lam1, lam2 = 1e-3, 0.5
    expected = lam1 * (4.0 * 3 * 784) / 3 + lam2 * (1.0 * 10 * 3) / 10
    assert float(decay_loss(model, [lam1, lam2]).detach()) == pytest.approx(expected, rel=1e-6)


def test_decay_needs_one_lambda_per_layer():
    with pytest.raises(ModelError):
        decay_loss(build_model(mlp_spec([3])), [1e-3])


def test_the_zoo_has_the_papers_ids_and_architectures():
    assert [k for k, e in ZOO.items() if e.group == "paper"] == PAPER_IDS
    section42 = {k: e for k, e in ZOO.items() if e.group == "adversarial"}
    assert all(e.spec["hidden"] == [100, 100] and e.decay == ZOO["n100-100-10"].decay for e in section42.values())
    assert ZOO["m1-prime"].spec["hidden"] == [123, 456]
    assert ZOO["m2"].train_split == "p2" and ZOO["m1"].train_split == "p1"
    assert [ZOO[f"softmax{i}"].decay[0] for i in (1, 2, 3)] == [1e-4, 1e-2, 1.0]


def test_ten_shipped_models():
    assert sorted(ZOO) == SHIPPED


@pytest.mark.parametrize("model_id", SHIPPED)
def test_shipped_checkpoint_reloads_bit_identically_and_reproduces_its_test_error(model_id, tmp_path):
    lm = load_checkpoint(model_id)
    stored = load_file(str(lm.path))
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(tensor, stored[name]), name
    again = save_checkpoint(lm.model, lm.meta, tmp_path / f"{model_id}.safetensors")
    assert load_file(str(again)).keys() == stored.keys()
    assert all(torch.equal(load_file(str(again))[k], stored[k]) for k in stored)
    recorded = lm.meta["metrics"]["test_error"]
    test = load_split("test")
    assert error_rate(lm.model, test.images, test.labels) == pytest.approx(recorded, abs=1e-6)


def test_training_is_deterministic_for_a_seed_on_cpu(tiny_mnist, tmp_path):
    a = train_zoo_model(
        "n100-100-10", tmp_path / "a", seed=3, optimizer="adam", epochs=1, max_iter=3, data_dir=tiny_mnist
    )
    b = train_zoo_model(
        "n100-100-10", tmp_path / "b", seed=3, optimizer="adam", epochs=1, max_iter=3, data_dir=tiny_mnist
    )
    c = train_zoo_model(
        "n100-100-10", tmp_path / "c", seed=4, optimizer="adam", epochs=1, max_iter=3, data_dir=tiny_mnist
    )
    sa, sb, sc = (load_file(str(r.path)) for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    meta = json.loads(a.path.with_suffix(".json").read_text())
    assert meta["seed"] == 3 and meta["training"]["optimizer"].startswith("adam")
    assert set(meta["data_md5"]) == {"train-images", "train-labels", "test-images", "test-labels"}


def test_lbfgs_training_lowers_the_error(tiny_mnist, tmp_path):
    res = train_zoo_model("softmax1", tmp_path, optimizer="lbfgs", max_iter=30, data_dir=tiny_mnist)
    assert res.meta["training"]["optimizer"] == "lbfgs"
    assert res.meta["metrics"]["test_error"] < 20.0


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_executes_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"fc1.weight": evil}, fh)
    with pytest.raises(CheckpointError, match="execute code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_state_dict_loads_with_weights_only(tmp_path):
    model = build_model(mlp_spec([7]))
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    lm = load_checkpoint(tmp_path / "mine.pt")
    assert lm.meta["spec"]["hidden"] == [7]
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(lm.model(x), model.eval()(x))


def _saved(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(mlp_spec([5]))
    return save_checkpoint(model, {"id": "tiny", "spec": mlp_spec([5])}, tmp_path / "tiny.safetensors")


def test_truncated_safetensors_is_refused(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(path)


def test_missing_sidecar_is_refused(tmp_path):
    path = _saved(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_checkpoint(path)


def test_shapes_that_do_not_fit_the_architecture_are_refused(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["spec"]["hidden"] = [6]
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


@pytest.mark.parametrize("hidden", [[-5], [10**7, 100]], ids=["negative", "huge"])
def test_an_absurd_spec_is_refused_before_anything_is_allocated(tmp_path, hidden):
    path = _saved(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["spec"]["hidden"] = hidden
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="malformed architecture|do not fit"):
        load_checkpoint(path)


def test_weights_swapped_under_a_sidecar_are_refused(tmp_path):
    path = _saved(tmp_path)
    other = _saved(tmp_path / "other", seed=1)
    path.write_bytes(other.read_bytes())  # same shapes, other numbers
    with pytest.raises(CheckpointError, match="not the ones its sidecar describes"):
        load_checkpoint(path)


def test_bad_checkpoint_on_the_cli_is_one_line_and_exit_2(tmp_path, cli):
    path = _saved(tmp_path)
    path.write_bytes(b"garbage")
    rc, out, err = cli("attack", "--model", str(path), "--n", "1", "--device", "cpu", "--out", str(tmp_path / "r"))
    assert rc == 2
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "error:" in err
