"""Data sources: detection, order, decoding, identity and the one-line errors, on small data made here."""

from __future__ import annotations

import os
import pickle
import resource

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

import engines.core.image_files as image_files
from engines.core.data import dataset_identity, load_split, paper_split
from engines.core.errors import DataError, InputError
from engines.core.sources import ORDER_SEED, DataRef, interleaved_order, open_data
from tests.conftest import make_mnist_dir
from tests.shapes import (
    CIFAR10_NAMES,
    make_labels_csv_folder,
    make_shapes_folder,
    save_image,
    shape_image,
    write_cifar_binary,
)


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


def test_classes_are_sorted_as_torchvision_imagefolder_sorts_them(tmp_path):
    names = ["zebra", "Mango", "apple", "banana_split", "banana"]
    root = make_shapes_folder(tmp_path / "d", classes=5, per_class=3, size=8, class_names=names)
    src = _open(root)
    reference = ImageFolder(str(root))
    assert src.class_names == reference.classes == sorted(names)
    assert src.num_classes == 5
    data = _all(src)
    expected = {os.path.relpath(p, root): t for p, t in reference.samples}
    assert len(data) == len(expected) == 15
    for rel, label in zip(data.files, data.labels.tolist(), strict=True):
        assert expected[rel] == label


def test_image_extensions_are_case_insensitive_and_other_files_ignored(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=3, size=8, formats=("PNG", "JpEg", "bmp"))
    (root / "circle" / "README.txt").write_text("not an image")
    (root / "circle" / ".hidden.png").write_bytes(b"junk")
    src = _open(root)
    assert len(src) == 6
    assert sorted(_all(src).files) == sorted(
        f"{c}/{p.name}"
        for c in ("circle", "square")
        for p in (root / c).iterdir()
        if p.suffix != ".txt" and not p.name.startswith(".")
    )


# ------------------------------------------------------------------------------------------ classes file


def test_classes_file_maps_wordnet_folders_to_the_models_order(tmp_path):
    wnids = ["n01440764", "n02102040", "n02979186", "n03000684"]
    root = make_shapes_folder(tmp_path / "d", classes=4, per_class=2, size=8, class_names=wnids)
    # the model's order: six classes, the folders' among them, each line "wnid description"
    model = ["n09999999 other", "n03000684 chain saw", "n01440764 tench, Tinca tinca", "n08888888 x",
             "n02979186 cassette player", "n02102040 English springer"]  # fmt: skip
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(model) + "\n\n")
    src = _open(root, classes_file=str(classes))
    assert src.num_classes == 6 and src.class_names == model
    data = _all(src)
    for rel, label in zip(data.files, data.labels.tolist(), strict=True):
        assert model[label].split()[0] == rel.split("/")[0]
    assert src.identity()["classes_file"]["classes"] == 6
    # without the file, labels are the sorted folder positions
    plain = _all(_open(root))
    assert sorted(set(plain.labels.tolist())) == [0, 1, 2, 3]


def test_classes_file_errors_name_what_is_wrong(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=3, per_class=1, size=8, class_names=["cat", "dog", "emu"])
    partial = tmp_path / "partial.txt"
    partial.write_text("dog\ncat\n")
    with pytest.raises(DataError, match=r"class folder 'emu' is not in classes file .*partial.txt"):
        _open(root, classes_file=str(partial))
    doubled = tmp_path / "doubled.txt"
    doubled.write_text("cat\ndog\nemu\ndog\n")
    with pytest.raises(DataError, match=r"'dog' is on lines 2 and 4"):
        _open(root, classes_file=str(doubled))
    holes = tmp_path / "holes.txt"
    holes.write_text("cat\n\ndog\nemu\n")
    with pytest.raises(DataError, match="line 2 is empty"):
        _open(root, classes_file=str(holes))
    with pytest.raises(DataError, match="classes file not found"):
        _open(root, classes_file=str(tmp_path / "none.txt"))


