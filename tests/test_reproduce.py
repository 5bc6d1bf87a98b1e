"""`reproduce`: Tables 1–5 beside the paper's numbers (tiny N to keep it fast), cancellation, report text."""

import json
import math

import numpy as np
import pytest
import torch

from engines.attack.search import AttackConfig
from engines.core import paper
from engines.core.checkpoint import load_checkpoint, models_dir
from engines.core.context import RunContext
from engines.core.data import load_split
from engines.core.errors import Cancelled, InputError
from engines.core.events import Step, TableDone
from engines.core.io import read_json, write_json_atomic
from engines.reproduce import section42, section42_study
from engines.reproduce.markdown import noise_readings, scale_readings
from engines.reproduce.operation import FULL_N, QUICK_N, ReproduceRequest, run_reproduce

TINY = ReproduceRequest(n=2, config=AttackConfig(c_steps=2, max_iter=10))


def percent_wrong(model_id: str, split: str) -> float:
    """Oracle for the error columns: count the wrong argmaxes ourselves."""
    model = load_checkpoint(model_id, "cpu").model.eval()
    data = load_split(split)
    with torch.no_grad():
        wrong = sum(
            int((model(data.images[i : i + 5000]).argmax(1) != data.labels[i : i + 5000]).sum())
            for i in range(0, len(data), 5000)
        )
    return 100.0 * wrong / len(data)


