"""Image decoding for the data sources: one pipeline (Pillow) for files and for IDX/CIFAR arrays.

Every image a model sees goes through the same three steps, so that a folder of PNGs, MNIST and CIFAR
meet a model in the same way: convert to the channels asked for (Pillow "L" or "RGB"), resize the
shorter side to the requested side (bilinear, antialiased) and centre-crop a square. The resize and
crop follow torchvision's ``Resize(s)`` + ``CenterCrop(s)`` on PIL images exactly, so a model trained
with those transforms sees the same pixels here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.core.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # compared case-insensitively
MODES = {1: "L", 3: "RGB"}


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image extensions (any case); hidden files never count."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def mode_for(channels: int) -> str:
    if channels not in MODES:
        raise DataError(f"cannot make {channels}-channel images: choose 1 (grey) or 3 (RGB)")
    return MODES[channels]


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to `side` (torchvision's rule: the longer side truncated)."""
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def resize_crop(img: Image.Image, side: int) -> Image.Image:
    """Shorter side to `side` (bilinear, antialiased), then the centred side×side square."""
    w, h = img.size
    nw, nh = resized_size(w, h, side)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    if (nw, nh) == (side, side):
        return img
    top = int(round((nh - side) / 2.0))
    left = int(round((nw - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def to_chw(img: Image.Image) -> np.ndarray:
    """A decoded "L" or "RGB" image as a uint8 (C, H, W) array."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def open_image(path: Path, shown: str, mode: str) -> Image.Image:
    """The image fully decoded (Image.load() finds truncation) and converted to `mode`; `shown` names the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)  # a new image: usable after the file is closed
    except FileNotFoundError as exc:
        raise DataError(f"image file {shown} is missing (was the folder changed while in use?)") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors... for bad files
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise DataError(f"cannot decode image {shown}: {reason} (corrupt, truncated or not an image?)") from exc


def image_header_size(path: Path, shown: str) -> tuple[int, int]:
    """(width, height) from the file's header alone (cheap: the pixels are not decoded)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise DataError(f"cannot read image {shown}: {reason} (corrupt or not an image?)") from exc


def decode_file(path: Path, shown: str, channels: int, side: int | None) -> np.ndarray:
    """One image file as uint8 (C, H, W): converted to `channels`, resized and cropped when `side` is given."""
    img = open_image(path, shown, mode_for(channels))
    if side is not None:
        img = resize_crop(img, side)
    return to_chw(img)


def fit_array(chw: np.ndarray, channels: int, side: int | None) -> np.ndarray:
    """A uint8 (C, H, W) array (IDX, CIFAR) through the same convert/resize/crop as a file."""
    if chw.shape[0] == channels and (side is None or chw.shape[1:] == (side, side)):
        return chw
    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else np.ascontiguousarray(chw.transpose(1, 2, 0)))
    img = img.convert(mode_for(channels))
    if side is not None:
        img = resize_crop(img, side)
    return to_chw(img)


def to_float(batch: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) to float32 in [0, 1], as the IDX loader scales pixels."""
    return torch.from_numpy(batch.astype(np.float32) / 255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [0, 1] images back to the uint8 they were scaled from (exact for IDX data)."""
    return np.rint(x.detach().cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
