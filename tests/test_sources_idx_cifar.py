"""Data sources over IDX and CIFAR: load_split's tensors, the binary records byte for byte, lazy reads, classes
files, and the pickled distribution refused, on small data made here."""

from __future__ import annotations

import pickle
import resource

import numpy as np
import pytest
import torch
from PIL import Image

from engines.core.data import dataset_identity, load_split, paper_split
from engines.core.errors import DataError
from engines.core.sources import DataRef, open_data
from tests.conftest import make_mnist_dir
from tests.shapes import CIFAR10_NAMES, write_cifar_binary


def _open(path, split="test", **kw):
    return open_data(DataRef(path=str(path), **kw), split)


def _all(source, **kw):
    return source.take(0, None, **kw)


# ------------------------------------------------------------------------------------------------ batches


def test_batches_of_idx_and_cifar_match_take(tmp_path, tiny_mnist):
    c10 = write_cifar_binary(tmp_path, 25, 5)
    for src in (_open(tiny_mnist, "p1"), _open(c10, "train"), _open(tiny_mnist, image_size=14, channels=3)):
        whole = src.take(1, None)
        parts = list(src.batches(1, None, 7))
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
        assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
        assert np.array_equal(np.concatenate([p.indices for p in parts]), whole.indices)


# ---------------------------------------------------------------------------------------------------- IDX


def test_idx_wrapper_returns_exactly_load_splits_tensors(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n_train=60, n_test=20)
    for split in ("train", "test", "p1", "p2"):
        src = _open(folder, split)
        expected = load_split(split, folder)
        assert len(src) == len(expected)
        got = src.take(3, 9)
        ref = expected.subset(3, 9)
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels)
        assert np.array_equal(got.indices, ref.indices) and got.files is None and got.name == split
    src = _open(folder, "test")
    assert src.identity() == {**dataset_identity(folder), "kind": "idx", "split": "test"}
    assert src.image_shape == (1, 28, 28) and src.num_classes == 10


def test_idx_can_be_fed_to_an_rgb_model_of_another_size(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    src = _open(folder, image_size=32, channels=3)
    data = src.take(0, 4)
    assert data.images.shape == (4, 3, 32, 32) and src.image_shape == (3, 32, 32)
    ref = load_split("test", folder).subset(0, 4)
    assert torch.equal(data.labels, ref.labels)
    assert torch.equal(data.images[:, 0], data.images[:, 1]) and torch.equal(data.images[:, 0], data.images[:, 2])
    expected = Image.fromarray(np.rint(ref.images[0, 0].numpy() * 255).astype(np.uint8)).resize(
        (32, 32), Image.BILINEAR
    )
    assert torch.equal(data.images[0, 0], torch.from_numpy(np.asarray(expected).astype(np.float32) / 255.0))
    ident = src.identity()
    assert ident["image_shape"] == [3, 32, 32] and ident["resized_from"] == [1, 28, 28]


# -------------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_bytes_round_trip_exactly(tmp_path, hundred):
    folder = write_cifar_binary(tmp_path, 25, 6, hundred=hundred)
    record = 3074 if hundred else 3073
    train = _open(folder, "train")
    assert len(train) == 25 and train.num_classes == (100 if hundred else 10)
    # record 7 of the training set: in data_batch_2.bin (5 records each) for CIFAR-10, train.bin for CIFAR-100
    path, local = (folder / "train.bin", 7) if hundred else (folder / "data_batch_2.bin", 2)
    raw = path.read_bytes()[local * record : (local + 1) * record]
    data = train.take(7, 1)
    c, y, x = 2, 5, 17
    assert float(data.images[0, c, y, x]) == np.float32(raw[record - 3072 + c * 1024 + y * 32 + x]) / np.float32(255)
    assert data.images[0].mul(255).round().to(torch.uint8).flatten().tolist() == list(raw[record - 3072 :])
    assert int(data.labels[0]) == raw[1 if hundred else 0]
    assert data.indices.tolist() == [7] and data.files is None
    test = _open(folder, "test").take(5, 1)
    raw_test = (folder / ("test.bin" if hundred else "test_batch.bin")).read_bytes()[5 * record : 6 * record]
    assert int(test.labels[0]) == raw_test[1 if hundred else 0]
    names = train.class_names
    assert names == ([f"fine{k:02d}" for k in range(100)] if hundred else list(CIFAR10_NAMES))
    p1, p2 = _open(folder, "p1"), _open(folder, "p2")
    h1, h2 = paper_split(25)
    assert np.array_equal(_all(p1).indices, h1) and np.array_equal(_all(p2).indices, h2)


def test_cifar_identity_is_md5_of_the_files(tmp_path):
    folder = write_cifar_binary(tmp_path, 10, 4)
    ident = _open(folder, "test").identity()
    assert ident["kind"] == "cifar10" and ident["split"] == "test" and ident["image_shape"] == [3, 32, 32]
    assert set(ident["md5s"]) == {"test_batch.bin"} and len(ident["md5s"]["test_batch.bin"]) == 32
    assert set(_open(folder, "train").identity()["md5s"]) == {f"data_batch_{i}.bin" for i in range(1, 6)}


def test_cifar_is_read_lazily(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        with open(folder / name, "wb") as fh:  # 10,000 sparse records: 30 MB each, nothing on disk
            fh.truncate(10000 * 3073)
    src = _open(folder, "train")
    assert len(src) == 50000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = src.take(49990, 10)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert data.images.shape == (10, 3, 32, 32) and int(data.labels.sum()) == 0
    assert grown_mb < 50  # the 150 MB were not read


def test_cifar_errors(tmp_path):
    folder = write_cifar_binary(tmp_path / "a", 10, 4)
    with open(folder / "test_batch.bin", "ab") as fh:
        fh.write(b"\x00" * 100)
    with pytest.raises(DataError, match=r"test_batch.bin: .* not a whole number of 3073-byte"):
        _open(folder, "test")
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="missing data_batch_3.bin"):
        _open(folder, "train")
    bad = write_cifar_binary(tmp_path / "b", 10, 2)
    raw = bytearray((bad / "test_batch.bin").read_bytes())
    raw[3073] = 12  # record 1's label
    (bad / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"record 1 has label 12"):
        _open(bad).take(0, 2)


class _Tripwire:
    """Unpickling this writes a file: the test checks it never appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "."])
def test_pickled_cifar_is_refused_without_unpickling(tmp_path, layout):
    folder = tmp_path / "root" / layout
    folder.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(_Tripwire(str(marker))))
    with pytest.raises(DataError, match="binary version") as err:
        _open(tmp_path / "root")
    assert "\n" not in str(err.value) and "never unpickles" in str(err.value)
    assert not marker.exists()


def test_classes_file_with_cifar_and_idx(tmp_path, tiny_mnist):
    folder = write_cifar_binary(tmp_path, 10, 8)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(reversed(CIFAR10_NAMES)) + "\nextra\n")
    plain, mapped = _open(folder).take(0, 8), _open(folder, classes_file=str(classes)).take(0, 8)
    assert torch.equal(mapped.images, plain.images)
    assert (mapped.labels == 9 - plain.labels).all()
    short = tmp_path / "short.txt"
    short.write_text("zero\none\n")
    with pytest.raises(DataError, match="lists 2 classes but this IDX data has 10"):
        _open(tiny_mnist, classes_file=str(short))
    short.write_text("airplane\n")
    with pytest.raises(DataError, match="CIFAR-10 class 'automobile' is not in classes file"):
        _open(folder, classes_file=str(short))
