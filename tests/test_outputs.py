"""One rule for every command's --out: checked before any work, never silently overwritten."""

from __future__ import annotations

import pytest

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
