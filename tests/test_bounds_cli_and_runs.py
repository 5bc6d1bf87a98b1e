"""Frame bounds: the `blindspot bounds` command and the bounds operation (run folders, events, cancel)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from blindspot.cli import main
from engines.bounds.operation import BoundsRequest, run_bounds
from engines.bounds.results import PAPER_TABLE5, LayerBound
from engines.core.checkpoint import save_checkpoint
from engines.core.context import RunContext
from engines.core.errors import Cancelled, InputError
from engines.core.events import Event, LayerBounded, Step
from engines.core.runs import read_run_record
from engines.core.zoo import ZOO, build_model

# --- CLI -----------------------------------------------------------------------------------------------------


def _zoo_checkpoint(tmp_path, model_id: str):
    torch.manual_seed(0)
    spec = ZOO[model_id].spec
    return save_checkpoint(build_model(spec), {"id": model_id, "spec": spec}, tmp_path / f"{model_id}.safetensors")


def test_cli_alexnet_json_at_224(capsys):
    rc = main(
        ["bounds", "--model", "alexnet", "--json", "--device", "cpu", "--precision", "float32", "--power-iters", "3"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)
    layers = data["layers"]
    assert [x["label"] for x in layers] == [row["layer"] for row in PAPER_TABLE5]
    assert [x["size"] for x in layers] == [
        "3×11×11×64",
        "64×5×5×192",
        "192×3×3×384",
        "384×3×3×256",
        "256×3×3×256",
        "9216×4096",
        "4096×4096",
        "4096×1000",
    ]
    assert layers[0]["input_shape"] == [3, 224, 224] and layers[0]["conv"]["grid"] == [56, 56]
    assert all(0 < x["lower"] <= x["upper"] for x in layers)
    assert data["paper_table5"] == PAPER_TABLE5 and data["chain"]
    assert data["product_table"] == pytest.approx(math.prod(x["upper"] for x in layers), rel=1e-9)
    assert data["lipschitz_upper"] == pytest.approx(8 * math.prod(x["upper_real"] for x in layers), rel=1e-9)
    assert any("not the network of the paper" in n for n in data["notes"])


def test_cli_zoo_checkpoint_table_and_out(tmp_path, capsys):
    path = _zoo_checkpoint(tmp_path, "conv")
    rc = main(["bounds", "--model", str(path), "--out", str(tmp_path / "run"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Conv. 1" in captured.out and "1×5×5×32" in captured.out and "Product of upper bounds" in captured.out
    saved = json.loads((tmp_path / "run" / "bounds.json").read_text())
    assert [x["name"] for x in saved["layers"]] == ["conv1", "fc1", "fc2"]
    spectra = load_file(str(tmp_path / "run" / "spectra.safetensors"))
    assert spectra["conv1"].numel() == saved["layers"][0]["histogram"]["count"] == 28 * 28 * 1
    assert float(spectra["fc1"][0]) == pytest.approx(saved["layers"][1]["upper"], rel=1e-6)
    record = read_run_record(tmp_path / "run")
    assert (record["kind"], record["status"], record["request"]["model"]) == ("bounds", "done", str(path))
    assert f"wrote {tmp_path / 'run' / 'bounds.json'} and {tmp_path / 'run' / 'spectra.safetensors'}" in captured.err
    assert saved["notes"][-1].startswith("model: checkpoint ")


def test_cli_torchvision_model_with_groups_and_branches(capsys):
    import torchvision

    rc = main(
        [
            "bounds",
            "--model",
            "mobilenet_v3_small",
            "--input",
            "3x32x32",
            "--json",
            "--power-iters",
            "2",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)
    model = torchvision.models.mobilenet_v3_small()
    assert len(data["layers"]) == sum(isinstance(m, nn.Linear | nn.Conv2d) for m in model.modules())
    assert any(x["conv"] and x["conv"]["groups"] > 1 for x in data["layers"])  # depthwise convolutions
    assert not data["chain"] and data["lipschitz_upper"] is None  # squeeze-excitation branches


def _bad(args, capsys) -> str:
    rc = main(["bounds", *args])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    assert "unknown model" in _bad(["--model", "nosuchnet"], capsys)
    assert "CxHxW" in _bad(["--model", "alexnet", "--input", "3x224"], capsys)
    mlp = _zoo_checkpoint(tmp_path, "n100-100-10")
    assert "rejects inputs" in _bad(["--model", str(mlp), "--input", "3x32x32"], capsys)
    assert "--weights" in _bad(["--model", str(mlp), "--weights", str(mlp)], capsys)
    small = tmp_path / "small.pt"
    torch.save(nn.Linear(3, 2).state_dict(), small)
    assert "do not fit" in _bad(["--model", "alexnet", "--weights", str(small)], capsys)
    pickled = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "obj": _Opaque()}, pickled)
    assert "refused" in _bad(["--model", "alexnet", "--weights", str(pickled)], capsys)
    assert "precision" in _bad(["--model", "alexnet", "--precision", "float16"], capsys)
    assert "--power-iters" in _bad(["--model", "alexnet", "--power-iters", "-1"], capsys)
    refused = tmp_path / "refused"
    assert "unknown model" in _bad(["--model", "nosuchnet", "--out", str(refused)], capsys)
    assert not refused.exists()  # a run refused before it produced anything leaves no folder behind


class _Opaque:
    """A class a weights_only load must refuse."""


def comparable(bounds_json: Any) -> Any:
    """A bounds.json without what differs between two runs of the same request: timings, device, run folder."""
    if isinstance(bounds_json, dict):
        return {k: comparable(v) for k, v in bounds_json.items() if k not in ("seconds", "device", "run")}
    if isinstance(bounds_json, list):
        return [comparable(v) for v in bounds_json]
    return bounds_json


# --- the operation -----------------------------------------------------------------------------------------


def test_request_validates_and_round_trips_through_json():
    request = BoundsRequest(model="conv", input_shape=(1, 28, 28), power_iters=3, precision="float32", seed=4)
    stored = json.loads(json.dumps(request.to_json()))
    assert BoundsRequest.from_json(stored) == request
    assert stored["input_shape"] == [1, 28, 28] and request.dtype == torch.float32
    assert BoundsRequest.from_json(BoundsRequest(model="alexnet").to_json()).input_shape is None
    for bad, says in (
        ({"precision": "float16"}, "precision"),
        ({"power_iters": -1}, "--power-iters"),
        ({"input_shape": (3, 224)}, "--input"),
        ({"input_shape": (0, 2, 2)}, "--input"),
        ({"model": "  "}, "--model"),
    ):
        with pytest.raises(InputError, match=says):
            BoundsRequest(**{"model": "alexnet", **bad})
    with pytest.raises(InputError, match="damaged"):
        BoundsRequest.from_json({"model": "alexnet"})


def test_run_bounds_writes_its_run_folder_and_announces_each_layer(tmp_path):
    path = _zoo_checkpoint(tmp_path, "conv")
    events: list[Event] = []
    ctx = RunContext(device="cpu", runs_root=tmp_path / "runs", on_event=events.append)
    request = BoundsRequest(model=str(path), power_iters=5)
    result = run_bounds(request, ctx)
    folder = Path(result.run)
    assert folder.parent == tmp_path / "runs" and folder.name.startswith("bounds-conv-")
    record = read_run_record(folder)
    assert (record["kind"], record["status"], record["request"]) == ("bounds", "done", request.to_json())
    assert record["model"] == {"name": "conv", "source": result.source} and str(path) in result.source
    saved = json.loads((folder / "bounds.json").read_text())
    assert saved.pop("spectra_file") == "spectra.safetensors"
    assert saved == json.loads(json.dumps(result.to_json()))
    assert saved["notes"][-1] == f"model: {result.source}"
    spectra = load_file(str(folder / "spectra.safetensors"))
    assert torch.equal(spectra["fc2"], result.layers[2].spectrum.float())
    # each finished layer is announced with its bound, in order, before the operation returns
    bounded = [e for e in events if isinstance(e, LayerBounded)]
    assert [e.bound for e in bounded] == result.layers and all(isinstance(e.bound, LayerBound) for e in bounded)
    assert [(e.done, e.total) for e in bounded] == [(1, 3), (2, 3), (3, 3)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Step", "LayerBounded"] * 3
    assert [e.message for e in events if isinstance(e, Step)] == ["conv1 Conv. 1", "fc1 FC. 1", "fc2 FC. 2"]


def test_run_bounds_without_save_writes_nothing(tmp_path):
    path = _zoo_checkpoint(tmp_path, "n100-100-10")
    ctx = RunContext(device="cpu", runs_root=tmp_path / "runs", out=tmp_path / "out")
    result = run_bounds(BoundsRequest(model=str(path)), ctx, save=False)
    assert result.run == "" and [x.name for x in result.layers] == ["fc1", "fc2", "fc3"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_a_run_cancelled_after_its_first_layer_leaves_no_folder(tmp_path):
    path = _zoo_checkpoint(tmp_path, "conv")
    seen: list[Event] = []
    ctx = RunContext(
        device="cpu",
        runs_root=tmp_path / "runs",
        on_event=seen.append,
        cancelled=lambda: any(isinstance(e, LayerBounded) for e in seen),
    )
    with pytest.raises(Cancelled):
        run_bounds(BoundsRequest(model=str(path), power_iters=5), ctx)
    assert sum(isinstance(e, LayerBounded) for e in seen) == 1  # stopped before the second layer
    assert not list((tmp_path / "runs").glob("bounds-*"))


def test_cli_out_refuses_a_folder_with_results_unless_overwrite(tmp_path, cli):
    path = _zoo_checkpoint(tmp_path, "n100-100-10")
    args = ("bounds", "--model", path, "--out", tmp_path / "run", "--device", "cpu", "--json")
    rc, first, err = cli(*args)
    assert rc == 0, err
    rc, out, err = cli(*args)
    assert rc == 2 and out == "" and "already holds results" in err and "--overwrite" in err
    rc, again, err = cli(*args, "--overwrite")
    assert rc == 0, err
    assert comparable(json.loads(first)) == comparable(json.loads(again))
    assert read_run_record(tmp_path / "run")["status"] == "done"