def test_a_whole_line_wins_over_another_lines_first_word(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=1, size=8, class_names=["tiger", "tiger cat"])
    classes = tmp_path / "c.txt"
    classes.write_text("tiger cat\ntiger\n")
    data = _all(_open(root, classes_file=str(classes)))
    assert dict(zip(data.files, data.labels.tolist(), strict=True)) == {"tiger/000.png": 1, "tiger cat/000.jpg": 0}


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


def test_batches_of_idx_and_cifar_match_take(tmp_path, tiny_mnist):
    c10 = write_cifar_binary(tmp_path, 25, 5)
    for src in (_open(tiny_mnist, "p1"), _open(c10, "train"), _open(tiny_mnist, image_size=14, channels=3)):
        whole = src.take(1, None)
        parts = list(src.batches(1, None, 7))
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
        assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
        assert np.array_equal(np.concatenate([p.indices for p in parts]), whole.indices)


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


# ----------------------------------------------------------------------------------------- folder errors


def test_a_corrupt_or_truncated_image_is_named(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=2, size=16, formats=("png",))
    victim = root / "square" / "001.png"
    victim.write_bytes(victim.read_bytes()[:-40])  # truncated: the header still reads
    src = _open(root, image_size=16)
    with pytest.raises(DataError, match=r"cannot decode image .*square/001.png") as err:
        _all(src)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"square/001.png"):  # one line from a worker process too
        list(src.batches(0, None, 1, num_workers=2))
    victim.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"square/001.png"):
        _all(_open(root, image_size=16))


def test_an_empty_class_folder_is_named(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=2, size=8)
    (root / "zzz_empty").mkdir()
    (root / "zzz_empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*zzz_empty holds no images"):
        _open(root)


def test_labels_csv_folder(tmp_path):
    ints = make_labels_csv_folder(tmp_path / "ints", n=9, classes=3, size=8)
    src = _open(ints)
    assert (src.kind, len(src), src.num_classes, src.class_names) == ("csv", 9, 3, None)
    data = _all(src)
    assert all(int(f[4:7]) % 3 == lab for f, lab in zip(data.files, data.labels.tolist(), strict=True))
    assert src.identity()["labels_file"] == "labels.csv"
    names = make_labels_csv_folder(
        tmp_path / "names", n=6, classes=3, size=8, names=["zebra", "ant", "mole"], header=False
    )
    src = _open(names)
    assert src.class_names == ["ant", "mole", "zebra"]
    data = _all(src)
    expected = {0: 2, 1: 0, 2: 1}  # drawn class k was named names[k]; labels follow the sorted names
    assert all(expected[int(f[4:7]) % 3] == lab for f, lab in zip(data.files, data.labels.tolist(), strict=True))
    classes = tmp_path / "classes.txt"
    classes.write_text("mole\nzebra\nant\ncow\n")
    mapped = _open(names, classes_file=str(classes))
    assert mapped.num_classes == 4
    data = _all(mapped)
    assert all(mapped.class_names[lab] == ["zebra", "ant", "mole"][int(f[4:7]) % 3]
               for f, lab in zip(data.files, data.labels.tolist(), strict=True))  # fmt: skip


def test_labels_csv_header_is_optional(tmp_path):
    root = make_labels_csv_folder(tmp_path / "d", n=4, classes=2, size=8, header=False)
    body = (root / "labels.csv").read_text()
    for header in ("", "file,label\n", "image_path,class_id\n"):
        (root / "labels.csv").write_text(header + body)
        assert len(_open(root)) == 4


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


