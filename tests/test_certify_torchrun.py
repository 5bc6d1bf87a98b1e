"""`blindspot certify` under torchrun (2 CPU ranks, gloo): the single process's certify.json, every image once."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from engines.certify.results import read_certify
from tests.test_torchrun import _blindspot

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun"
)

CERTIFY = ["certify", "--model", "n100-100-10", "-n", "12", "--c-steps", "3", "--max-iter", "40"]
CERTIFY += ["--device", "cpu", "--json"]
# In about 1 run in 10 on a loaded 2-core machine one rank aborts in C++ ("terminate called without an active
# exception", no Python frame) after its images are certified; the attack's torchrun runs never do. Open: found
# 2026-12-04, cause not yet located (suspects: teardown of the gloo group or of autograd's threads after α-CROWN).
ABORT = "terminate called without an active exception"


def test_two_ranks_certify_like_one_process(tmp_path: Path) -> None:
    single = _blindspot(tmp_path, [*CERTIFY, "--out", tmp_path / "one"])
    assert single.returncode == 0, single.stderr
    sharded = _blindspot(tmp_path, [*CERTIFY, "--out", tmp_path / "two"], ranks=2)
    if sharded.returncode != 0 and ABORT in sharded.stderr:  # KNOWN, not understood: see ABORT; once more
        shutil.rmtree(tmp_path / "two")
        sharded = _blindspot(tmp_path, [*CERTIFY, "--out", tmp_path / "two"], ranks=2)
    assert sharded.returncode == 0, sharded.stderr
    summary = json.loads(sharded.stdout)  # one JSON document: rank 0 speaks
    assert summary["n"] == 12 and summary["method"] == "alpha-crown" and summary["violations"] == 0
    one, two = read_certify(tmp_path / "one")["images"], read_certify(tmp_path / "two")["images"]
    assert [r["index"] for r in two] == [r["index"] for r in one] == list(range(12))  # every image once, in order
    for a, b in zip(one, two, strict=True):
        assert (a["label"], a["target"], a["method"]) == (b["label"], b["target"], b["method"])
        assert b["upper"] == pytest.approx(a["upper"], rel=1e-5, abs=1e-9)
        # the radius search starts from 1.5 × upper, so lower may move with upper's last digits (as much, not more)
        assert b["lower"] == pytest.approx(a["lower"], rel=1e-5, abs=1e-9)
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["status"] == "done" and record["ranks"]["world_size"] == 2
    assert (tmp_path / "two" / "figure.png").is_file()
