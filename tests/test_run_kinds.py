"""The run-kind registry: every kind's line in the run list read from a real finished folder of that kind,
figures checked against the result files the operation wrote; unknown kinds listed as before; the report
window's files per kind."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from blindspot.cli import main
from engines.core.io import read_json, write_json_atomic
from engines.core.run_index import Figures, RunKind
from engines.core.run_index import list_runs as list_with
from engines.core.runs import request_digest
from engines.kinds import RUN_KINDS, list_runs, read_run_entry, report_files
from engines.reproduce.kind import REPORT_FILE, TABLE_FILES, TABLES_FILE
from tests.conftest import make_mnist_dir

QUICK = ("--c-steps", "1", "--max-iter", "3", "--device", "cpu")


def cli(*args: object) -> None:
    rc = main([str(a) for a in args])
    assert rc == 0, args


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run of every kind that runs quickly, each from its CLI command, under one runs root."""
    base = tmp_path_factory.mktemp("kinds")
    data = make_mnist_dir(base / "data")
    root = base / "runs"
    cli("attack", "-m", "softmax1", "-n", "6", "--data", data, "--out", root / "attack", *QUICK)
    cli("transfer", "--sources", "softmax1", "--targets", "softmax1,n100-100-10", "-n", "4",
        "--data", data, "--split", "test", "--out", root / "transfer", *QUICK)  # fmt: skip
    cli("units", "-m", "softmax1", "--layer", "fc1", "--stat-random", "20", "--data", data, "--out", root / "units")
    cli("bounds", "-m", "softmax1", "--out", root / "bounds", "--device", "cpu")
    cli("robustness", "-m", "softmax1", "--reference", "none", "-n", "3", "--data", data,
        "--out", root / "robustness", *QUICK)  # fmt: skip
    cli("certify", "-m", "softmax1", "-n", "3", "--data", data, "--out", root / "certify", *QUICK)
    cli("train", "--model", "softmax1", "--max-iter", "1", "--data", data, "--out", root / "models", "--device", "cpu")
    return root


def entries(root: Path) -> dict[str, object]:
    return {e.path.name: e for e in list_runs(root)}


def test_every_kind_that_writes_run_folders_is_registered_and_listed(root):
    found = entries(root)
    kinds = {e.kind for e in found.values()}
    assert kinds == {"attack", "transfer", "units", "bounds", "robustness", "certify", "train"}
    assert kinds <= {k.name for k in RUN_KINDS}
    for name in ("attack", "transfer", "units", "bounds", "robustness", "certify"):
        assert found[name].kind == name and found[name].status == "finished", found[name]
        assert read_json(root / name / "run.json")["kind"] == name  # the kind the operation recorded


def test_attack_line_from_its_summary(root):
    entry = entries(root)["attack"]
    summary = read_json(root / "attack" / "summary.json")
    text = f"success {100 * summary['success_rate']:.1f}%"
    if summary["mean_distortion"] is not None:
        text += f" · distortion {summary['mean_distortion']:.4f}"
    assert (entry.figures, entry.done, entry.total) == (text, 6, 6)
    assert entry.model == "softmax1" and entry.data == "data test"


def test_transfer_line_from_its_matrix(root):
    entry = entries(root)["transfer"]
    matrix = read_json(root / "transfer" / "matrix.json")
    rows, columns = matrix["rows"], matrix["columns"]
    assert columns == ["softmax1", "n100-100-10"] and rows[0]["source"] == "softmax1"
    off = matrix["values"][0][1]  # the only adversarial row, on the model it was not made on
    assert entry.figures == f"{len(rows)} × 2 matrix · off-diagonal {off:.1f}%"
    assert entry.model == "softmax1" and entry.done is None


def test_units_bounds_and_train_lines(root):
    found = entries(root)
    assert found["units"].figures == "layer fc1" and found["units"].model == "softmax1"
    bounds = read_json(root / "bounds" / "bounds.json")
    assert found["bounds"].figures.startswith(f"{len(bounds['layers'])} layers · product ")
    assert found["bounds"].data == ""  # no --input-shape asked: the model's own (a shape shows as "input 1×28×28")
    (checkpoint,) = [e for e in found.values() if e.kind == "train"]
    meta = read_json(checkpoint.path.with_suffix(".json"))
    assert checkpoint.figures == f"test error {meta['metrics']['test_error']:.2f}%"
    assert checkpoint.status == "finished" and checkpoint.path.parent == root / "models"


def test_robustness_line_from_its_rows(root):
    entry = entries(root)["robustness"]
    (row,) = read_json(root / "robustness" / "robustness.json")["rows"]
    text = "1 model"
    if row["distortion"] is not None and row["distortion"] == row["distortion"]:
        text += f" · distortion {row['distortion']:.4f}"
    assert entry.figures == text + f" · certified {row['certified']:.4f}"
    assert entry.model == "softmax1"


