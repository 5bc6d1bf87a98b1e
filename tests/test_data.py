import gzip

import numpy as np
import pytest

from engines.core.data import load_split, mnist_files, paper_split, read_idx
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
