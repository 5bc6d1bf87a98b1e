"""Images for a model: the data a request names, decoded at the size and channels the model takes.

One place decides how a model meets its data, so that every operation (attack, transfer, units)
feeds a model the same pixels for the same request: the model's own input shape when it declares one
(a zoo spec, 224 px for torchvision's ImageNet models), else the data's own; `image_size` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from engines.core.checkpoint import LoadedModel
from engines.core.data import Dataset
from engines.core.errors import InputError
from engines.core.sources import DataRef, DataSource, open_data


def data_ref_for(
    lm: LoadedModel | None,
    data_dir: str | Path | None,
    image_size: int | None = None,
    classes_file: str | None = None,
) -> DataRef:
    """How `lm` reads the data at `data_dir`: its channels, its side (unless `image_size` says otherwise)."""
    shape = lm.input_shape if lm is not None else None
    side = image_size if image_size is not None else (int(shape[-1]) if shape else None)
    return DataRef(
        path=str(data_dir) if data_dir is not None else None,
        image_size=side,
        channels=int(shape[0]) if shape else None,
        classes_file=classes_file,
    )


def open_model_data(
    lm: LoadedModel | None,
    data_dir: str | Path | None,
    split: str,
    image_size: int | None = None,
    classes_file: str | None = None,
) -> DataSource:
    return open_data(data_ref_for(lm, data_dir, image_size, classes_file), split)


def take_images(source: DataSource, offset: int = 0, n: int | None = None) -> Dataset:
    """Images [offset, offset + n) of the source, decoded in worker processes when there are many of them
    (the source's DataLoader); the same tensors as `source.take` either way."""
    parts = list(source.batches(offset, n, batch_size=256))
    if len(parts) == 1:
        return parts[0]
    files = None if parts[0].files is None else tuple(f for p in parts for f in (p.files or ()))
    return Dataset(
        torch.cat([p.images for p in parts]),
        torch.cat([p.labels for p in parts]),
        parts[0].name,
        np.concatenate([p.indices for p in parts]),
        files,
    )


def data_record(source: DataSource, images: Dataset | None = None) -> dict[str, Any]:
    """What run.json records of the data (and what --resume checks): the source's identity and split."""
    identity = dict(source.identity())
    identity["split"] = source.split
    if "md5s" in identity:  # the key run records of IDX data have always used
        identity["md5"] = identity.pop("md5s")
    return identity


def check_labels(data: Dataset, classes: int, model_id: str) -> None:
    """Labels the model cannot output are bad input, found before any work starts."""
    if len(data) and int(data.labels.max()) >= classes:
        i = int(data.labels.argmax())
        where = f" ({data.files[i]})" if data.files else ""
        raise InputError(
            f"the data has label {int(data.labels[i])}{where} but {model_id} has only {classes} classes "
            "(map folder names to the model's classes with --classes FILE, or pass --num-classes)"
        )


def fit_images(x: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
    """Images resized (bilinear, antialiased) and converted (grey ↔ RGB) to the (C, H, W) a model takes.

    Used where one set of images meets several models (transfer): each target sees the set at its size.
    """
    if shape is None or tuple(x.shape[1:]) == tuple(shape):
        return x
    c, h, w = (int(v) for v in shape)
    if x.shape[1] != c:
        if c == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(1, keepdim=True) if x.shape[1] == 3 else x.mean(1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        else:
            raise InputError(f"cannot feed {x.shape[1]}-channel images to a model that takes {c} channels")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous()