def test_reproduce_writes_all_five_tables_and_section42_beside_the_papers(cli, tmp_path):
    out = tmp_path / "rep"
    # an interrupted run in --out is taken up again ("run the same command again to go on")
    write_json_atomic(out / "run.json", {"format": 1, "kind": "reproduce", "status": "interrupted", "request": {}})
    args = ("reproduce", "--n", "2", "--c-steps", "2", "--max-iter", "10", "--device", "cpu", "--out", out)
    rc, stdout, err = cli(*args, "--json")
    assert rc == 0, err
    printed = json.loads(stdout)
    tables = json.loads((out / "tables.json").read_text())
    assert printed["report"] == str(out / "report.md")
    assert {k: printed[k] for k in tables if k != "settings"} == {k: v for k, v in tables.items() if k != "settings"}
    assert tables["settings"]["n"] == 2 and tables["settings"]["attack"]["c_steps"] == 2
    run = read_json(out / "run.json")
    assert run["kind"] == "reproduce" and run["status"] == "done" and run["request"]["n"] == 2
    report = (out / "report.md").read_text()

    # Table 1: our errors are the checkpoints' errors, our distortions Table 2's, each printed beside the paper's
    t2 = json.loads((out / "table2" / "matrix.json").read_text())
    assert [r["model"] for r in tables["table1"]] == paper.TABLE1_MODELS
    own_rows = {row["source"]: row for row in t2["rows"] if row["kind"] == "adversarial"}
    for r in tables["table1"]:
        assert r["distortion"] == pytest.approx(own_rows[r["model"]]["distortion"])
        summary = t2["settings"]["sources"][r["model"]]["summary"]
        assert r["success_rate"] == pytest.approx(100 * summary["success_rate"])
    first = tables["table1"][0]
    assert first["test_error"] == pytest.approx(percent_wrong("softmax1", "test"))
    assert first["train_error"] == pytest.approx(percent_wrong("softmax1", "train"))
    te = first["test_error"]
    assert f"| softmax1 | {first['train_error']:.2f} / 6.70 (" in report
    assert f"{te:.2f} / 7.40 ({te - 7.4:+.2f})" in report

    # Table 2: rows keyed as the paper's, values the matrix's, the diagonal the attack's own error
    noise = ["noise 0.1", "noise 0.3", "noise 0.1 unclipped", "noise 0.3 unclipped"]
    at_paper = " at the paper's distortion"
    sources = [k for mid in paper.TABLE1_MODELS for k in (mid, mid + at_paper)]
    assert [r["row"] for r in tables["table2"]] == [*sources, *noise]
    for i, r in enumerate(tables["table2"]):
        assert r["ours"] == pytest.approx(t2["values"][i], abs=1e-3)
        assert r["paper"] == paper.TABLE2[r["row"].removesuffix(" unclipped").removesuffix(at_paper)]
        # what the row is lies in typed fields (the name is for show): clipped noise, and each source's rows
        assert r["clipped"] is (r["row"] not in noise[2:])
        assert r["source"] == (None if r["kind"] == "noise" else r["row"].removesuffix(at_paper))
        for (lo, hi), v in zip(r["interval"], r["ours"], strict=True):
            assert lo <= v <= hi
    by_row = {r["row"]: r for r in tables["table2"]}
    for j, mid in enumerate(paper.TABLE1_MODELS):
        s = t2["settings"]["sources"][mid]["summary"]
        assert by_row[mid]["ours"][j] == pytest.approx(100 * (s["n_success"] + s["n_trivial"]) / s["n"])
        # the scaled row: this source's perturbations at the paper's mean distortion for it (clipped to the box)
        scaled = by_row[mid + at_paper]
        assert scaled["kind"] == "scaled"
        assert scaled["distortion"] is None or scaled["distortion"] == pytest.approx(paper.TABLE1[mid][2], rel=0.02)
    softmax1_row = tables["table2"][0]
    assert f"| softmax1 | {softmax1_row['ours'][0]:.1f} / 100.0 ({softmax1_row['ours'][0] - 100:+.1f})" in report

    # Table 3: errors of the P1/P2 models on each half
    m1 = tables["table3"][0]
    assert m1["model"] == "m1" and m1["p2_error"] == pytest.approx(percent_wrong("m1", "p2"))
    assert f"| m1 | {m1['p1_error']:.2f} / 0.00 (" in report

    # Table 4: amplified rows at the stated rms, unclipped noise rows beside the paper's
    t4 = {r["row"]: r for r in tables["table4"]}
    scaled4 = [mid + at_paper for mid in paper.TABLE3_MODELS]
    assert sorted(t4) == sorted([*paper.TABLE4, *scaled4, "noise 0.06 unclipped", "noise 0.1 unclipped"])
    for name in ("m1 amplified 0.1", "m1-prime amplified 0.1", "m2 amplified 0.1"):
        assert t4[name]["distortion"] == pytest.approx(0.1, rel=0.01) or math.isnan(t4[name]["distortion"])
        assert f"{t4[name]['ours'][0]:.1f} / {paper.TABLE4[name][0]:.1f} (" in report

    # Table 5: bounds of each layer, their product as the report states it
    t5 = tables["table5"]
    assert [r["layer"] for r in t5["rows"]][:2] == ["Conv. 1", "Conv. 2"] and len(t5["rows"]) == 8
    for r in t5["rows"]:
        assert 0 < r["lower"] <= r["upper"]
    assert t5["product"] >= float(np.prod([r["upper"] for r in t5["rows"]])) * (1 - 1e-6)
    assert f"Product of the upper bounds (the paper's factors): {t5['product']:.3g}." in report

    assert "Noise rows, mean distance from the paper's values" in report
    assert "transfer to the other models (mean of off-diagonal cells)" in report

    # §4.2: every shipped model bracketed by bound and attack; those not in the models folder listed as missing;
    # the seed study read when it is shipped (sample_data/studies/section42.json), said absent otherwise
    s42 = tables["section42"]
    assert [r["model"] for r in s42["rows"]] == list(section42.MAIN)
    assert [r["model"] for r in s42["ablation"] + s42["controls"]] == list(section42.ABLATION + section42.CONTROLS)
    everything = list(dict.fromkeys(section42.MAIN + section42.ABLATION + section42.CONTROLS))
    assert s42["missing"] == [m for m in everything if not (models_dir() / f"{m}.safetensors").is_file()]
    for r in s42["rows"] + s42["ablation"] + s42["controls"]:
        assert (r["live"] is None) == (r["model"] in s42["missing"])
        if r["live"] is not None:
            assert r["live"]["violations"] == 0 and r["live"]["images"] == 2
            assert 0 < r["live"]["certified"] < r["live"]["distortion"]
            assert r["live"]["test_error"] == pytest.approx(percent_wrong(r["model"], "test"))
    adv = s42["rows"][-1]
    line = next(x for x in report.splitlines() if x.startswith("| n100-100-10-adv | "))  # the main table's
    assert "| < 1.2 % (adversarial pool) |" in line and f"| {adv['live']['test_error']:.2f}" in line
    shipped = section42_study.read_study()
    assert s42["study"] == shipped
    if shipped is None:
        assert "No seed study: " in report
    else:
        assert "for n100-100-10-adv is **" in report
    assert (out / "figures" / "table2-heatmap.png").stat().st_size > 1000
    for name in ("table1.json", "table3.json", "table5.json", "table4/matrix.json", "section42.json"):
        assert (out / name).is_file(), name


