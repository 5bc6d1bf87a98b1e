import gzip
import json
import math
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.core.data import (
    data_fingerprint,
    dataset_identity,
    dataset_name,
    load_split,
    mnist_files,
    paper_split,
    read_idx,
)
from engines.core.errors import DataError
from tests.conftest import make_mnist_dir, write_idx


def test_read_idx_raw_and_gzip_agree(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "a-idx3-ubyte", arr)
    gz = write_idx(tmp_path / "b-idx3-ubyte.gz", arr, compress=True)
    assert np.array_equal(read_idx(raw), arr)
    assert np.array_equal(read_idx(gz), arr)


def test_wrong_magic_is_refused(tmp_path):
    p = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 3, 3)), magic=0x00000A03)
    with pytest.raises(DataError, match="wrong magic"):
        read_idx(p)


def test_truncated_body_is_refused(tmp_path):
    p = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5)))
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_truncated_header_and_tiny_file(tmp_path):
    p = tmp_path / "short"
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(p)


def test_corrupt_gzip_is_refused(tmp_path):
    p = tmp_path / "x-idx1-ubyte.gz"
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError):
        read_idx(p)


def test_count_mismatch_between_images_and_labels(tmp_path):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(9), compress=True)
    with pytest.raises(DataError, match="10 images but"):
        load_split("test", d)


def test_pixels_scaled_to_unit_interval(tiny_mnist):
    ds = load_split("test", tiny_mnist)
    assert ds.images.shape == (100, 1, 28, 28)
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) == 1.0
    assert ds.labels.dtype.is_floating_point is False


def test_torchvision_raw_layout_and_uncompressed_files(tmp_path):
    make_mnist_dir(tmp_path / "root" / "MNIST" / "raw", compress=False)
    files = mnist_files(tmp_path / "root")
    assert all("MNIST/raw" in str(p) for p in files.values())
    assert len(load_split("train", tmp_path / "root")) == 200


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as info:
        load_split("test", tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and "\n" not in msg


def test_paper_split_is_disjoint_and_covers_training_set():
    p1, p2 = paper_split(60000)
    assert len(p1) == len(p2) == 30000
    assert len(np.intersect1d(p1, p2)) == 0
    assert np.array_equal(np.union1d(p1, p2), np.arange(60000))
    q1, _ = paper_split(60000)
    assert np.array_equal(p1, q1)
    r1, _ = paper_split(60000, seed=1)
    assert not np.array_equal(p1, r1)


def test_shipped_mnist_has_the_paper_sizes():
    assert len(load_split("train")) == 60000
    assert len(load_split("test")) == 10000
    assert len(load_split("p1")) == len(load_split("p2")) == 30000


def test_subset_bounds_are_checked(tiny_mnist):
    ds = load_split("test", tiny_mnist)
    assert len(ds.subset(10, 5)) == 5
    with pytest.raises(DataError):
        ds.subset(98, 5)


# --- issue 12: labels, shapes, layouts, identity (items 6 and 10) ---------------------------------------


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("bad", [11, 255])
def test_labels_outside_the_ten_classes_are_refused(tmp_path, bad):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    labels = np.arange(20) % 10
    labels[7] = bad
    write_idx(d / "train-labels-idx1-ubyte.gz", labels, compress=True)
    with pytest.raises(DataError) as info:
        load_split("train", d)
    msg = _one_line(info)
    assert "train-labels-idx1-ubyte.gz" in msg and f"label {bad} at index 7" in msg and "0..9" in msg
    with pytest.raises(DataError):  # p1/p2 come from the same file: refused too
        load_split("p1", d)
    assert len(load_split("test", d)) == 10  # the test file is fine on its own


@pytest.mark.parametrize("bad", [11, 255])
def test_data_check_refuses_bad_labels_in_one_line(cli, tmp_path, bad):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.full(10, bad), compress=True)
    rc, out, err = cli("data", "check", "--data", str(d))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"label {bad}" in err and "t10k-labels" in err


def _images(n: int, side: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, side, side)).astype(np.uint8)


def test_test_images_of_another_shape_are_refused_naming_both_files(cli, tmp_path):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    write_idx(d / "t10k-images-idx3-ubyte.gz", _images(10, 32), compress=True)
    for split in ("train", "test", "p2"):  # every loader: train would otherwise fail only at the end
        with pytest.raises(DataError) as info:
            load_split(split, d)
        msg = _one_line(info)
        assert "train-images-idx3-ubyte.gz" in msg and "t10k-images-idx3-ubyte.gz" in msg
        assert "28×28" in msg and "32×32" in msg
    rc, out, err = cli("data", "check", "--data", str(d))
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "32×32" in err


