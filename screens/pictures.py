"""Pictures for the image grids: tiles scaled by a whole factor, differences in a diverging colour map.

A tile is scaled with nearest neighbours when enlarged (every pixel of a 28×28 digit stays a crisp
square) and with box averaging when shrunk, then centred in its box of terminal cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

SCALE_PERCENTILE = 99.0
NEGATIVE_RGB, ZERO_RGB, POSITIVE_RGB = (33, 102, 172), (255, 255, 255), (178, 24, 43)  # blue, white, red


def _chw_to_hwc(a: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) → (H, W) or (H, W, C), as `to_uint8` reads images."""
    if a.ndim == 3:
        return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    return a


def diverging(r: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, float]:
    """r (H, W) as uint8 RGB: blue below zero, white at zero, red above; ±`scale` is full colour.

    `scale` None: the 99th percentile of |r| in this image, so that every difference uses the whole map
    (a fixed ×10 saturates large differences and hides small ones; the largest |r| would let a few
    extreme pixels pale all the others)."""
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"a difference map is one channel (H, W), got shape {r.shape}")
    if scale is None:  # the largest |r| when fewer than 1% of the pixels changed
        scale = float(np.percentile(np.abs(r), SCALE_PERCENTILE)) or float(np.max(np.abs(r)))
    t = np.clip(r / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(r)
    zero, pos, neg = (np.array(c, dtype=np.float64) for c in (ZERO_RGB, POSITIVE_RGB, NEGATIVE_RGB))
    a = np.abs(t)[..., None]
    out = zero + a * np.where(t[..., None] >= 0, pos - zero, neg - zero)
    return (out + 0.5).clip(0, 255).astype(np.uint8), scale


def difference_picture(x: Any, x_adv: Any) -> tuple[np.ndarray, float]:
    """The perturbation r = x_adv − x of one example (channels averaged) in the diverging map, and its scale."""
    a = _chw_to_hwc(np.asarray(_numpy(x_adv), dtype=np.float64) - np.asarray(_numpy(x), dtype=np.float64))
    return diverging(a.mean(axis=2) if a.ndim == 3 else a)


def _numpy(t: Any) -> np.ndarray:
    detach = getattr(t, "detach", None)
    return detach().cpu().float().numpy() if detach else np.asarray(t)


def scale_label(scale: float) -> str:
    """How the difference tile is scaled: full red / full blue are ±`scale` (in the image's [0, 1] units)."""
    return f"r ±{scale:.2g}"


def scaled(arr: np.ndarray, width: int, height: int) -> Image.Image:
    """A uint8 image at (width, height): nearest neighbours up (crisp pixels), box filter down."""
    img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    if (img.width, img.height) == (width, height):
        return img
    shrink = width < img.width or height < img.height
    return img.resize((max(1, width), max(1, height)), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)


def tile_picture(arr: np.ndarray, image_px: tuple[int, int], box_px: tuple[int, int], back: tuple[int, int, int]):
    """The image scaled to `image_px`, centred on a `box_px` canvas of colour `back`."""
    canvas = Image.new("RGB", box_px, back)
    img = scaled(arr, *image_px)
    canvas.paste(img, ((box_px[0] - img.width) // 2, (box_px[1] - img.height) // 2))
    return canvas


def _palette() -> np.ndarray:
    """256 fixed colours: the 6×6×6 cube and 40 more greys (MNIST digits are grey; the map's ramps are near)."""
    levels = np.arange(6) * 51
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    greys = np.repeat(np.linspace(6, 249, 40).round()[:, None], 3, axis=1)
    return np.concatenate([cube, greys]).astype(np.int32)


PALETTE = _palette()


def _lookup() -> np.ndarray:
    """The nearest fixed colour of every colour on a 32×32×32 grid (colours read at 5 bits a channel)."""
    grid = np.stack(np.meshgrid(*[np.arange(32) * 8 + 4] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    out = np.empty(len(grid), np.uint8)
    for start in range(0, len(grid), 4096):
        part = grid[start : start + 4096]
        out[start : start + 4096] = ((part[:, None, :] - PALETTE[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    return out.reshape(32, 32, 32)


_LOOKUP: list[np.ndarray] = []


def palette_indices(rgb: np.ndarray) -> np.ndarray:
    """(H, W) register numbers: the nearest of the fixed colours to each pixel."""
    if not _LOOKUP:
        _LOOKUP.append(_lookup())
    q = rgb.astype(np.int32) >> 3
    return _LOOKUP[0][q[..., 0], q[..., 1], q[..., 2]].astype(np.int32)


def _runs(chars: np.ndarray) -> str:
    """Sixel data characters with run-length encoding (`!n` + character for runs of four or more)."""
    edges = np.flatnonzero(np.diff(chars)) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [len(chars)]]))
    out = []
    for start, n in zip(starts.tolist(), lengths.tolist(), strict=True):
        c = chr(int(chars[start]))
        out.append(f"!{n}{c}" if n > 3 else c * n)
    return "".join(out)


def sixel(picture: Image.Image) -> str:
    """The picture as one sixel image whose colour registers hold the same fixed colours in every image.

    Terminals that emulate a VT340 (xterm among them) share colour registers between images: an encoder
    that numbers each image's own colours from 0 repaints the tiles drawn before with the newest tile's
    colours. With one fixed palette a register means the same colour in every tile."""
    idx = palette_indices(np.asarray(picture.convert("RGB")))
    h, w = idx.shape
    out = [f'\x1bP0;1;0q"1;1;{w};{h}']
    for c in np.unique(idx).tolist():
        r, g, b = (round(v * 100 / 255) for v in PALETTE[c])
        out.append(f"#{c};2;{r};{g};{b}")
    weights = (1 << np.arange(6))[None, :, None]
    for y0 in range(0, h, 6):
        band = idx[y0 : y0 + 6]
        colours = np.unique(band)
        bits = ((band[None] == colours[:, None, None]) * weights[:, : band.shape[0]]).sum(axis=1) + 63
        parts = [f"#{c}" + _runs(row) for c, row in zip(colours.tolist(), bits, strict=True)]
        out.append("$".join(parts) + ("-" if y0 + 6 < h else ""))
    out.append("\x1b\\")
    return "".join(out)
