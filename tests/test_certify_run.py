"""`blindspot certify` end to end: the operation's files and summary, reading an attack run, cancellation,
and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blindspot.cli import main
from engines.attack.chunks import load_samples
from engines.certify.events import CertifiedChunk
from engines.certify.operation import CertifyRequest, run_certify
from engines.certify.results import CERTIFY_FILE, read_certify
from engines.core.context import RunContext
from engines.core.errors import Cancelled, InputError
from engines.core.io import read_json


def test_softmax_runs_are_exact_and_bracket_the_attack(tmp_path: Path) -> None:
    result = run_certify(CertifyRequest(model="softmax1", n=8), RunContext(out=tmp_path / "run"))
    doc = read_certify(tmp_path / "run")
    rows = doc["images"]
    samples = load_samples(tmp_path / "run" / "attack")
    assert doc["status"] == "done" and len(rows) == 8
    assert [r["index"] for r in rows] == samples["index"].tolist()  # the attack's images, in its order
    assert result.exact and result.method == "exact" and result.violations == 0
    assert any(r["upper"] and r["exact"] for r in rows)
    for r in rows:
        if r["upper"] and r["exact"]:
            assert r["upper"] >= r["exact"] * (1 - 1e-6)
            assert r["lipschitz"] <= r["exact"] * (1 + 1e-6)
    assert result.attack_over_exact_mean >= 1 - 1e-6
    assert (tmp_path / "run" / "figure.png").is_file()
    assert read_json(tmp_path / "run" / "summary.json")["method"] == "exact"


def test_a_finished_attack_run_is_read_not_redone_and_crown_agrees_with_exact(tmp_path: Path) -> None:
    first = run_certify(CertifyRequest(model="softmax2", n=6), RunContext(out=tmp_path / "a"))
    again = run_certify(
        CertifyRequest(model="softmax2", n=6, method="crown", attack_run=str(tmp_path / "a" / "attack")),
        RunContext(out=tmp_path / "b"),
    )
    assert not (tmp_path / "b" / "attack").exists()
    assert again.attack_run == str(tmp_path / "a" / "attack")
    exact = [r["exact"] for r in read_certify(tmp_path / "a")["images"]]
    crown = [r["lower"] for r in read_certify(tmp_path / "b")["images"]]
    assert crown == pytest.approx(exact, rel=1e-5, abs=1e-9)  # CROWN is exact on an affine model
    assert first.violations == again.violations == 0


def test_an_attack_run_of_another_model_is_refused(tmp_path: Path) -> None:
    run_certify(CertifyRequest(model="softmax1", n=3), RunContext(out=tmp_path / "a"))
    with pytest.raises(InputError, match="another model"):
        run_certify(
            CertifyRequest(model="softmax3", n=3, attack_run=str(tmp_path / "a" / "attack")),
            RunContext(out=tmp_path / "b"),
        )


def test_cancelling_keeps_the_finished_images(tmp_path: Path) -> None:
    seen: list[CertifiedChunk] = []

    def on_event(event) -> None:
        if isinstance(event, CertifiedChunk):
            seen.append(event)

    ctx = RunContext(out=tmp_path / "run", on_event=on_event, cancelled=lambda: bool(seen))
    with pytest.raises(Cancelled):
        run_certify(CertifyRequest(model="n100-100-10", n=6, chunk_images=2, probes=3), ctx)
    doc = read_certify(tmp_path / "run")
    assert doc["status"] == "running" and len(doc["images"]) == 2
    assert doc["images"] == seen[0].rows
    assert read_json(tmp_path / "run" / "run.json")["status"] == "interrupted"


def test_cli_prints_the_summary_as_json(tmp_path: Path, capsys) -> None:
    code = main(
        ["certify", "--model", "n100-100-10", "--n", "4", "--probes", "4", "--json", "--out", str(tmp_path / "r")]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 4 and summary["method"] == "alpha-crown" and summary["violations"] == 0
    assert summary["median_ratio"] >= 1 and not summary["exact"]
    assert (tmp_path / "r" / CERTIFY_FILE).is_file()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "n100-100-10", "--method", "exact"], "affine"),
        (["--model", "softmax1", "--method", "magic"], "unknown --method"),
        (["--model", "softmax1", "--target", "random"], "--target must be all or a class label"),
        (["--n", "3"], "say which model"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, capsys, args: list[str], words: str) -> None:
    code = main(["certify", *args, "--n", "3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work
