"""Shared fixtures: tiny MNIST-format folders, an isolated cache, CLI runner."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from blindspot.cli import main

torch.set_num_threads(1)  # tiny problems: threads only add contention

try:  # the workbench's tests need Textual; a bare GPU machine has none, and `pytest -m gpu` must still run there
    import textual  # noqa: F401
except ImportError:
    collect_ignore = ["tui"]

# The paper's model ids (Tables 1 and 3), in the order the zoo lists them.
PAPER_IDS = [
    "softmax1",
    "softmax2",
    "softmax3",
    "n100-100-10",
    "n200-200-10",
    "ae400-10",
    "conv",
    "m1",
    "m1-prime",
    "m2",
]


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = False) -> Path:
    """Write an IDX file (big-endian header + uint8 data)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (0x803 if array.ndim == 3 else 0x801)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist_dir(folder: Path, n_train: int = 200, n_test: int = 100, seed: int = 0, compress: bool = True) -> Path:
    """A small, learnable MNIST-format data set: each class lights its own block of pixels."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""

    def images(labels: np.ndarray) -> np.ndarray:
        x = rng.integers(0, 60, size=(len(labels), 28, 28))
        for i, lab in enumerate(labels):
            r, c = divmod(int(lab), 5)
            x[i, 4 + r * 10 : 12 + r * 10, 2 + c * 5 : 6 + c * 5] = 255
        return x.astype(np.uint8)

    ytr = rng.integers(0, 10, n_train)
    yte = rng.integers(0, 10, n_test)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images(ytr), compress=compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", ytr, compress=compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images(yte), compress=compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", yte, compress=compress)
    return folder


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return make_mnist_dir(tmp_path / "mnist")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BLINDSPOT_CACHE", str(cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))  # never the user's settings
    return cache


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `blindspot ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # only this command's output: not what engine calls before it printed
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU-only tests skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
