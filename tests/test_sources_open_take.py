"""Data sources opened and taken: detection of each kind, DataRef, the take order, decoding and batches, on small
data made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import engines.core.image_files as image_files
from engines.core.errors import DataError, InputError
from engines.core.sources import ORDER_SEED, DataRef, interleaved_order, open_data
from tests.shapes import make_labels_csv_folder, make_shapes_folder, save_image, shape_image, write_cifar_binary


def _open(path, split="test", **kw):
    return open_data(DataRef(path=str(path), **kw), split)


def _all(source, **kw):
    return source.take(0, None, **kw)


# ---------------------------------------------------------------------------------------------- detection


def test_each_kind_is_detected(tmp_path, tiny_mnist):
    shapes = make_shapes_folder(tmp_path / "shapes", classes=3, per_class=2, size=8)
    flat = make_labels_csv_folder(tmp_path / "flat", n=4, size=8)
    c10 = write_cifar_binary(tmp_path / "c10", 10, 4)
    c100 = write_cifar_binary(tmp_path / "c100", 6, 3, hundred=True)
    assert _open(tiny_mnist).kind == "idx"
    assert open_data(DataRef()).kind == "idx"  # the shipped MNIST
    assert _open(shapes).kind == "imagefolder"
    assert _open(flat).kind == "csv"
    for path in (c10, c10.parent):  # the extracted folder or its parent
        src = _open(path, "train")
        assert (src.kind, src.root, len(src), src.name) == ("cifar10", c10, 10, "CIFAR-10")
    for path in (c100, c100.parent):
        src = _open(path)
        assert (src.kind, len(src), src.num_classes, src.image_shape) == ("cifar100", 3, 100, (3, 32, 32))


def test_missing_and_unrecognisable_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        _open(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="nothing recognisable") as err:
        _open(tmp_path / "junk")
    msg = str(err.value)
    assert "\n" not in msg and "IDX" in msg and "CIFAR" in msg and "labels.csv" in msg and "class subfolders" in msg
    loose = tmp_path / "loose"
    save_image(shape_image(0, np.random.default_rng(0), 8), loose / "a.png")
    with pytest.raises(DataError, match="holds 1 images but no labels.csv"):
        _open(loose)
    with pytest.raises(DataError, match="is a file"):
        _open(loose / "a.png")


# -------------------------------------------------------------------------------------------------- order


def test_folder_order_is_seeded_stable_and_deals_out_the_classes(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=4, per_class=10, size=8)
    a, b = _open(root), _open(root)
    first = a.take(0, 8)
    assert np.array_equal(first.indices, b.take(0, 8).indices)
    assert first.files == b.take(0, 8).files
    assert sorted(first.labels[:4].tolist()) == [0, 1, 2, 3]  # the first four: one of each class
    assert sorted(first.labels[4:].tolist()) == [0, 1, 2, 3]
    # indices are positions in the sorted listing of relative paths
    listing = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    assert [listing[i] for i in first.indices] == list(first.files)
    whole = _all(a)
    assert sorted(whole.indices.tolist()) == list(range(40))  # a permutation
    assert whole.indices.tolist() != list(range(40))  # ... not the listing's own order
    assert a.identity()["order_seed"] == ORDER_SEED


def test_interleaved_order_with_uneven_classes():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 3)
    order = interleaved_order(labels)
    assert sorted(order.tolist()) == list(range(12))
    dealt = labels[order]
    assert sorted(dealt[:3].tolist()) == [0, 1, 2] and sorted(dealt[3:6].tolist()) == [0, 1, 2]
    assert sorted(dealt[6:8].tolist()) == [0, 2] and dealt[8:].tolist() == [0, 0, 0, 0]
    assert np.array_equal(order, interleaved_order(labels))
    assert not np.array_equal(order, interleaved_order(labels, seed=ORDER_SEED + 1))


# ---------------------------------------------------------------------------------------------- decoding


def test_take_decodes_only_the_images_it_takes(tmp_path, monkeypatch):
    root = make_shapes_folder(tmp_path / "d", classes=4, per_class=50, size=8, formats=("png",))
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    src = _open(root, image_size=8)
    assert len(src) == 200 and opened == []  # opening lists, it does not decode
    data = src.take(10, 5)
    assert len(opened) == 5 and sorted(opened) == sorted(str(root / f) for f in data.files)
    opened.clear()
    own = _open(root)  # the data's own size: one header probe, then the five
    own.take(0, 5)
    assert len(opened) == 6


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_yield_what_take_gives(tmp_path, workers):
    root = make_shapes_folder(tmp_path / "d", classes=3, per_class=7, size=8)
    src = _open(root, split="train")
    whole = src.take(2, 17)
    parts = list(src.batches(2, 17, 5, num_workers=workers))
    assert [len(p) for p in parts] == [5, 5, 5, 2]
    assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    assert np.array_equal(np.concatenate([p.indices for p in parts]), whole.indices)
    assert sum((p.files for p in parts), ()) == whole.files


def test_resize_and_centre_crop_match_torchvision(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(1)
    for k, size in enumerate([(40, 30), (30, 52), (24, 24)]):  # landscape, portrait, square
        save_image(shape_image(k, rng, size), root / f"c{k}" / "a.png")
    src = _open(root, image_size=24)
    assert src.image_shape == (3, 24, 24)
    data = _all(src)
    reference = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24), transforms.PILToTensor()])
    for img, rel in zip(data.images, data.files, strict=True):
        with Image.open(root / rel) as pil:
            expected = reference(pil.convert("RGB")).float() / 255.0
        assert torch.equal(img, expected), rel
    grey = _all(_open(root, image_size=10, channels=1))
    assert grey.images.shape == (3, 1, 10, 10)


def test_images_of_different_sizes_need_an_image_size(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    save_image(shape_image(0, rng, 32), root / "a" / "small.png")
    save_image(shape_image(1, rng, 40), root / "b" / "large.png")
    src = _open(root)
    with pytest.raises(DataError, match="--image-size") as err:
        _all(src)
    assert "small.png" in str(err.value) and "large.png" in str(err.value) and "\n" not in str(err.value)
    assert _all(_open(root, image_size=16)).images.shape == (2, 3, 16, 16)


def test_rgb_and_grey_decoding(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=2, size=12, formats=("png",))
    rgb, grey = _all(_open(root)), _all(_open(root, channels=1))
    assert rgb.images.shape == (4, 3, 12, 12) and grey.images.shape == (4, 1, 12, 12)
    assert rgb.images.dtype == torch.float32 and float(rgb.images.min()) >= 0 and float(rgb.images.max()) <= 1
    for i, rel in enumerate(rgb.files):
        with Image.open(root / rel) as pil:
            px = np.asarray(pil.convert("RGB"))
        assert torch.equal(rgb.images[i], torch.from_numpy(px.transpose(2, 0, 1).astype(np.float32) / 255.0))
        r, g, b = (px[..., c].astype(np.int64) for c in range(3))
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # Pillow's ITU-R 601-2 "L", fixed point
        assert torch.equal(grey.images[i, 0], torch.from_numpy(luma.astype(np.float32) / 255.0))


# ------------------------------------------------------------------------------------- DataRef and arrays


def test_data_ref_round_trips_and_checks_its_values():
    ref = DataRef(path="/data/x", image_size=224, channels=3, classes_file="c.txt")
    assert DataRef.from_json(ref.to_json()) == ref
    assert DataRef.from_json({**ref.to_json(), "future": 1}) == ref
    assert DataRef.from_json(None) == DataRef()
    with pytest.raises(InputError):
        DataRef(channels=2)
    with pytest.raises(InputError):
        DataRef(image_size=0)
    with pytest.raises(DataError, match="unknown split"):
        open_data(DataRef(), "validation")


def test_fit_array_keeps_arrays_of_the_right_shape():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)[:1]
    assert image_files.fit_array(a, 1, None) is a
    assert image_files.fit_array(a, 3, None).shape == (3, 3, 4)
