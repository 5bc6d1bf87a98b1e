"""Any classifier behind one loader: torchvision names, the user's factory, weights files, normalization."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from engines.attack.search import AttackConfig, attack_problems, paper_distortion
from engines.core.checkpoint import check_classifier
from engines.core.errors import CheckpointError, InputError, ModelError
from engines.core.models import ModelRef, load_model, parse_normalization


def _resnet(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's package with a small CNN factory, importable from the working folder."""
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def small_cnn(num_classes=3):
                return nn.Sequential(
                    nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                    nn.Linear(16, num_classes),
                )

            def not_a_model():
                return 42

            def no_logits():
                return nn.Conv2d(3, 2, 3)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    yield "userpkg.nets"
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def test_model_ref_json_round_trip_keeps_plain_names_plain() -> None:
    assert ModelRef("n100-100-10").to_json() == "n100-100-10"
    ref = ModelRef("resnet18", weights="w.pth", num_classes=5, normalize="none")
    assert ref.to_json() == {"name": "resnet18", "weights": "w.pth", "num_classes": 5, "normalize": "none"}
    assert ModelRef.from_json(ref.to_json()) == ref
    with pytest.raises(InputError, match="two models"):
        ModelRef("resnet18", factory="a.b:c")
    with pytest.raises(InputError, match="package.module:function"):
        ModelRef(factory="nocolon")


def test_torchvision_name_without_weights_is_random_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        lm = load_model(ModelRef("resnet18", num_classes=5))
    assert lm.id == "resnet18-random" and lm.random_init
    assert "random weights" in caplog.text
    assert lm.input_shape == (3, 224, 224)
    assert lm.normalization is not None and lm.normalization["name"] == "imagenet"
    assert check_classifier(lm.model, (3, 64, 64)) == 5


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_and_normalization_maps_pixels_to_the_networks_input(tmp_path: Path, suffix: str) -> None:
    net = _resnet()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    lm = load_model(ModelRef("resnet18", weights=str(path), num_classes=5))
    assert lm.id == "resnet18" and not lm.random_init and lm.path == path
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), net((x - mean) / std), atol=1e-5)
    plain = load_model(ModelRef("resnet18", weights=str(path), num_classes=5, normalize="none"))
    with torch.no_grad():
        assert torch.allclose(plain.model(x), net(x), atol=1e-5)
    assert plain.sha256 != lm.sha256  # normalization is part of the model's identity (caches, --resume)


def test_weights_that_do_not_fit_name_the_keys_and_suggest_num_classes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _resnet(5).state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"fc\.weight.*--num-classes"):
        load_model(ModelRef("resnet18", weights=str(path)))
    save_file({"conv.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="missing conv1.weight"):
        load_model(ModelRef("resnet18", weights=str(tmp_path / "other.safetensors")))


def test_a_pickled_whole_module_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(nn.Linear(3, 2), path)
    with pytest.raises(CheckpointError, match=r"state_dict.*--model-factory"):
        load_model(ModelRef("resnet18", weights=str(path)))


def test_unknown_name_is_one_clear_error() -> None:
    with pytest.raises(CheckpointError, match="unknown model 'resnet-18'"):
        load_model(ModelRef("resnet-18"))


def test_factory_builds_the_users_model_with_weights(factory_module: str, tmp_path: Path) -> None:
    random = load_model(ModelRef(factory=f"{factory_module}:small_cnn", num_classes=4))
    assert random.id == "small_cnn-random" and random.input_shape is None and random.normalization is None
    torch.manual_seed(3)
    trained = random.model.state_dict()
    trained = {k: torch.randn_like(v) for k, v in trained.items()}
    save_file(trained, str(tmp_path / "cnn.safetensors"))
    lm = load_model(
        ModelRef(factory=f"{factory_module}:small_cnn", num_classes=4, weights=str(tmp_path / "cnn.safetensors"))
    )
    assert lm.id == "small_cnn" and torch.equal(lm.model.state_dict()["4.weight"], trained["4.weight"])
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        load_model(ModelRef(factory=f"{factory_module}:not_a_model"))
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        load_model(ModelRef(factory=f"{factory_module}:nope"))
    with pytest.raises(ModelError, match="cannot import 'no_such_pkg.mod'"):
        load_model(ModelRef(factory="no_such_pkg.mod:f"))
    odd = load_model(ModelRef(factory=f"{factory_module}:no_logits"))
    with pytest.raises(ModelError, match="not a classifier"):
        check_classifier(odd.model, (3, 8, 8))


def test_normalization_values_are_checked() -> None:
    one = parse_normalization("0.5:0.25")
    assert one is not None and one.mean == (0.5,) and one.lipschitz == 4.0
    for bad in ("0.5,0.5:0.1", "a:b", "0.5:0", "0.5"):
        with pytest.raises(InputError):
            parse_normalization(bad)


def test_the_attack_box_and_distances_stay_in_pixel_space_for_a_normalized_model(
    factory_module: str,
) -> None:
    """With std 0.1 the network's input spans [-5, 5]: a box applied there would leave [0, 1] in pixels."""
    lm = load_model(ModelRef(factory=f"{factory_module}:small_cnn", num_classes=3, normalize="0.5,0.5,0.5:0.1,0.1,0.1"))
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        pred = lm.model(x).argmax(1)
    target = (pred + 1) % 3
    res = attack_problems(lm.model, x, target, AttackConfig(c_steps=4, max_iter=30))
    assert res.success.any()
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    ok = res.success
    with torch.no_grad():
        assert torch.equal(lm.model(res.x_adv[ok]).argmax(1), target[ok])
    expected = ((res.x_adv - x) ** 2).flatten(1).mean(1).sqrt()
    assert torch.allclose(paper_distortion(x, res.x_adv), expected)
