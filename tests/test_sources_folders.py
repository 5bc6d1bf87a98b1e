"""Data sources over image folders and labels.csv: classes, classes files, listing errors, split layouts and
identity, on small data made here."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from engines.core.data import paper_split
from engines.core.errors import DataError
from engines.core.sources import DataRef, open_data
from tests.shapes import make_labels_csv_folder, make_shapes_folder, save_image, shape_image


def _open(path, split="test", **kw):
    return open_data(DataRef(path=str(path), **kw), split)


def _all(source, **kw):
    return source.take(0, None, **kw)


# ------------------------------------------------------------------------------------------ class folders


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


def test_identity_is_cheap_for_a_large_listing(tmp_path, monkeypatch):
    """Opening a folder and its identity list and stat the files: no image file is opened, read or decoded."""
    import builtins
    import io

    import engines.core.sources.folders as folders

    root = tmp_path / "big"
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(1500):
            (root / f"c{k}" / f"{i:05d}.png").write_bytes(b"x")  # not an image: reading one would fail anyway
    opened: list[str] = []

    def watching(real):
        def open_(file, *args, **kwargs):
            opened.append(str(file))
            return real(file, *args, **kwargs)

        return open_

    def never(*args, **kwargs):
        raise AssertionError("an image was read to open the folder or to say its identity")

    monkeypatch.setattr(builtins, "open", watching(builtins.open))
    monkeypatch.setattr(io, "open", watching(io.open))
    monkeypatch.setattr(folders, "decode_file", never)
    monkeypatch.setattr(folders, "image_header_size", never)
    src = _open(root, image_size=8)
    ident = src.identity()
    assert len(src) == 3000 and ident["images"] == 3000
    assert not [f for f in opened if f.endswith(".png")]
