"""One rule for every command's --out: checked before any work, never silently overwritten."""

from __future__ import annotations

import csv
import io

import pytest

from engines.bounds.export import BOUNDS_COLUMNS, bounds_csv
from engines.core.errors import InputError
from engines.core.exports import csv_text, write_export
from engines.core.io import read_json
from tests.conftest import make_mnist_dir

QUICK = {
    "attack": ["attack", "--model", "softmax1", "--n", "2", "--c-steps", "1", "--max-iter", "2"],
    "bounds": ["bounds", "--model", "softmax1"],
    "units": ["units", "--model", "softmax1", "--layer", "fc1", "--stat-random", "20"],
    "transfer": [
        "transfer",
        "--sources",
        "softmax1",
        "--targets",
        "softmax1",
        "--n",
        "2",
        "--c-steps",
        "1",
        "--max-iter",
        "2",
    ],
    "train": ["train", "--model", "softmax1", "--max-iter", "1"],
}


@pytest.mark.parametrize("command", sorted(QUICK))
def test_an_out_that_is_a_file_is_refused_before_any_work(command, cli, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    args = [*QUICK[command], "--device", "cpu", "--out", blocker]
    if command == "train":
        args += ["--data", make_mnist_dir(tmp_path / "d")]
    rc, out, err = cli(*args)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(blocker) in err and "Traceback" not in err
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("command", ["attack", "bounds", "units", "transfer"])
def test_an_out_with_results_is_refused_unless_overwrite(command, cli, tmp_path):
    out = tmp_path / "run"
    args = [*QUICK[command], "--device", "cpu", "--out", out]
    rc, _, err = cli(*args)
    assert rc == 0, err
    first = sorted(p.name for p in out.iterdir())
    rc, _, err = cli(*args)
    assert rc == 2 and "already holds results" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == first
    rc, _, err = cli(*args, "--overwrite")
    assert rc == 0, err


def test_transfer_runs_without_a_usable_cache(cli, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("BLINDSPOT_CACHE", str(blocker / "cache"))
    args = [*QUICK["transfer"], "--device", "cpu", "--out", tmp_path / "run", "--json"]
    rc, out, err = cli(*args)
    assert rc == 0, err
    assert (tmp_path / "run" / "matrix.json").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "engines.core.cache"]
    assert len(warnings) == 1 and "running without a cache" in warnings[0]
    assert not (blocker.parent / "cache").exists()


def test_bounds_export_is_one_row_per_layer_of_its_bounds_json(cli, tmp_path):
    rc, _, err = cli(*QUICK["bounds"], "--device", "cpu", "--out", tmp_path / "b")
    assert rc == 0, err
    saved = read_json(tmp_path / "b" / "bounds.json")
    rows = list(csv.DictReader(io.StringIO(bounds_csv(saved))))
    assert list(rows[0]) == list(BOUNDS_COLUMNS) and len(rows) == len(saved["layers"])
    for row, layer in zip(rows, saved["layers"], strict=True):
        assert float(row["upper"]) == pytest.approx(layer["upper"], rel=1e-5)
        assert row["layer"] == layer["label"] and row["exact"] == str(int(bool(layer.get("exact"))))
    with pytest.raises(InputError, match="compute the bounds first"):
        bounds_csv({"layers": []})


def test_an_export_goes_where_the_user_says_never_onto_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    text = csv_text(("a", "b"), [{"a": 1, "b": "x,y"}])
    assert text == 'a,b\n1,"x,y"\n'
    written = write_export(text, "~/deep/er/out.csv")
    assert written == tmp_path / "deep" / "er" / "out.csv" and written.read_text() == text
    with pytest.raises(InputError, match="is a folder"):
        write_export(text, tmp_path / "deep")
