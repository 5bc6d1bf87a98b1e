"""The tensor cache: round trip, damaged entries are misses, an unwritable cache falls back, concurrent writers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import engines.core.cache as cache
from engines.core.cache import cache_dir, cache_key, cache_load, cache_store, writable_cache_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no cache folder known to be unusable."""
    monkeypatch.setattr(cache, "_unusable", set())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == cache.__name__ and r.levelno == logging.WARNING]


def test_round_trip_keeps_tensors_and_parts(isolated_cache):
    key = cache_key(a=1, b="x")
    assert cache_load("acts", key) is None
    t = {"features": torch.randn(5, 3), "idx": torch.arange(4)}
    path = cache_store("acts", key, t, {"a": 1, "b": "x"})
    assert path == isolated_cache / "acts" / f"{key}.safetensors" and path.is_file()
    assert (isolated_cache / "acts" / f"{key}.json").is_file()  # the sidecar for people
    tensors, parts = cache_load("acts", key)
    assert parts == {"a": 1, "b": "x"}
    assert set(tensors) == {"features", "idx"} and all(torch.equal(tensors[k], t[k]) for k in t)
    assert not list((isolated_cache / "acts").glob("*.tmp"))  # temp files renamed away


def test_damaged_foreign_or_renamed_entries_are_misses(isolated_cache):
    key, other = cache_key(x=1), cache_key(x=2)
    path = cache_store("acts", key, {"f": torch.ones(100)}, {"x": 1})
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], b"", b"\x00" * 64, b"garbage" * 40):
        path.write_bytes(damaged)
        assert cache_load("acts", key) is None
    path.write_bytes(good)
    assert cache_load("acts", key) is not None
    path.rename(path.with_name(f"{other}.safetensors"))  # an entry under another key is not served
    assert cache_load("acts", other) is None
    from safetensors.torch import save_file

    save_file({"f": torch.ones(2)}, str(path))  # a safetensors file the cache did not write
    assert cache_load("acts", key) is None


def _check_fallback(caplog: pytest.LogCaptureFixture, where: Path) -> None:
    caplog.set_level(logging.WARNING, logger=cache.__name__)
    assert writable_cache_dir("acts") is None
    assert cache_store("acts", cache_key(a=1), {"f": torch.ones(3)}, {"a": 1}) is None  # no exception
    assert cache_store("acts", cache_key(a=2), {"f": torch.ones(3)}, {"a": 2}) is None
    assert cache_load("acts", cache_key(a=1)) is None
    lines = _warnings(caplog)
    assert len(lines) == 1, lines  # once per process, not once per entry
    assert str(where) in lines[0] and "running without a cache" in lines[0] and "\n" not in lines[0]


def test_a_cache_path_under_a_file_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    monkeypatch.setenv("BLINDSPOT_CACHE", str(blocker / "c"))
    _check_fallback(caplog, blocker / "c")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_cache_folder_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        monkeypatch.setenv("BLINDSPOT_CACHE", str(ro / "c"))
        _check_fallback(caplog, ro / "c")
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a Linux /proc")
def test_a_cache_on_a_read_only_file_system_falls_back(monkeypatch, caplog):
    monkeypatch.setenv("BLINDSPOT_CACHE", "/proc/self/blindspot-cache")  # not writable, even for root
    _check_fallback(caplog, Path("/proc/self/blindspot-cache"))


def test_a_write_failing_midway_turns_the_cache_off(isolated_cache, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger=cache.__name__)

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "save_file", disk_full)
    assert cache_store("acts", cache_key(a=1), {"f": torch.ones(3)}, {"a": 1}) is None
    lines = _warnings(caplog)
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert not list((isolated_cache / "acts").iterdir())  # no temp file left behind


def test_the_fallback_warning_is_one_line_on_stderr_in_a_fresh_process(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    code = textwrap.dedent(
        """
        import torch
        from engines.core.cache import cache_load, cache_store
        for i in range(3):
            assert cache_store("acts", f"k{i}", {"f": torch.ones(2)}, {}) is None
            assert cache_load("acts", f"k{i}") is None
        print("done")
        """
    )
    env = os.environ | {"BLINDSPOT_CACHE": str(blocker / "c")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "done"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: cache folder") and "Traceback" not in res.stderr


def test_cache_dir_never_touches_the_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDSPOT_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    monkeypatch.delenv("BLINDSPOT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "blindspot"


def test_units_activations_run_without_a_cache(tmp_path, monkeypatch, caplog):
    """The engine that caches (units) still computes, the same numbers, when the cache cannot be written."""
    import numpy as np

    from engines.core.checkpoint import load_checkpoint
    from engines.core.data import Dataset, sample_data_dir
    from engines.units.activations import layer_activations

    caplog.set_level(logging.WARNING, logger=cache.__name__)
    loaded = load_checkpoint(sample_data_dir() / "models" / "softmax1.safetensors")
    gen = torch.Generator().manual_seed(0)
    data = Dataset(torch.rand(8, 1, 28, 28, generator=gen), torch.arange(8) % 10, "toy", np.arange(8))
    layer = next(name for name, _ in loaded.model.named_children())
    monkeypatch.setenv("BLINDSPOT_CACHE", str(tmp_path / "c"))
    cached = layer_activations(loaded, layer, data)
    blocker = tmp_path / "f"
    blocker.write_text("x")
    monkeypatch.setenv("BLINDSPOT_CACHE", str(blocker / "c"))
    first = layer_activations(loaded, layer, data)
    second = layer_activations(loaded, layer, data)
    assert not first.cached and not second.cached
    assert torch.equal(first.features, cached.features) and torch.equal(second.features, cached.features)
    assert len(_warnings(caplog)) == 1


WRITER = textwrap.dedent(
    """
    import sys, torch
    from engines.core.cache import cache_store
    me = int(sys.argv[1])
    for i in range(int(sys.argv[2])):
        value = me * 1000 + i
        cache_store("race", "samekey", {"a": torch.full((20000,), float(value)), "b": torch.full((7,), float(value))},
                    {"writer": me, "value": value})
    """
)


def test_two_processes_writing_one_entry_never_corrupt_it(isolated_cache):
    env = os.environ | {"BLINDSPOT_CACHE": str(isolated_cache)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(me), "200"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for me in (1, 2)
    ]
    seen = 0
    while any(p.poll() is None for p in procs):  # read while they write: every entry seen must be whole
        hit = cache_load("race", "samekey")
        if hit is not None:
            tensors, parts = hit
            assert torch.all(tensors["a"] == parts["value"]) and torch.all(tensors["b"] == parts["value"])
            seen += 1
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    tensors, parts = cache_load("race", "samekey")
    assert parts["value"] in (1199, 2199)  # the last write of one writer, whole
    assert torch.all(tensors["a"] == parts["value"]) and torch.all(tensors["b"] == parts["value"])
    assert not list((isolated_cache / "race").glob("*.tmp"))
    assert seen > 0
