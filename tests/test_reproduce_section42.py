"""reproduce's §4.2 section: the shipped seed study (a synthetic one in its format) rendered beside the live
robustness rows, its verdicts recomputed from per-seed errors, a missing or damaged study said in one line."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from engines.attack.search import AttackConfig
from engines.core.context import RunContext
from engines.core.errors import InputError
from engines.core.zoo import zoo_entry
from engines.reproduce import section42, section42_study
from engines.reproduce.section42_markdown import section42_lines

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
