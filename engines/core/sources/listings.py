"""Folder listings: the images of class subfolders (imagefolder) or of a labels.csv (csv), with their labels."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from engines.core.errors import DataError
from engines.core.image_files import IMAGE_EXTENSIONS, is_image_name
from engines.core.sources.classes_file import ClassesFile, _class_label

LABELS_CSV = "labels.csv"


@dataclass
class _Listing:
    """One folder's images: sorted paths relative to the data root, their stats and labels."""

    files: list[str]
    sizes: list[int]
    mtimes: list[int]
    labels: np.ndarray
    num_classes: int
    class_names: list[str] | None


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise DataError(f"cannot read data folder {folder}: {exc.strerror or exc}") from exc


def _list_class_folders(root: Path, folder: Path, classes: ClassesFile | None) -> _Listing | None:
    """ImageFolder: every image under folder/<class>/ (recursively), classes sorted; None if there are none."""
    names = _subdirs(folder)
    rows: list[tuple[str, int, int, int]] = []
    empty = []
    for ci, name in enumerate(names):
        found = 0
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                if is_image_name(f):
                    path = Path(dirpath) / f
                    st = _stat(path)
                    rows.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, ci))
                    found += 1
        if not found:
            empty.append(name)
    if not rows:
        return None
    if empty:
        more = f" ({len(empty)} empty class folders in all)" if len(empty) > 1 else ""
        raise DataError(
            f"class folder {folder / empty[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)}){more}: "
            "add images or remove it"
        )
    if classes is None:
        table, num, class_names = list(range(len(names))), len(names), names
    else:
        table = [_class_label(classes, name, "class folder") for name in names]
        num, class_names = len(classes), list(classes.lines)
    rows.sort()
    return _Listing(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        np.array([table[r[3]] for r in rows], dtype=np.int64),
        num,
        class_names,
    )


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _list_csv(root: Path, folder: Path, classes: ClassesFile | None) -> _Listing:
    """A flat folder with labels.csv: `file,label` rows (header optional), label an integer or a class name."""
    csv_path = folder / LABELS_CSV
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(fh))]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    rows = [(line, row) for line, row in rows if any(row)]
    if rows:
        head = rows[0][1]
        header_words = {"file", "filename", "path", "image", "label", "class", "target"}
        # a header: not a file, and a header word or a first cell without an extension (a missing file has one)
        named = {head[0].lower(), head[1].lower()} & header_words if len(head) >= 2 else set()
        if len(head) >= 2 and not (folder / head[0]).is_file() and (named or "." not in head[0]):
            rows = rows[1:]
    if not rows:
        raise DataError(f"{csv_path} lists no images: write one `file,label` row per image")
    entries: dict[str, tuple[int, str]] = {}
    for line, row in rows:
        if len(row) < 2 or not row[0] or not row[1]:
            raise DataError(f"{csv_path} line {line}: expected `file,label`, got {','.join(row)!r}")
        name = PurePosixPath(row[0].replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts:
            raise DataError(f"{csv_path} line {line}: {row[0]} is outside {folder}; list files relative to it")
        path = folder / name
        if not path.is_file():
            raise DataError(f"{csv_path} line {line}: listed file {row[0]} not found in {folder}")
        rel = path.relative_to(root).as_posix()
        if rel in entries:
            raise DataError(f"{csv_path} line {line}: {row[0]} is listed twice (first on line {entries[rel][0]})")
        entries[rel] = (line, row[1])
    items = [(rel, line, text) for rel, (line, text) in entries.items()]
    ints = [(line, text) for _, line, text in items if _is_int(text)]
    if classes is not None:
        num, class_names = len(classes), list(classes.lines)
    elif len(ints) == len(items):
        num, class_names = max(int(t) for _, t in ints) + 1, None
    elif ints:
        names = next((line, t) for _, line, t in items if not _is_int(t))
        raise DataError(
            f"{csv_path} mixes integer labels and class names (line {ints[0][0]}: {ints[0][1]}, line {names[0]}: "
            f"{names[1]}): use one or the other"
        )
    else:
        class_names = sorted({text for _, _, text in items})
        num = len(class_names)
    index = {name: i for i, name in enumerate(class_names)} if classes is None and class_names else {}
    labels: list[int] = []
    for rel, line, text in items:
        label = classes.index(text) if classes is not None else index.get(text)
        if label is None and _is_int(text):
            label = int(text)
            if not 0 <= label < num:
                raise DataError(
                    f"{csv_path} line {line}: label {text} for {rel} is outside 0..{num - 1} ({num} classes)"
                )
        if label is None:
            known = f"classes file {classes.path}" if classes is not None else "the class names"
            raise DataError(f"{csv_path} line {line}: unknown class {text!r} for {rel} (not in {known})")
        labels.append(label)
    order = sorted(range(len(items)), key=lambda i: items[i][0])
    files = [items[i][0] for i in order]
    stats = [_stat(root / f) for f in files]
    return _Listing(
        files,
        [s.st_size for s in stats],
        [s.st_mtime_ns for s in stats],
        np.array([labels[i] for i in order], dtype=np.int64),
        num,
        class_names,
    )