def test_a_consistent_other_image_size_is_accepted_and_reported(tmp_path):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    write_idx(d / "train-images-idx3-ubyte.gz", _images(20, 32), compress=True)
    write_idx(d / "t10k-images-idx3-ubyte.gz", _images(10, 32), compress=True)
    assert load_split("test", d).images.shape == (10, 1, 32, 32)
    assert dataset_identity(d)["image_shape"] == [1, 32, 32]


def test_empty_and_wrong_kind_files_are_refused(tmp_path):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)), compress=True)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(0), compress=True)
    with pytest.raises(DataError, match="no image data"):
        load_split("test", d)
    e = make_mnist_dir(tmp_path / "e", n_train=20, n_test=10)
    write_idx(e / "t10k-images-idx3-ubyte.gz", np.zeros(10), compress=True)  # a labels file under an image name
    with pytest.raises(DataError, match="expected an image file"):
        load_split("train", e)


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "KMNIST/raw", "MNIST/raw", "raw"])
def test_torchvision_layouts_are_found(tmp_path, layout):
    make_mnist_dir(tmp_path / "root" / layout, n_train=20, n_test=10)
    files = mnist_files(tmp_path / "root")
    assert all(str(p.parent).endswith(layout) for p in files.values())
    assert len(load_split("test", tmp_path / "root")) == 10


