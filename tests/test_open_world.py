"""Every command on the user's own model and images: a tiny CNN trained on generated shapes, torchvision names,
CIFAR binaries and labels.csv folders, through the CLI, and every bad input as one line with exit 2."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engines.core.errors import InputError
from engines.core.models import ModelRef, load_model
from engines.core.sources import DataRef, open_data
from tests.shapes import make_labels_csv_folder, make_shapes_folder, write_cifar_binary

CLASSES = 4
NET = textwrap.dedent(
    """
    from torch import nn

    def shapes_cnn(num_classes=4, width=8):
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, num_classes),
        )

    def wide_cnn(num_classes=4):
        return shapes_cnn(num_classes, width=12)
    """
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A shapes folder, the user's package with two CNN factories, and trained weights for both."""
    root = tmp_path_factory.mktemp("world")
    data = make_shapes_folder(root / "shapes", classes=CLASSES, per_class=24, size=32, seed=0)
    pkg = root / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NET)
    sys.path.insert(0, str(root))
    images = open_data(DataRef(str(data)), "test").take()
    weights = {}
    for name in ("shapes_cnn", "wide_cnn"):
        lm = load_model(ModelRef(factory=f"userpkg.nets:{name}"))
        weights[name] = _train(lm.model, images.images, images.labels, root / f"{name}.safetensors")
    yield {"root": root, "data": data, "weights": weights}
    sys.path.remove(str(root))
    for mod in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[mod]


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, path: Path) -> Path:
    """A few seconds of Adam: enough for the shapes to be told apart."""
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _factory_args(world: dict, name: str = "shapes_cnn") -> list[str]:
    return ["--model-factory", f"userpkg.nets:{name}", "--weights", str(world["weights"][name])]


