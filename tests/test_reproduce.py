"""`reproduce`: Tables 1–5 beside the paper's numbers (tiny N to keep it fast), cancellation, report text."""

import json
import math
from types import SimpleNamespace

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
from engines.core.zoo import zoo_entry
from engines.reproduce import section42, section42_study
from engines.reproduce.markdown import noise_readings, scale_readings
from engines.reproduce.operation import FULL_N, QUICK_N, ReproduceRequest, run_reproduce
from engines.reproduce.section42_markdown import section42_lines

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


# §4.2: the section is read from the shipped seed study (a file written here in its format: the study's `study()`)
S42_CHAIN = ("adv-paper", "fix-nearest", "fix-cap", "fix-perturbation", "adv")
S42_MODEL = {arm: model for model, arm in section42.ARM.items()} | {
    "fix-nearest": "n100-100-10-adv-paper",
    "fix-cap": "n100-100-10-adv-paper",
    "fix-perturbation": "n100-100-10-adv",
}
S42_MEANS = {  # test error means by arm; fix-cap moves the chain by far more than the seed noise, no other step
    "decay": 2.30,
    "dropout": 2.10,
    "adv-paper": 2.90,
    "fix-nearest": 2.905,
    "fix-cap": 1.62,
    "fix-perturbation": 1.615,
    "adv": 1.60,
    "adv-input": 1.75,
    "adv-hidden": 1.95,
    "fgm": 1.85,
    "vat": 1.70,
}


def _paired_reference(a: str, b: str, errors: dict[str, list[float]]) -> dict:
    """compare_paired's figures, computed with numpy (the oracle for the file and for the ablation's pairs)."""
    d = np.array(errors[b]) - np.array(errors[a])
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    verdict = "no difference" if abs(mean) <= 2 * sd else f"{b if mean < 0 else a} lower"
    return {
        "a": a,
        "b": b,
        "seeds": [0, 1, 2],
        "mean_difference": round(mean, 4),
        "sd": round(sd, 4),
        "verdict": verdict,
    }


def synthetic_study(means: dict[str, float] | None = None, seed: int = 0) -> tuple[dict, dict[str, list[float]]]:
    """A study file as benchmarks/study_section42.py writes it, its per-seed errors drawn around `means`."""
    rng = np.random.default_rng(seed)
    means = S42_MEANS | (means or {})
    errors = {arm: [round(m + float(e), 4) for e in rng.normal(0, 0.05, 3)] for arm, m in means.items()}
    arms = []
    for k, (arm, errs) in enumerate(errors.items()):
        vals = [round(e + 0.1 + 0.01 * k, 4) for e in errs[::-1]]
        grid = {
            "axes": {"mix": [0.25, 0.5]},
            "points": [{"hyper": {"mix": v}, "validation_error": 2.0 + v, "seconds": 10.0} for v in (0.25, 0.5)],
            "chosen": {"mix": 0.25},
        }
        arms.append(
            {
                "arm": arm,
                "model": S42_MODEL[arm],
                "options": ["--grid", "mix=0.25,0.5"] if arm == "adv" else [],
                "description": arm,
                "seeds": [0, 1, 2],
                "per_seed": [
                    {"seed": s, "test_error": e, "validation_error": v, "seconds": 100.0 + k}
                    for s, e, v in zip((0, 1, 2), errs, vals, strict=True)
                ],
                "test_error_mean": round(float(np.mean(errs)), 4),
                "test_error_sd": round(float(np.std(errs, ddof=1)), 4),
                "validation_error_mean": round(float(np.mean(vals)), 4),
                "validation_error_sd": round(float(np.std(vals, ddof=1)), 4),
                "hyper": {"mix": 0.25} if arm == "adv" else {},
                "grid": grid if arm == "adv" else None,
                "chosen_epoch": 20 + k,
                "adversarial": None,
                "train_seconds": 300.0 + k,
                "robustness": {
                    "distortion": 0.03 + k / 1000,
                    "certified": 0.001,
                    "certified_method": "crown",
                    "violations": 0,
                    "transfer": 5.0 + k,
                    "noise": 2.0,
                    "images": 1000,
                },
            }
        )
    pairs = [("decay", a) for a in errors if a != "decay"] + list(zip(S42_CHAIN, S42_CHAIN[1:], strict=False))
    study = {
        "what": "§4.2 under the training protocol: sigmoid nets, validation images, test set read once per seed",
        "robustness_n": 1000,
        "reference": "n100-100-10",
        "baseline": "decay",
        "chain": list(S42_CHAIN),
        "arms": arms,
        "comparisons": [_paired_reference(a, b, errors) for a, b in pairs],
    }
    return study, errors