def test_files_of_one_set_are_never_mixed_across_folders(tmp_path):
    root = tmp_path / "root"
    make_mnist_dir(root / "FashionMNIST" / "raw", n_train=20, n_test=10)
    write_idx(root / "train-images-idx3-ubyte.gz", _images(5, 28), compress=True)  # a stray file in the root
    files = mnist_files(root)
    assert {p.parent for p in files.values()} == {root / "FashionMNIST" / "raw"}
    (root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:  # no complete set anywhere: say which folder lacks what
        mnist_files(root)
    msg = _one_line(info)
    assert "incomplete data in" in msg and "train-labels-idx1-ubyte" in msg


def test_emnist_split_is_found_with_its_own_class_count(tmp_path):
    raw = tmp_path / "root" / "EMNIST" / "raw"
    ytr, yte = np.arange(30) % 27, np.arange(10) + 1
    write_idx(raw / "emnist-letters-train-images-idx3-ubyte", _images(30, 28))
    write_idx(raw / "emnist-letters-train-labels-idx1-ubyte", ytr)
    write_idx(raw / "emnist-letters-test-images-idx3-ubyte", _images(10, 28))
    write_idx(raw / "emnist-letters-test-labels-idx1-ubyte", yte)
    ds = load_split("train", tmp_path / "root")
    assert int(ds.labels.max()) == 26  # letters are labelled 1..26: K = 27, not refused as > 9
    ident = dataset_identity(tmp_path / "root")
    assert ident["classes"] == 27 and ident["name"] == "IDX data"
    write_idx(raw / "emnist-letters-train-labels-idx1-ubyte", np.full(30, 27))
    with pytest.raises(DataError, match="label 27 at index 0 is outside 0..26"):
        load_split("train", tmp_path / "root")


def test_several_sets_in_one_folder_are_refused_not_guessed(tmp_path):
    raw = tmp_path / "root" / "EMNIST" / "raw"
    for split in ("balanced", "digits"):
        for part, n in (("train", 20), ("test", 10)):
            write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", _images(n, 28))
            write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", np.arange(n) % 10)
    with pytest.raises(DataError) as info:
        load_split("test", tmp_path / "root")
    msg = _one_line(info)
    assert "several" in msg and "emnist-balanced" in msg and "emnist-digits" in msg


def test_identity_names_mnist_only_for_the_published_files(tiny_mnist):
    ident = dataset_identity(tiny_mnist)
    assert ident["name"] == "IDX data" and ident["classes"] == 10 and ident["image_shape"] == [1, 28, 28]
    assert ident["md5s"] == data_fingerprint(tiny_mnist) and set(ident["md5s"]) == {
        "train-images",
        "train-labels",
        "test-images",
        "test-labels",
    }
    shipped = dataset_identity(None)
    assert shipped["name"] == "MNIST" and shipped["md5s"]["train-images"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    gunzipped = {  # the same files as torchvision leaves them, uncompressed, in MNIST/raw
        "train-images": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels": "a25bea736e30d166cdddb491f175f624",
        "test-images": "2646ac647ad5339dbf082846283269ea",
        "test-labels": "27ae3e4e09519cfbb04c329615203637",
    }
    assert dataset_name(gunzipped) == "MNIST"
    assert dataset_name(gunzipped | {"test-labels": "0" * 32}) == "IDX data"  # one file changed: not MNIST
    fashion = {
        "train-images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels": "25c81989df183df01b3e8a0aad5dffbe",
        "test-images": "bef4ecab320f06d8554ea6380940ec79",
        "test-labels": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert dataset_name(fashion) == "FashionMNIST"


def test_data_check_names_other_idx_data_and_prints_its_table_on_stdout(cli, tmp_path):
    root = tmp_path / "root"
    make_mnist_dir(root / "FashionMNIST" / "raw", n_train=20, n_test=10)
    rc, out, err = cli("data", "check", "--data", str(root))
    assert rc == 0 and "MNIST in" not in out + err
    assert "IDX data in" in out and "t10k-labels-idx1-ubyte.gz" in out and "p2" in out
    rc, out, _ = cli("data", "check", "--data", str(root), "--json")
    report = json.loads(out)
    assert rc == 0 and report["name"] == "IDX data" and report["classes"] == 10
    assert report["counts"] == {"train": 20, "test": 10, "p1": 10, "p2": 10}
    assert report["md5"] == data_fingerprint(root)


def test_a_replaced_file_is_read_again_in_the_same_process(tmp_path):
    d = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10)
    first = load_split("test", d).labels.clone()
    path = d / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, (first.numpy() + 1) % 10, compress=True)
    os.utime(path, ns=(1, 1))  # a different stamp even on a coarse clock
    assert torch.equal(load_split("test", d).labels, (first + 1) % 10)


# --- property tests for the IDX parser: a one-line DataError or the right array, never anything else ----

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def idx_files(draw: st.DrawFn) -> bytes:
    ndim = draw(st.sampled_from([1, 3]))
    dims = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
    data = draw(st.binary(min_size=math.prod(dims), max_size=math.prod(dims)))
    header = struct.pack(">I", 0x800 + ndim) + b"".join(struct.pack(">I", d) for d in dims)
    return header + data


def _reference(raw: bytes) -> np.ndarray | None:
    """What a correct parser returns for these bytes, or None where it must refuse them."""
    if len(raw) < 8 or raw[:3] != b"\x00\x00\x08" or raw[3] not in (1, 3):
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        return None
    try:
        return np.frombuffer(body, dtype=np.uint8).reshape(dims)
    except ValueError:  # a zero dimension beside absurd ones: no array has that shape
        return None


def _parse(tmp_path, raw: bytes, gz: bool) -> np.ndarray | str:
    path = tmp_path / ("f-idx-ubyte.gz" if gz else "f-idx-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    try:
        return read_idx(path)
    except DataError as exc:
        assert "\n" not in str(exc) and str(exc)
        return str(exc)


def _check(result: np.ndarray | str, raw: bytes) -> None:
    expected = _reference(raw)
    if expected is None:
        assert isinstance(result, str)
    else:
        assert isinstance(result, np.ndarray) and result.shape == expected.shape and np.array_equal(result, expected)


@PROPS
@given(raw=idx_files(), cut=st.integers(0, 10_000), gz=st.booleans())
def test_read_idx_on_truncated_files(tmp_path, raw, cut, gz):
    cut = cut % (len(raw) + 1)
    result = _parse(tmp_path, raw[:cut], gz)
    _check(result, raw[:cut])
    if cut == len(raw):
        assert isinstance(result, np.ndarray)


@PROPS
@given(raw=idx_files(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_read_idx_on_flipped_bytes(tmp_path, raw, flips):
    data = bytearray(raw)
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    _check(_parse(tmp_path, bytes(data), gz=False), bytes(data))


@PROPS
@given(raw=idx_files(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=3))
def test_read_idx_on_damaged_gzip(tmp_path, raw, flips):
    packed = bytearray(gzip.compress(raw))
    for pos, mask in flips:
        packed[pos % len(packed)] ^= mask
    path = tmp_path / "f-idx-ubyte.gz"
    path.write_bytes(bytes(packed))
    try:
        result = read_idx(path)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    try:  # the damage left a readable stream: the array must be what those bytes say
        unpacked = gzip.decompress(bytes(packed))
    except Exception:  # noqa: BLE001 - stdlib disagreeing on a stream we accepted would fail the check below
        unpacked = b""
    _check(result, unpacked)


@PROPS
@given(garbage=st.binary(max_size=300), gz=st.booleans(), raw_gz=st.booleans())
def test_read_idx_on_garbage(tmp_path, garbage, gz, raw_gz):
    if raw_gz:  # garbage behind a .gz name, not compressed
        path = tmp_path / "g-idx-ubyte.gz"
        path.write_bytes(garbage)
        with pytest.raises(DataError) as info:
            read_idx(path)
        assert "\n" not in str(info.value)
        return
    _check(_parse(tmp_path, garbage, gz), garbage)


def test_a_header_whose_size_overflows_64_bits_is_refused(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(struct.pack(">IIII", 0x803, 2**31, 2**31, 4))  # 2**64 bytes announced: 0 in int64 arithmetic
    with pytest.raises(DataError, match="header announces"):
        read_idx(p)