class CancelInside:
    """A cancel check that says stop on its `after + 1`-th call once `stage` has started."""

    def __init__(self, stage: str, after: int) -> None:
        self.stage, self.after, self.calls, self.inside = stage, after, 0, False
        self.finished: list[str] = []

    def on_event(self, event) -> None:
        if isinstance(event, TableDone):
            self.finished.append(event.name)
        if isinstance(event, Step) and event.task == "reproduce" and event.message.startswith(self.stage):
            self.inside = True

    def __call__(self) -> bool:
        if not self.inside:
            return False
        self.calls += 1
        return self.calls > self.after


@pytest.mark.parametrize(
    ("stage", "after", "before", "kept"),
    [
        ("Table 1", 2, ["Table 2"], ["table2/matrix.json"]),
        ("Table 3", 1, ["Table 2", "Table 1"], ["table2/matrix.json", "table1.json"]),
        (
            "Table 5",
            2,
            ["Table 2", "Table 1", "Table 3", "Table 4"],
            ["table1.json", "table3.json", "table4/matrix.json"],
        ),
    ],
    ids=["table1", "table3", "table5"],
)
def test_reproduce_cancels_inside_a_table_and_keeps_the_finished_ones(tmp_path, stage, after, before, kept):
    cancel = CancelInside(stage, after)
    out = tmp_path / "rep"
    ctx = RunContext(device="cpu", out=out, on_event=cancel.on_event, cancelled=cancel)
    with pytest.raises(Cancelled):
        run_reproduce(TINY, ctx)
    # it stopped inside the table: the check was asked again after the table began (per model, per layer)
    assert cancel.calls == after + 1
    assert cancel.finished == before
    for name in kept:
        assert (out / name).is_file(), name
    table = stage.replace("Table ", "table")
    assert not (out / f"{table}.json").exists() and not (out / "tables.json").exists()
    assert read_json(out / "run.json")["status"] == "interrupted"


def test_request_sizes_and_round_trip():
    assert ReproduceRequest().images == FULL_N and ReproduceRequest(quick=True).images == QUICK_N
    assert ReproduceRequest(quick=True, n=7).images == 7
    assert ReproduceRequest.from_json(TINY.to_json()) == TINY
    with pytest.raises(InputError, match="--n must be at least 1"):
        ReproduceRequest(n=0)


def test_the_noise_reading_closer_to_the_paper_is_named():
    def rows(clipped: list[float], raw: list[float]) -> list[dict]:
        paper_row = [5.0, 4.0]
        return [
            {"row": "noise 0.3", "kind": "noise", "clipped": True, "ours": clipped, "paper": paper_row},
            {"row": "noise 0.3 unclipped", "kind": "noise", "clipped": False, "ours": raw, "paper": paper_row},
        ]

    far, near = [45.0, 40.0], [6.0, 4.5]
    (line,) = noise_readings({"table2": rows(far, near), "table4": []})
    assert "38.0 points for clipped" in line and "0.8 points for unclipped" in line and "fit unclipped" in line
    (line,) = noise_readings({"table2": rows(near, far), "table4": []})
    assert "fit clipped noise better" in line
    assert noise_readings({"table2": rows(far, near)[:1], "table4": []}) == []


def test_scale_reading_states_how_much_of_the_transfer_gap_the_paper_distortion_closes():
    def row(name: str, kind: str, ours: list[float]) -> dict:
        return {"row": name, "kind": kind, "source": "a", "ours": ours, "paper": [100.0, 40.0], "columns": ["a", "b"]}

    tables = {
        "table2": [row("a", "adversarial", [100.0, 10.0]), row("a at the paper's distortion", "scaled", [100.0, 25.0])]
    }
    (line,) = scale_readings(tables)
    assert "10.0 % at our minimum distortion, 25.0 % with each perturbation scaled" in line
    assert "40.0 % in the paper; scaling closes 50 % of the gap" in line
    tables["table2"][1]["ours"] = [100.0, 60.0]
    (line,) = scale_readings(tables)
    assert "the perturbations' size alone more than accounts for the gap" in line
