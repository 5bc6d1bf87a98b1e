"""`benchmarks/gpu_check.sh` cannot rot: its CPU fallback runs here at toy sizes and must print a measured figure in
every row; and the GPU-marked tests still collect and run on a machine without Textual (the bare GPU machine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
MEASURED = re.compile(r"^\d+(\.\d+)? s( per evaluation)?$")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PY=sys.executable, BLINDSPOT_CACHE=str(tmp_path / "cache"), **extra)
    return env


def _table_rows(text: str) -> list[list[str]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]
    return [r for r in rows if r[0] != "check" and not set(r[0]) <= {"-"}]


def _without_textual(tmp_path: Path) -> str:
    """A PYTHONPATH entry under which `import textual` fails, as on the bare GPU machine."""
    blocker = tmp_path / "blocked" / "textual"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('no Textual on this machine')\n")
    return str(blocker.parent)


def test_the_cpu_fallback_prints_a_measured_figure_in_every_row(tmp_path):
    """On the CPU at toy sizes, without Textual (as on the GPU machine, where the script must run as it is)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=tmp_path, env=_env(tmp_path, PYTHONPATH=_without_textual(tmp_path)), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch " in proc.stdout and "precision:" in proc.stdout and "TF32 off" in proc.stdout
    assert "the workbench's left out, Textual is not importable" in proc.stdout
    rows = _table_rows(proc.stdout)
    checks = [r[0] for r in rows]
    for wanted in ("GPU-marked tests", "--target all", "TF32 off", "TF32 on", "the first 1 of those", "resnet18"):
        assert any(wanted in c for c in checks), (wanted, checks)
    bad = [r for r in rows if not MEASURED.match(r[2])]
    assert not bad, bad  # every row has its figure: seconds (or seconds per model evaluation)
    assert (out / "part1.md").read_text() in proc.stdout and (out / "part2.md").read_text() in proc.stdout

    part1 = json.loads((out / "part1.json").read_text())["figures"]
    big = part1["n200-all-big"]
    assert big["batch"]["problems_per_call"] >= 1 and big["batch"]["problems_per_image"] == 9
    assert big["peak_memory"]["process_peak_rss_bytes"] > 0 and big["precision"]["tf32"] == "off"
    part2 = json.loads((out / "part2.json").read_text())["figures"]
    assert part2["conv-2-cpu-tf32-on"]["precision"]["tf32"] == "on"  # --tf32 reaches run.json through the CLI
    assert part2["conv-2-cpu-tf32-off"]["precision"]["tf32"] == "off"
    assert part2["resnet"]["evaluations"] >= 2 and part2["resnet"]["extrapolated_seconds"] > part2["resnet"]["seconds"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_one_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), "part1", "--out", str(tmp_path / "out")],
        env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--device cpu --tiny" in proc.stderr


def test_gpu_marked_tests_collect_and_run_without_textual(tmp_path):
    """The GPU machine has no Textual: `pytest -m gpu` must not stop at the workbench's tests."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-p", "no:textual-snapshot",
         "tests"],
        cwd=REPO, env=_env(tmp_path, PYTHONPATH=os.pathsep.join([_without_textual(tmp_path), str(REPO)])),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "error" not in summary and re.search(r"\d+ (passed|skipped)", summary), summary