class FakeRobustness:
    """run_robustness without the attack: each model's figures made up here, its test error the study's first seed's
    unless told otherwise."""

    def __init__(self, first_seed: dict[str, float], off: tuple[str, ...] = ()) -> None:
        self.first_seed, self.off = first_seed, off
        self.asked: list[str] = []

    def row(self, k: int, model: str) -> dict:
        error = self.first_seed.get(model, 9.0) + (0.5 if model in self.off else 0.0)
        return {
            "model": model,
            "test_error": error,
            "images": 20,
            "distortion": 0.04 + k / 100,
            "certified": 0.002 + k / 1000,
            "certified_over_attack": 0.05,
            "violations": 0,
            "transfer": 10.0 + k,
            "noise": 1.0 + k,
        }

    def __call__(self, request, ctx):
        models = [m.name for m in request.models]
        self.asked += models
        rows = [SimpleNamespace(model=m, to_json=lambda k=k, m=m: self.row(k, m)) for k, m in enumerate(models)]
        return SimpleNamespace(rows=rows)


def run_section42(tmp_path, monkeypatch, study=None, trained=None, off=(), n=20, text=None):
    """The §4.2 section over a models folder of placeholders (`trained` ids) beside a study file (`study`, or the
    raw `text`; neither: no file), robustness faked; its figures and its Markdown."""
    models = tmp_path / "zoo" / "models"
    models.mkdir(parents=True)
    shipped = section42.MAIN + section42.ABLATION + section42.CONTROLS if trained is None else trained
    for mid in (*shipped, section42.REFERENCE):
        (models / f"{mid}.safetensors").write_bytes(b"")
    if study is not None or text is not None:
        (tmp_path / "zoo" / "studies").mkdir()
        body = text if text is not None else json.dumps(study)
        (tmp_path / "zoo" / "studies" / "section42.json").write_text(body)
    monkeypatch.setenv("BLINDSPOT_MODELS", str(models))
    first = (
        {}
        if study is None
        else {a["model"]: a["per_seed"][0]["test_error"] for a in study["arms"] if a["arm"] in section42.ARM.values()}
    )
    fake = FakeRobustness(first, off)
    monkeypatch.setattr(section42, "run_robustness", fake)
    s42 = section42.section42(n, 0, AttackConfig(), None, RunContext(device="cpu"), tmp_path / "out")
    return s42, "\n".join(section42_lines(s42)), fake


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table's rows (cells), under the heading it follows; the header row first."""
    found: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("# ")
        elif line.startswith("| "):
            found.setdefault(heading, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return found


def rows_by_first_cell(table: list[list[str]]) -> dict[str, list[str]]:
    rows = {r[0]: r for r in table[1:]}
    assert len(rows) == len(table) - 1, "a row is shown twice"
    return rows


def test_section42_shows_every_arm_of_the_study_as_in_the_file(tmp_path, monkeypatch):
    study, errors = synthetic_study()
    s42, text, fake = run_section42(tmp_path, monkeypatch, study, off=("n100-100-10-vat",))
    by_arm = {a["arm"]: a for a in study["arms"]}
    tables = md_tables(text)
    main = rows_by_first_cell(tables["§4.2: adversarial training under the protocol, and the robustness it buys"])
    ablation = rows_by_first_cell(tables["Ablation: which layers' adversarial examples are used"])
    controls = rows_by_first_cell(tables["Controls: the paper's pool as written, and fresh perturbations"])
    assert list(main) == list(section42.MAIN) and list(ablation) == list(section42.ABLATION)
    assert list(controls) == list(section42.CONTROLS)
    live = {r["model"]: r for r in (fake.row(k, m) for k, m in enumerate(fake.asked))}
    for table in (main, ablation, controls):
        for model, cells in table.items():
            arm = by_arm[section42.ARM[model]]
            errs = np.array(errors[arm["arm"]])  # the seed columns: the file's, which are these errors' mean and sd
            offset = 0 if table is main else 1
            assert cells[1 + offset] == "3"
            assert cells[2 + offset] == f"{errs.mean():.2f} ± {errs.std(ddof=1):.2f}"
            assert cells[3 + offset] == f"{arm['validation_error_mean']:.2f} ± {arm['validation_error_sd']:.2f}"
            shipped = f"{live[model]['test_error']:.2f}"
            assert cells[5] == shipped + (" (≠ study's seed)" if model.endswith("vat") else "")
            assert f"{live[model]['distortion']:.4f}" in cells and f"{live[model]['certified']:.5f}" in cells
    assert main["n100-100-10-decay"][4] == "1.6 % (weight decay alone)"
    assert main["n100-100-10-adv"][4] == "< 1.2 % (adversarial pool)"
    assert "The shipped n100-100-10-vat is not the study's first seed" in text

    # every comparison against the baseline, as the file has it
    baseline = rows_by_first_cell(tables["Every arm against decay"])
    expected = [c for c in study["comparisons"] if c["a"] == "decay"]
    assert list(baseline) == [c["b"] for c in expected]
    for c in expected:
        assert baseline[c["b"]] == [c["b"], "3", f"{c['mean_difference']:+.2f}", f"{c['sd']:.2f}", c["verdict"]]
    adv_vs_decay = next(c for c in expected if c["b"] == "adv")
    assert f"- n100-100-10-adv against decay (B − A): {adv_vs_decay['mean_difference']:+.2f} ± " in text

    # the fix chain in its order, each step against the one before; the sentence names the steps that moved
    chain = tables["The fix chain: the paper's pool, one fix at a time"]
    assert [r[0] for r in chain[1:]] == list(S42_CHAIN)
    for row, (a, b) in zip(chain[2:], zip(S42_CHAIN, S42_CHAIN[1:], strict=False), strict=True):
        c = next(c for c in study["comparisons"] if (c["a"], c["b"]) == (a, b))
        assert (
            row[4] == a and row[5] == f"{c['mean_difference']:+.2f} ± {c['sd']:.2f} points over 3 seeds: {c['verdict']}"
        )
    moved = [
        c
        for c in study["comparisons"]
        if c["a"] in S42_CHAIN and c["b"] in S42_CHAIN and c["verdict"] != "no difference"
    ]
    assert [c["b"] for c in moved] == ["fix-cap"]  # as the means were chosen
    assert (
        f"beyond 2 sd of the paired differences: fix-cap ({moved[0]['mean_difference']:+.2f} ± {moved[0]['sd']:.2f})."
        in text
    )

    # the ablation's pairs, computed from the per-seed errors: against numpy's
    for a, b in section42.ABLATION_PAIRS:
        c = _paired_reference(a, b, errors)
        assert (
            f"- {b} against {a} (B − A, paired over the seeds, computed from the study's per-seed errors): "
            f"{c['mean_difference']:+.2f} ± {c['sd']:.2f} points over 3 seeds: {c['verdict']}." in text
        )

    # hyper-parameters, grid and cost: the file's
    hyper = rows_by_first_cell(tables["Hyper-parameters chosen on the validation split"])
    assert hyper["adv"][1:3] == ["mix 0.25", "mix ∈ {0.25, 0.5} (2 points, validation 2.25–2.50)"]
    cost = rows_by_first_cell(tables["Cost"])
    assert cost["adv"] == ["adv", "4", f"{by_arm['adv']['train_seconds']:.0f}"] and cost["decay"][1] == "3"
    total = sum(a["train_seconds"] for a in study["arms"])
    assert f"Training, all arms: {total:.0f} s" in text
    # a live run smaller than the study's: the study's own robustness beside, every arm
    robust = rows_by_first_cell(tables["Robustness measured by the study (N = 1000, each arm's first seed)"])
    assert robust["fix-cap"][2] == f"{by_arm['fix-cap']['robustness']['distortion']:.4f}" and len(robust) == len(by_arm)
    assert s42["missing"] == []


def test_section42_says_whether_the_papers_figure_was_reached(tmp_path, monkeypatch):
    paper_figure = zoo_entry("n100-100-10-adv").paper["test_error"]
    for k, (mean, word) in enumerate(((paper_figure - 0.1, "reached"), (paper_figure + 0.3, "not reached"))):
        study, errors = synthetic_study({"adv": mean})
        _, text, _ = run_section42(tmp_path / str(k), monkeypatch, study, n=1000)
        adv = np.array(errors["adv"])
        assert (
            f"The paper's < {paper_figure:g} % for n100-100-10-adv is **{word}**: "
            f"{adv.mean():.2f} ± {adv.std(ddof=1):.2f} %" in text
        )
        assert "Robustness measured by the study" not in text  # the live run is as large as the study's


def test_section42_without_a_study_still_shows_the_live_rows_and_lists_missing_models(tmp_path, monkeypatch):
    trained = ("n100-100-10-decay", "n100-100-10-adv", "n100-100-10-fgm")
    s42, text, fake = run_section42(tmp_path, monkeypatch, trained=trained)
    assert fake.asked == list(trained) and s42["study"] is None
    assert s42["missing"] == [
        m for m in dict.fromkeys(section42.MAIN + section42.ABLATION + section42.CONTROLS) if m not in trained
    ]
    assert f"No seed study: `{tmp_path / 'zoo' / 'studies' / 'section42.json'}` is absent" in text
    main = rows_by_first_cell(
        md_tables(text)["§4.2: adversarial training under the protocol, and the robustness it buys"]
    )
    assert main["n100-100-10-decay"][1:4] == ["–", "–", "–"]
    assert main["n100-100-10-decay"][5] == f"{fake.row(0, 'n100-100-10-decay')['test_error']:.2f}"
    assert main["n100-100-10-dropout"][5] == "not trained"
    assert "Not in the models folder, left out of the live columns: " + ", ".join(s42["missing"]) + "." in text
    _, text, _ = run_section42(tmp_path / "none", monkeypatch, trained=())
    assert "Not computed: no §4.2 model is trained" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"arms": [', "is unreadable (JSONDecodeError"),
        (json.dumps({"arms": [], "comparisons": [], "baseline": "decay"}), "is damaged: the file has no valid 'chain'"),
        ("damaged-arm", "is damaged: arm 7 has no valid 'test_error_mean'"),
        ("damaged-seed", "is damaged: arm 'decay' has a per-seed record without seed and test_error"),
        ("damaged-robustness", "is damaged: arm 'adv''s robustness has an invalid 'distortion'"),
    ],
)
def test_a_damaged_study_is_one_line_and_the_section_says_it(tmp_path, monkeypatch, body, message):
    study, _ = synthetic_study()
    if body == "damaged-arm":
        study["arms"][6]["test_error_mean"] = "1.6"
        body = json.dumps(study)
    elif body == "damaged-robustness":
        study["arms"][6]["robustness"]["distortion"] = "0.05"
        body = json.dumps(study)
    elif body == "damaged-seed":
        del study["arms"][0]["per_seed"][1]["test_error"]
        body = json.dumps(study)
    path = tmp_path / "section42.json"
    path.write_text(body)
    with pytest.raises(InputError) as raised:
        section42_study.read_study(path)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    s42, text, _ = run_section42(tmp_path, monkeypatch, text=body)
    assert s42["study"] is None and message in s42["study_error"]
    assert f"No seed study read: {s42['study_error']}." in text.splitlines()
    assert section42_study.read_study(tmp_path / "absent.json") is None


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


def test_a_partial_study_says_what_it_does_not_hold_yet(tmp_path, monkeypatch):
    study, errors = synthetic_study()
    study["arms"] = [a for a in study["arms"] if a["arm"] == "decay"]
    del study["arms"][0]["robustness"]
    study["comparisons"] = []
    s42, text, _ = run_section42(tmp_path, monkeypatch, study)
    main = rows_by_first_cell(
        md_tables(text)["§4.2: adversarial training under the protocol, and the robustness it buys"]
    )
    decay = np.array(errors["decay"])
    assert main["n100-100-10-decay"][2] == f"{decay.mean():.2f} ± {decay.std(ddof=1):.2f}"
    assert main["n100-100-10-adv"][1:4] == ["–", "–", "–"]
    assert "The study has no adv arm: whether the paper's figure is reached is not measured." in text
    assert "The study holds no comparison along the chain yet." in text
    assert "The study holds no comparison against decay yet." in text
    assert "Robustness measured by the study" not in text and "the section's last table" not in text
