"""One reader of an attack run folder: format version, chunks checked by checksum from format 2 on, a finished
run's samples against an unfinished run's chunks; and the CSV export built on it."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engines.attack.export import ATTACK_COLUMNS, attack_csv, attack_rows
from engines.attack.folder import AttackFolder
from engines.attack.operation import AttackRequest, resume_attack, run_attack
from engines.attack.search import AttackConfig
from engines.core.context import RunContext
from engines.core.errors import Cancelled, InputError
from engines.core.events import ChunkDone
from engines.core.runs import LOCK_FILE
from tests.conftest import make_mnist_dir

BUDGET = AttackConfig(c_steps=2, max_iter=10)
CHUNK = "chunks/000004-000008.safetensors"


def request(data: Path) -> AttackRequest:
    return AttackRequest(model="n100-100-10", n=12, seed=1, config=BUDGET, batch_size=4, data_dir=str(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished run and one cut after its second chunk (images 0–8 of 12)."""
    base = tmp_path_factory.mktemp("attack-folder")
    data = make_mnist_dir(base / "data")
    run_attack(request(data), RunContext(device="cpu", out=base / "fin"))
    saved: list[ChunkDone] = []
    ctx = RunContext(
        device="cpu",
        out=base / "cut",
        on_event=lambda e: saved.append(e) if isinstance(e, ChunkDone) else None,
        cancelled=lambda: len(saved) >= 2,
    )
    with pytest.raises(Cancelled):
        run_attack(request(data), ctx)
    return {"fin": base / "fin", "cut": base / "cut"}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaN distortions included: c and distortion are NaN where nothing was found)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_record(folder: Path, drop: tuple[str, ...] = (), **changes: object) -> None:
    doc = json.loads((folder / "run.json").read_text())
    doc = {k: v for k, v in doc.items() if k not in drop} | changes
    (folder / "run.json").write_text(json.dumps(doc))


def as_format_1(folder: Path) -> None:
    """What a run from before run format 2 left: no format, no request checksum, chunks without a digest."""
    edit_record(folder, drop=("format", "request_sha256"))


def break_checksum(folder: Path) -> None:
    """One chunk whose arrays no longer match the sha256 in its header (a flipped value, structure intact)."""
    path = folder / CHUNK
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tensors["distortion"] = tensors["distortion"] + 1.0
    save_file(tensors, str(path), metadata=meta)


def test_format_and_checksums(runs, tmp_path):
    fin = AttackFolder.read(runs["fin"])
    assert (fin.format, fin.checksummed, fin.n) == (2, True, 12)
    assert fin.verified_chunks() == [(0, 4), (4, 8), (8, 12)]
    damaged = copy(runs["fin"], tmp_path / "damaged")
    break_checksum(damaged)
    assert AttackFolder.read(damaged).verified_chunks() == [(0, 4), (8, 12)]  # format 2: the checksum decides
    as_format_1(damaged)
    old = AttackFolder.read(damaged)
    assert (old.format, old.checksummed) == (1, False)
    assert old.verified_chunks() == [(0, 4), (4, 8), (8, 12)]  # format 1 had no checksums: structure only
    assert old.verified_chunks(n=6) == [(0, 4)]  # a range past the images asked for is left out
    assert old.verified_chunks(image_shape=(3, 28, 28)) == []  # images of another shape: no chunk is the run's


def test_a_finished_run_is_its_samples_an_unfinished_one_its_chunks(runs, tmp_path):
    fin, cut = AttackFolder.read(runs["fin"]), AttackFolder.read(runs["cut"])
    samples = fin.finished_samples()
    reference = load_file(str(runs["fin"] / "samples.safetensors"))
    assert samples is not None and set(samples) == set(reference)
    assert all(same(samples[k], reference[k]) for k in reference)
    assert fin.summary() is not None and fin.summary().to_json() == json.loads(
        (runs["fin"] / "summary.json").read_text()
    )
    assert cut.finished_samples() is None and cut.summary() is None
    assert (cut.status(), cut.verified_chunks(), cut.covered_images()) == ("interrupted", [(0, 4), (4, 8)], 8)

    no_samples = copy(runs["fin"], tmp_path / "no-samples")
    (no_samples / "samples.safetensors").unlink()
    assert AttackFolder.read(no_samples).finished_samples() is None  # the chunks are the run then

    live = copy(runs["fin"], tmp_path / "live")  # samples on disk, but a live writer says it is still running
    edit_record(live, status="running")
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    (live / LOCK_FILE).write_text(json.dumps(lock))
    assert AttackFolder.read(live).status() == "running" and AttackFolder.read(live).finished_samples() is None

    damaged = copy(runs["fin"], tmp_path / "damaged-samples")
    (damaged / "samples.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="samples.safetensors is damaged"):
        AttackFolder.read(damaged).finished_samples()


def test_another_kind_is_refused(runs, tmp_path):
    other = copy(runs["fin"], tmp_path / "other")
    edit_record(other, drop=("request_sha256", "format"), kind="bounds")
    with pytest.raises(InputError, match="holds a bounds run, not an attack run"):
        AttackFolder.read(other)


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_export_of_a_finished_run_has_every_image_with_its_index(runs):
    rows = rows_of(attack_csv(runs["fin"]))
    samples = load_file(str(runs["fin"] / "samples.safetensors"))
    assert list(rows[0]) == list(ATTACK_COLUMNS) and len(rows) == 12
    assert [int(r["index"]) for r in rows] == samples["index"].tolist()
    assert [int(r["label"]) for r in rows] == samples["label"].tolist()
    assert [int(r["success"]) for r in rows] == samples["success"].tolist()
    for r, d in zip(rows, samples["distortion"].tolist(), strict=True):
        assert (r["distortion"] == "") if d != d else float(r["distortion"]) == pytest.approx(d, rel=1e-5)


def test_export_of_an_unfinished_run_has_its_verified_chunks_only(runs, tmp_path):
    rows = attack_rows(runs["cut"])
    kept = load_file(str(runs["cut"] / CHUNK))
    assert [r["image"] for r in rows] == list(range(8)) and all(r["index"] == "" for r in rows)
    assert [r["target"] for r in rows[4:]] == kept["target"].tolist()
    damaged = copy(runs["cut"], tmp_path / "cut-damaged")
    break_checksum(damaged)
    assert [r["image"] for r in attack_rows(damaged)] == list(range(4))  # format 2: the damaged chunk is left out
    as_format_1(damaged)
    assert [r["image"] for r in attack_rows(damaged)] == list(range(8))  # format 1: no checksum to check


def test_export_with_nothing_finished_is_one_line(runs, tmp_path):
    empty = copy(runs["cut"], tmp_path / "empty")
    shutil.rmtree(empty / "chunks")
    with pytest.raises(InputError, match="holds no finished images yet"):
        attack_csv(empty)


def test_a_resumed_format_1_run_keeps_its_unchecksummed_chunks(runs, tmp_path):
    """Resume reads the folder through the same reader: a format-1 run's chunks are trusted without checksums."""
    old = copy(runs["cut"], tmp_path / "old")
    break_checksum(old)
    as_format_1(old)
    before = load_file(str(old / CHUNK))
    result = resume_attack(old, RunContext(device="cpu"))
    samples = load_file(str(old / "samples.safetensors"))
    assert result.n == 12 and same(samples["distortion"][4:8], before["distortion"])  # kept, not recomputed