def test_attack_on_the_users_model_and_folder(world: dict, cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc, stdout, err = cli(
        "attack", *_factory_args(world), "--data", world["data"], "--n", "8", "--target", "random",
        "--c-steps", "5", "--max-iter", "40", "--device", "cpu", "--out", out, "--json",
    )  # fmt: skip
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["success_rate"] >= 0.9 and result["image_shape"] == [3, 32, 32] and not result["random_init"]
    samples = load_file(str(out / "samples.safetensors"))
    assert float(samples["x_adv"].min()) >= 0 and float(samples["x_adv"].max()) <= 1
    files = json.loads((out / "images.json").read_text())["files"]
    assert len(files) == 8 and len({f.split("/")[0] for f in files}) == CLASSES  # the seeded order spans classes
    assert all((Path(world["data"]) / f).is_file() for f in files)
    record = json.loads((out / "run.json").read_text())
    assert record["data"]["kind"] == "imagefolder" and record["model"]["kind"] == "factory"
    assert Image.open(out / "figure.png").mode == "RGB"
    d = samples["x_adv"] - samples["x"]
    ok = samples["success"].bool()
    assert torch.allclose(samples["distortion"][ok], d[ok].flatten(1).pow(2).mean(1).sqrt(), atol=1e-6)


def test_units_on_a_conv_layer_are_channels(world: dict, cli, tmp_path: Path) -> None:
    rc, stdout, err = cli(
        "units", *_factory_args(world), "--layer", "3", "--data", world["data"], "--k", "4", "--random", "4",
        "--units", "4", "--stat-random", "50", "--device", "cpu", "--out", tmp_path / "u", "--json", "--no-cache",
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(stdout)
    assert doc["pool"] == "max" and doc["dim"] == 16  # 16 channels, each its spatial max
    assert Image.open(tmp_path / "u" / "units_top.png").mode == "RGB"
    rc, stdout, err = cli("layers", *_factory_args(world), "--image-size", "32", "--json")
    assert rc == 0, err
    assert [layer["shape"] for layer in json.loads(stdout)["layers"]][0] == [8, 32, 32]


def test_transfer_between_the_users_models_and_a_torchvision_model_at_another_size(
    world: dict, cli, tmp_path: Path
) -> None:
    rc, stdout, err = cli(
        "transfer", "--sources", "userpkg.nets:shapes_cnn,userpkg.nets:wide_cnn",
        "--targets", "userpkg.nets:shapes_cnn,userpkg.nets:wide_cnn,resnet18",
        "--weights", f"userpkg.nets:shapes_cnn={world['weights']['shapes_cnn']}",
        "--weights", f"userpkg.nets:wide_cnn={world['weights']['wide_cnn']}",
        "--num-classes", f"resnet18={CLASSES}", "--data", world["data"], "--split", "test", "--n", "8",
        "--c-steps", "3", "--max-iter", "30", "--device", "cpu", "--out", tmp_path / "t", "--json",
    )  # fmt: skip
    assert rc == 0, err
    m = json.loads(stdout)
    assert m["columns"] == ["shapes_cnn", "wide_cnn", "resnet18-random"]
    values = m["values"]
    assert values[0][0] >= 80 and values[1][1] >= 80  # each set fools its own source
    assert "resnet18-random" in m["settings"]["resized"] and "224" in m["settings"]["resized"]["resnet18-random"]
    assert m["settings"]["models"]["resnet18-random"]["random_init"] is True


def test_random_resnet18_at_64_px_through_attack_units_and_bounds(world: dict, cli, tmp_path: Path) -> None:
    common = ["--model", "resnet18", "--num-classes", str(CLASSES), "--device", "cpu"]
    rc, stdout, err = cli(
        "attack", *common, "--data", world["data"], "--image-size", "64", "--n", "2", "--c-steps", "2",
        "--max-iter", "10", "--out", tmp_path / "a", "--json",
    )  # fmt: skip
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["random_init"] and result["model"] == "resnet18-random" and result["image_shape"] == [3, 64, 64]
    assert "random weights" in err
    rc, stdout, err = cli(
        "units", *common, "--layer", "layer4", "--data", world["data"], "--image-size", "64", "--n", "24",
        "--k", "3", "--units", "2", "--random", "2", "--stat-random", "20", "--max-units", "20", "--out", tmp_path / "u", "--json",
        "--no-cache",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(stdout)["dim"] == 512
    rc, stdout, err = cli(
        "bounds", *common, "--input", "3x64x64", "--precision", "float32", "--power-iters", "2", "--json",
        "--out", tmp_path / "b",
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(stdout)
    assert "random init" in json.dumps(doc) and doc["layers"][-1]["size"] == f"512×{CLASSES}"
    assert "max 1/std" in json.dumps(doc)  # the ImageNet normalization in front of the network is reported


def test_cifar_binary_and_labels_csv_through_the_attack(world: dict, cli, tmp_path: Path) -> None:
    cifar = write_cifar_binary(tmp_path / "cifar", n_train=10, n_test=10)
    flat = make_labels_csv_folder(tmp_path / "flat", n=6, classes=3)
    for data in (cifar, flat):
        rc, stdout, err = cli(
            "attack", *_factory_args(world), "--num-classes", "4", "--data", data, "--n", "3", "--c-steps", "1",
            "--max-iter", "5", "--device", "cpu", "--out", tmp_path / f"run-{data.name}", "--json",
        )  # fmt: skip
        if data == cifar:  # CIFAR-10 has labels up to 9: a 4-class model cannot be attacked on it
            assert rc == 2 and "has only 4 classes" in err and len(err.strip().splitlines()) == 1
        else:
            assert rc == 0, err
            assert json.loads(stdout)["image_shape"] == [3, 32, 32]


def _one_line(rc: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_models_and_data_are_one_line_exit_2(world: dict, cli, tmp_path: Path) -> None:
    base = ["--n", "2", "--c-steps", "1", "--max-iter", "2", "--device", "cpu"]
    broken = make_shapes_folder(tmp_path / "broken", classes=2, per_class=2, size=16)
    victim = sorted((broken / sorted(p.name for p in broken.iterdir())[0]).iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    line = _one_line(*cli("attack", *_factory_args(world), "--data", broken, *base, "--n", "4")[:3:2])
    assert victim.name in line
    empty = make_shapes_folder(tmp_path / "empty", classes=2, per_class=2, size=16)
    (empty / "zzz").mkdir()
    assert "zzz" in _one_line(*cli("attack", *_factory_args(world), "--data", empty, *base)[:3:2])
    assert "resnet-18" in _one_line(*cli("attack", "--model", "resnet-18", "--data", world["data"], *base)[:3:2])
    pickled = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    line = _one_line(*cli("attack", "--model", "resnet18", "--weights", pickled, "--data", world["data"], *base)[:3:2])
    assert "state_dict" in line
    line = _one_line(
        *cli(
            "attack", "--model", "resnet18", "--weights", world["weights"]["shapes_cnn"], "--data", world["data"], *base
        )[:3:2]
    )
    assert "do not fit resnet18" in line and "missing" in line
    line = _one_line(*cli("attack", "--model-factory", "userpkg.nets:nope", "--data", world["data"], *base)[:3:2])
    assert "nope" in line
    line = _one_line(
        *cli("attack", "--model", "resnet18", "--normalize", "1,2:3", "--data", world["data"], *base)[:3:2]
    )
    assert "--normalize" in line


def test_reproduce_adds_figure5_on_a_trained_alexnet_and_the_users_images(world: dict, tmp_path: Path) -> None:
    from engines.attack.search import AttackConfig
    from engines.core.context import RunContext
    from engines.reproduce.operation import ReproduceRequest, figure5

    with pytest.raises(InputError, match="needs --weights"):
        ReproduceRequest(imagenet_dir=str(world["data"]))
    net = load_model(ModelRef("alexnet", normalize="none")).model  # stands in for the user's trained AlexNet:
    with torch.no_grad():  # random AlexNet logits barely depend on the image (sd 0.01); a trained net's do
        net.classifier[6].weight.mul_(1000)
    weights = tmp_path / "alexnet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    request = ReproduceRequest(
        imagenet_dir=str(world["data"]),
        alexnet_weights=str(weights),
        figure5_n=1,
        config=AttackConfig(c_steps=3, max_iter=5),
    )
    assert request.alexnet() == ModelRef("alexnet", weights=str(weights))
    path = figure5(request, RunContext(device="cpu"), tmp_path / "report")
    assert path is not None
    figure = Image.open(tmp_path / "report" / path)
    assert figure.mode == "RGB" and figure.height > 4 * 224  # four rows of colour images at AlexNet's 224 px
    summary = json.loads((tmp_path / "report" / "figure5" / "summary.json").read_text())
    assert summary["model"] == "alexnet" and summary["image_shape"] == [3, 224, 224] and not summary["random_init"]
