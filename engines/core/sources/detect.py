"""open_data: the kind of data a folder holds, detected and opened, or one line naming what is missing."""

from __future__ import annotations

import os
from pathlib import Path

from engines.core.choices import SPLITS
from engines.core.data import _candidates, default_mnist_dir
from engines.core.errors import DataError
from engines.core.image_files import IMAGE_EXTENSIONS, is_image_name
from engines.core.sources.base import DataSource
from engines.core.sources.cifar import CifarSource, _find_cifar, _refuse_pickled_cifar
from engines.core.sources.classes_file import ClassesFile
from engines.core.sources.folders import FolderSource
from engines.core.sources.idx import IdxSource
from engines.core.sources.listings import LABELS_CSV, _list_class_folders, _list_csv, _subdirs
from engines.core.sources.ref import DataRef

TEST_DIRS = ("test", "val", "validation")  # what serves split "test" in a split layout, in this order
SPLIT_DIRS = ("train", *TEST_DIRS)
_LOOKED_FOR = (
    "MNIST-format IDX files (also under MNIST/raw and the like), CIFAR-10/100 binary batches "
    "(data_batch_1.bin… and test_batch.bin, or train.bin and test.bin), class subfolders of images "
    f"(ROOT/<class>/*{'|'.join(IMAGE_EXTENSIONS)}, optionally under train/ and test/ or val/), "
    f"or images listed in ROOT/{LABELS_CSV} (file,label)"
)


def _looks_idx(root: Path) -> bool:
    """Whether any IDX-looking file sits where mnist_files looks (then its errors are the ones to show)."""
    for folder in _candidates(root):
        try:
            if folder.is_dir() and any(
                any(key in e.name.lower() for key in ("ubyte", "idx1", "idx3")) and e.is_file()
                for e in os.scandir(folder)
            ):
                return True
        except OSError:
            continue
    return False


def _nothing_found(root: Path) -> DataError:
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except OSError:
        entries = []
    loose = sum(1 for e in entries if e.is_file() and is_image_name(e.name))
    archives = [e.name for e in entries if e.name.lower().endswith((".tar.gz", ".tgz", ".tar", ".zip"))]
    hint = ""
    if loose:
        hint = f" It holds {loose} images but no {LABELS_CSV}: add one (file,label per line) or sort them into class folders."
    elif archives:
        hint = f" Extract {archives[0]} first."
    return DataError(f"nothing recognisable in {root}: looked for {_LOOKED_FOR}.{hint}")


def _open_folder(ref: DataRef, split: str, root: Path, classes: ClassesFile | None) -> FolderSource:
    subdirs = _subdirs(root)
    tests = [d for d in TEST_DIRS if d in subdirs]
    split_layout = ("train" in subdirs and bool(tests)) or (
        bool(subdirs) and set(subdirs) <= set(SPLIT_DIRS) and not (root / LABELS_CSV).is_file()
    )
    if split_layout:
        if split == "test":
            if not tests:
                raise DataError(f"{root} has no test/, val/ or validation/ folder for split test (it has train/)")
            folder = root / tests[0]
        else:
            if "train" not in subdirs:
                raise DataError(f"{root} has no train/ folder for split {split} (it has {', '.join(subdirs)}/)")
            folder = root / "train"
        layout = "split"
    else:
        folder, layout = root, "single"
    if (folder / LABELS_CSV).is_file():
        return FolderSource(ref, split, root, classes, "csv", folder, layout, _list_csv(root, folder, classes))
    listing = _list_class_folders(root, folder, classes)
    if listing is None:
        if layout == "split":
            raise DataError(f"nothing recognisable in {folder}: expected class subfolders of images or a {LABELS_CSV}")
        raise _nothing_found(root)
    return FolderSource(ref, split, root, classes, "imagefolder", folder, layout, listing)


def open_data(ref: DataRef, split: str = "test") -> DataSource:
    """The data `ref` names, opened for `split`: its kind detected from the folder, every listing check done."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    classes = ClassesFile(ref.classes_file) if ref.classes_file is not None else None
    if ref.path is None:
        return IdxSource(ref, split, default_mnist_dir(), classes)
    root = Path(ref.path).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is a file: pass the folder that holds the data")
    cifar = _find_cifar(root)
    if cifar is not None:
        return CifarSource(ref, split, cifar[0], classes, hundred=cifar[1])
    _refuse_pickled_cifar(root)
    if _looks_idx(root):
        return IdxSource(ref, split, root, classes)
    return _open_folder(ref, split, root, classes)