def test_labels_csv_errors_name_the_file_and_line(tmp_path):
    root = make_labels_csv_folder(tmp_path / "d", n=4, classes=2, size=8)
    csv_path = root / "labels.csv"
    good = csv_path.read_text()
    assert good.splitlines()[1:] == ["img_000.png,0", "img_001.jpg,1", "img_002.png,0", "img_003.jpg,1"]
    csv_path.write_text(good + "img_999.png,1\n")
    with pytest.raises(DataError, match=r"labels.csv line 6: listed file img_999.png not found"):
        _open(root)
    csv_path.write_text(good + "img_001.jpg,0\n")
    with pytest.raises(DataError, match=r"line 6: img_001.jpg is listed twice \(first on line 3\)"):
        _open(root)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    csv_path.write_text(good.replace("img_003.jpg,1", "img_003.jpg,5"))
    with pytest.raises(DataError, match=r"line 5: label 5 for img_003.jpg is outside 0..1"):
        _open(root, classes_file=str(classes))
    csv_path.write_text(good.replace("img_003.jpg,1", "img_003.jpg,horse"))
    with pytest.raises(DataError, match=r"line 5: unknown class 'horse' for img_003.jpg"):
        _open(root, classes_file=str(classes))
    with pytest.raises(DataError, match="mixes integer labels and class names"):
        _open(root)
    csv_path.write_text(good.replace("img_003.jpg,1", "img_003.jpg,-1"))
    with pytest.raises(DataError, match=r"label -1 .* outside"):
        _open(root)
    csv_path.write_text(good.replace("img_003.jpg,1", "../escape.png,1"))
    with pytest.raises(DataError, match="is outside"):
        _open(root)
    csv_path.write_text("file,label\n")
    with pytest.raises(DataError, match="lists no images"):
        _open(root)


# ------------------------------------------------------------------------------------------------ splits


def test_split_layout_chooses_the_folder_and_test_falls_back_to_val(tmp_path):
    root = make_shapes_folder(
        tmp_path / "d", classes=2, per_class=6, size=8, split=True, test_per_class=3, test_dir="val"
    )
    test, train = _open(root, "test"), _open(root, "train")
    assert (len(test), len(train)) == (6, 12)
    assert all(f.startswith("val/") for f in _all(test).files)
    assert all(f.startswith("train/") for f in _all(train).files)
    assert test.identity()["layout"] == "split" and test.identity()["folder"] == "val"
    p1, p2 = _all(_open(root, "p1")), _all(_open(root, "p2"))
    h1, h2 = paper_split(12)
    assert sorted(p1.indices.tolist()) == h1.tolist() and sorted(p2.indices.tolist()) == h2.tolist()
    assert not set(p1.files) & set(p2.files) and len(set(p1.files) | set(p2.files)) == 12
    listing = sorted(_all(train).files)
    assert [listing[i] for i in p1.indices] == list(p1.files)


def test_one_folder_serves_every_split_and_says_so(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=4, size=8)
    test, train = _open(root, "test"), _open(root, "train")
    assert torch.equal(_all(test).images, _all(train).images)
    ident = test.identity()
    assert ident["layout"] == "single" and "every split" in ident["serves"]
    assert len(_open(root, "p1")) == len(_open(root, "p2")) == 4


def test_a_missing_split_folder_is_named(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=2, size=8, split=True)
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="no test/, val/ or validation/"):
        _open(root, "test")
    assert len(_open(root, "train")) == 4


# ---------------------------------------------------------------------------------------------- identity


def test_identity_is_stable_and_changes_with_the_files(tmp_path):
    root = make_shapes_folder(tmp_path / "d", classes=2, per_class=3, size=8, formats=("png",))
    first = _open(root).identity()
    assert first == _open(root).identity()
    assert first["kind"] == "imagefolder" and first["name"] == "d" and first["classes"] == 2
    assert first["image_shape"] == [3, 8, 8] and first["class_names"] == ["circle", "square"]
    target = root / "circle" / "001.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    touched = _open(root).identity()
    assert touched["fingerprint"] != first["fingerprint"]
    size = target.stat().st_size
    save_image(shape_image(1, np.random.default_rng(5), 12), target)  # replaced by another image
    assert target.stat().st_size != size
    replaced = _open(root).identity()
    assert replaced["fingerprint"] not in (first["fingerprint"], touched["fingerprint"])
    assert _open(root, "p1").identity()["split"] == "p1"


def test_identity_is_cheap_for_a_large_listing(tmp_path):
    root = tmp_path / "big"
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(1500):
            (root / f"c{k}" / f"{i:05d}.png").write_bytes(b"x")  # never decoded: listing and identity only
    import time

    t0 = time.perf_counter()
    src = _open(root, image_size=8)
    ident = src.identity()
    elapsed = time.perf_counter() - t0
    assert len(src) == 3000 and ident["images"] == 3000 and elapsed < 2.0


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