def test_certify_line_agrees_with_its_summary(root):
    entry = entries(root)["certify"]
    rows = read_json(root / "certify" / "certify.json")["images"]
    summary = read_json(root / "certify" / "summary.json")
    lower = [r["lower"] for r in rows if (r["lower"] or 0) > 0]
    assert len(rows) == summary["n"] == 3 and len(lower) == summary["certified"]
    text = f"3 images · {len(lower)} certified" + (f" · lower {statistics.fmean(lower):.4f}" if lower else "")
    assert entry.figures == text + (f" · {summary['violations']} violations" if summary["violations"] else "")
    assert report_files("certify")[0] == "summary.json"


def record(folder: Path, kind: str, request: dict, **extra) -> Path:
    folder.mkdir(parents=True)
    doc = {"format": 2, "kind": kind, "status": "done", "request": request, "started": 1.0}
    write_json_atomic(folder / "run.json", doc | {"request_sha256": request_digest(request)} | extra)
    return folder


def test_reproduce_counts_its_tables(tmp_path):
    folder = record(tmp_path / "reproduce-paper", "reproduce", {"quick": True, "split": "test"}, status="interrupted")
    for name in TABLE_FILES[:2]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    entry = read_run_entry(folder)
    assert (entry.figures, entry.model, entry.data, entry.status) == (
        "2 of 6 tables",
        "paper zoo",
        "mnist",
        "interrupted",
    )
    (folder / TABLES_FILE).write_text("{}")
    assert read_run_entry(folder).figures == "6 of 6 tables"
    (folder / REPORT_FILE).write_text("# report")
    assert read_run_entry(folder).figures == "6 of 6 tables · report.md"
    assert report_files("reproduce") == ("report.md", "tables.json", "run.json")


def test_a_folder_of_an_unknown_kind_is_listed_without_figures(tmp_path):
    record(tmp_path / "future-x", "future", {"model": "m.safetensors", "split": "train"}, seconds=2.5)
    (tmp_path / "mystery-1").mkdir()
    (tmp_path / "mystery-1" / "run.json").write_text("{not json")
    (tmp_path / "certify-2").mkdir()
    (tmp_path / "certify-2" / "run.json").write_text("{not json")
    found = {e.path.name: e for e in list_runs(tmp_path)}
    future = found["future-x"]
    assert (future.kind, future.status, future.figures, future.model, future.data) == (
        "future",
        "finished",
        "",
        "m",
        "mnist train",
    )
    assert (future.done, future.total, future.seconds) == (None, None, 2.5)
    assert found["mystery-1"].kind == "?" and found["mystery-1"].status == "damaged"
    assert found["certify-2"].kind == "certify"  # a damaged record's kind guessed from the folder's name
    assert report_files("future")[-1] == "run.json" and set(report_files("future")) >= {"report.md", "summary.json"}


def test_the_listing_takes_its_kinds_as_a_parameter(tmp_path):
    folder = record(tmp_path / "toy-1", "toy", {"model": "a"})
    seen = []

    def describe(path: Path, rec: dict, status: str) -> Figures:
        seen.append((path, rec["kind"], status))
        return Figures("7 toys", 1, 2)

    toy = RunKind("toy", describe=describe, model=lambda rec: "toy model")
    (entry,) = list_with(tmp_path, [toy])
    assert (entry.figures, entry.done, entry.total, entry.model) == ("7 toys", 1, 2, "toy model")
    assert seen == [(folder, "toy", "finished")]
    (plain,) = list_with(tmp_path, [])
    assert (plain.figures, plain.model) == ("", "a")


def test_a_describe_that_fails_keeps_the_line(tmp_path):
    record(tmp_path / "toy-1", "toy", {"model": "a"})

    def broken(*_: object) -> Figures:
        raise KeyError("rows")

    (entry,) = list_with(tmp_path, [RunKind("toy", describe=broken)])
    assert entry.status == "finished" and entry.figures == "" and entry.error == ""
    assert json.loads(json.dumps(entry.to_json()))["kind"] == "toy"


def test_the_report_window_shows_the_file_its_kind_declares(root, tmp_path):
    from screens.run_report import report_text  # the screens need Textual: imported here so GPU checks collect

    assert "`units.json`" in report_text(root / "units", "units")
    assert "`robustness.json`" in report_text(root / "robustness", "robustness")
    assert "`summary.json`" in report_text(root / "certify", "certify")  # certify.json is there too: second
    folder = record(tmp_path / "reproduce-1", "reproduce", {"quick": True})
    (folder / TABLES_FILE).write_text('{"table1": []}')
    assert "`tables.json`" in report_text(folder, "reproduce")
    (folder / REPORT_FILE).write_text("# Tables 1–5\n")
    assert report_text(folder, "reproduce") == "# Tables 1–5\n"  # Markdown as written
    future = record(tmp_path / "future-1", "future", {"model": "m"})
    assert "`run.json`" in report_text(future, "future")
