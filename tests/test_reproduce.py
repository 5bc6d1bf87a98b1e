"""`reproduce` writes Tables 1–4 beside the paper's numbers (tiny N to keep it fast)."""

import json

from engines.core import paper
from engines.reproduce.tables import noise_readings


def test_reproduce_writes_all_four_tables_beside_the_papers(cli, tmp_path):
    out = tmp_path / "rep"
    rc, _, err = cli("reproduce", "--n", "2", "--c-steps", "2", "--max-iter", "10", "--device", "cpu", "--out", out)
    assert rc == 0, err
    report = (out / "report.md").read_text()
    for title in (
        "## Table 1",
        "## Table 2",
        "## Table 3",
        "## Table 4",
        "## Table 5",
        "## What differs from the paper",
    ):
        assert title in report
    # the paper's own numbers appear beside ours
    assert "/ 7.40 (" in report and "/ 0.062 (" in report  # softmax1 test error and distortion
    assert "/ 26.2 (" in report and "/ 98.0 (" in report  # Table 4 cells
    tables = json.loads((out / "tables.json").read_text())
    assert [r["model"] for r in tables["table1"]] == paper.TABLE1_MODELS
    t2_rows = [r["row"] for r in tables["table2"]]
    noise = ["noise 0.1", "noise 0.3", "noise 0.1 unclipped", "noise 0.3 unclipped"]
    assert t2_rows == [*paper.TABLE1_MODELS, *noise]
    assert all(r["paper"] is not None for r in tables["table2"] + tables["table4"])
    unclipped = ["noise 0.06 unclipped", "noise 0.1 unclipped"]
    assert sorted(r["row"] for r in tables["table4"]) == sorted([*paper.TABLE4, *unclipped])
    assert "Noise rows, mean distance from the paper's values" in report
    for r in tables["table1"]:
        assert r["paper_test_error"] == paper.TABLE1[r["model"]][1]
    assert (out / "figures" / "table2-heatmap.png").is_file()
    assert (out / "table4" / "matrix.json").is_file()


def test_the_noise_reading_closer_to_the_paper_is_named():
    def rows(clipped: list[float], raw: list[float]) -> list[dict]:
        paper_row = [5.0, 4.0]
        return [
            {"row": "noise 0.3", "kind": "noise", "ours": clipped, "paper": paper_row},
            {"row": "noise 0.3 unclipped", "kind": "noise", "ours": raw, "paper": paper_row},
        ]

    far, near = [45.0, 40.0], [6.0, 4.5]
    (line,) = noise_readings({"table2": rows(far, near), "table4": []})
    assert "38.0 points for clipped" in line and "0.8 points for unclipped" in line and "fit unclipped" in line
    (line,) = noise_readings({"table2": rows(near, far), "table4": []})
    assert "fit clipped noise better" in line
    assert noise_readings({"table2": rows(far, near)[:1], "table4": []}) == []
