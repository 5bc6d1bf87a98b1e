"""Small image data sets made on the fly for the data-source tests (and for anyone who needs a folder of images).

Each class draws its own shape in its own colour on a noisy background, at a jittered place and size, so a
tiny CNN can learn the classes; files alternate between the given formats (PNG is lossless, JPEG is not).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "hbar", "vbar", "ring")
COLOURS = (
    (230, 60, 60),
    (60, 200, 80),
    (70, 90, 230),
    (240, 200, 40),
    (200, 70, 220),
    (40, 210, 210),
    (250, 140, 30),
    (240, 240, 240),
)
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP"}


def shape_image(k: int, rng: np.random.Generator, size: int | tuple[int, int] = 32) -> Image.Image:
    """An RGB image of class k: shape k on a noisy dark background (size: side, or (width, height))."""
    w, h = (size, size) if isinstance(size, int) else size
    background = rng.integers(0, 70, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    colour = COLOURS[k % len(COLOURS)]
    side = min(w, h)
    r = side * rng.uniform(0.22, 0.32)
    cx = w / 2 + rng.uniform(-0.12, 0.12) * side
    cy = h / 2 + rng.uniform(-0.12, 0.12) * side
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = SHAPES[k % len(SHAPES)]
    thick = max(1, int(r / 3))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - thick / 2, cx + r, cy + thick / 2), fill=colour)
        draw.rectangle((cx - thick / 2, cy - r, cx + thick / 2, cy + r), fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "hbar":
        draw.rectangle((cx - r, cy - thick, cx + r, cy + thick), fill=colour)
    elif shape == "vbar":
        draw.rectangle((cx - thick, cy - r, cx + thick, cy + r), fill=colour)
    else:
        draw.ellipse(box, outline=colour, width=thick)
    return img


def shape_name(k: int) -> str:
    """Class k's folder name: its shape, numbered past the eighth class (circle, …, ring, circle1, …)."""
    return SHAPES[k % len(SHAPES)] + (str(k // len(SHAPES)) if k >= len(SHAPES) else "")


def save_image(img: Image.Image, path: Path) -> Path:
    """Save in the format the extension names (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=_PIL_FORMAT[path.suffix.lower().lstrip(".")])
    return path


def make_shapes_folder(
    root: Path,
    classes: int = 4,
    per_class: int = 10,
    size: int | tuple[int, int] = 32,
    formats: Sequence[str] = ("png", "jpg"),
    seed: int = 0,
    split: bool = False,
    test_per_class: int | None = None,
    test_dir: str = "test",
    class_names: Sequence[str] | None = None,
) -> Path:
    """An ImageFolder: ROOT/<class>/NNN.<fmt>; with split=True, ROOT/train/<class>/… and ROOT/<test_dir>/<class>/…

    Class folder k is named class_names[k] (default: the shape's name), created in reverse order so that
    the file system's order is not the sorted one.
    """
    rng = np.random.default_rng(seed)
    names = list(class_names) if class_names is not None else [shape_name(k) for k in range(classes)]
    parts = [("train", per_class), (test_dir, test_per_class or per_class)] if split else [("", per_class)]
    for sub, count in parts:
        base = root / sub if sub else root
        for k in reversed(range(classes)):
            for i in range(count):
                fmt = formats[(i + k) % len(formats)]
                save_image(shape_image(k, rng, size), base / names[k] / f"{i:03d}.{fmt}")
    return root


def make_labels_csv_folder(
    root: Path,
    n: int = 12,
    classes: int = 3,
    size: int = 32,
    names: Sequence[str] | None = None,
    header: bool = True,
    formats: Sequence[str] = ("png", "jpg"),
    seed: int = 0,
) -> Path:
    """A flat folder of images with labels.csv (file,label): integer labels, or names[k] when names are given."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % classes
        name = f"img_{i:03d}.{formats[i % len(formats)]}"
        save_image(shape_image(k, rng, size), root / name)
        rows.append((name, names[k] if names is not None else str(k)))
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(["file", "label"])
        writer.writerows(rows)
    return root


CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar_binary(root: Path, n_train: int, n_test: int, hundred: bool = False, seed: int = 0) -> Path:
    """A CIFAR-10 (cifar-10-batches-bin) or CIFAR-100 (cifar-100-binary) binary folder under root, with
    random pixels and labels and the class-name files; returns the extracted folder.

    CIFAR-10 spreads n_train over data_batch_1..5.bin as evenly as it divides (n_train >= 5).
    """
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10

    def records(n: int) -> bytes:
        fine = rng.integers(0, classes, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        if hundred:
            coarse = (fine // 5).astype(np.uint8)
            return np.concatenate([coarse[:, None], fine[:, None], pixels], axis=1).tobytes()
        return np.concatenate([fine[:, None], pixels], axis=1).tobytes()

    if hundred:
        folder = root / "cifar-100-binary"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.bin").write_bytes(records(n_train))
        (folder / "test.bin").write_bytes(records(n_test))
        (folder / "fine_label_names.txt").write_text("".join(f"fine{k:02d}\n" for k in range(100)))
        (folder / "coarse_label_names.txt").write_text("".join(f"coarse{k:02d}\n" for k in range(20)))
        return folder
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)]
    for i, count in enumerate(sizes, start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(records(count))
    (folder / "test_batch.bin").write_bytes(records(n_test))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return folder
