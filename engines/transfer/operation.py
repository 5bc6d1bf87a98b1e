"""The transfer operation (Tables 2 and 4): the error of every target model on every source's
adversarial set, on amplified and scaled sets, and on Gaussian noise of given rms.

`run_transfer(TransferRequest, RunContext)` is what `blindspot transfer` and the Transfer screen both call.
Its run folder holds `run.json` (the request) beside what `store` writes, so that a cell can be opened to
show the examples that fool its target.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.attack.adversarial_sets import adversarial_set
from engines.attack.perturb import amplify, gaussian_noise, unclipped_noise
from engines.attack.search import paper_distortion
from engines.core.checkpoint import LoadedModel, check_classifier, warn_if_trained_on_other_data
from engines.core.context import RunContext
from engines.core.distributed import on_main_first
from engines.core.errors import InputError
from engines.core.evaluate import predict
from engines.core.events import SetReady, Step
from engines.core.model_data import check_labels, fit_images, open_model_data, take_images
from engines.core.models import ModelRef, load_model
from engines.core.runs import open_run, redo_interrupted
from engines.transfer.matrix import MatrixRow, TransferMatrix
from engines.transfer.request import TransferRequest
from engines.transfer.store import save_matrix

RowImages = tuple[MatrixRow, torch.Tensor, torch.Tensor]  # the row, its images, the clean images at their size


def run_transfer(request: TransferRequest, ctx: RunContext) -> TransferMatrix:
    """Build the matrix in a run folder (`runs/transfer-matrix-<time>` unless the context names one).

    Adversarial sets come from (or go to) the cache, so an interrupted matrix costs little to redo.
    `noise` rows are clipped to [0, 1] at the requested rms; `unclipped` rows add N(0, σ²) and
    leave the box, as the paper's noise rows most likely did.

    Under torchrun every rank calls it: rank 0 opens the folder and loads the targets, all ranks attack the
    sources' sets together (each its shard of the images), rank 0 evaluates and writes the matrix.
    """
    device = ctx.torch_device()
    ranks = ctx.ranks
    with contextlib.ExitStack() as stack:
        prepared: dict[str, Any] = {}

        def prepare() -> None:  # rank 0: the folder, the targets, the images
            here = redo_interrupted(ctx, "transfer")
            prepared["run"] = stack.enter_context(open_run(here, "transfer", "matrix", request.to_json()))
            prepared["models"] = _load_targets(request.targets, device)  # fail early on a bad target
            first = next(iter(prepared["models"].values()))
            base = open_model_data(first, request.data_dir, request.split, None, request.classes_file)
            prepared["data"] = take_images(base, request.offset, request.n)

        on_main_first(ranks, prepare)
        sets = []
        total = len(request.sources)
        for i, src in enumerate(request.sources):  # collective under torchrun: nothing in here may fail alone
            ctx.check_cancel()
            ctx.emit(Step(task="adversarial sets", done=i, total=total, message=f"attacking with {src}"))
            aset = adversarial_set(request.attack_request(src), ctx)
            ctx.emit(SetReady(task="adversarial sets", done=i + 1, total=total, source=aset.source, cached=aset.cached))
            sets.append((src, aset))
        ctx.emit(Step(task="adversarial sets", done=total, total=total))
        return on_main_first(
            ranks,
            lambda: _evaluate(request, ctx, prepared["run"].path, prepared["models"], prepared["data"], sets),
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _evaluate(
    request: TransferRequest,
    ctx: RunContext,
    out: Path,
    models: dict[str, LoadedModel],
    data: Any,
    sets: list[tuple[ModelRef, Any]],
) -> TransferMatrix:
    """Every target on every row's images; the matrix written to the run folder."""
    device = ctx.torch_device()
    x, y = data.images, data.labels
    for lm in models.values():
        warn_if_trained_on_other_data(lm, request.data_dir)
        check_labels(
            data, check_classifier(lm.model, tuple(fit_images(x[:1], lm.input_shape).shape[1:]), device), lm.id
        )
    rows_images: list[RowImages] = []
    sources_info = {}
    for src, aset in sets:
        name = aset.source
        if not torch.equal(aset.samples["label"], y):
            raise InputError(f"{name}'s adversarial set holds other images than the matrix (labels differ)")
        cache = None if aset.folder is None else str(aset.folder)
        sources_info[name] = {"cache": cache, "cached": aset.cached, "summary": aset.summary, "ref": src.to_json()}
        scale = dict(request.scaled).get(src.name)
        rows_images += _source_rows(name, aset.samples["x"], aset.samples, request.amplify_rms, scale)
    rows_images += _noise_rows(x, request)
    errors = np.zeros((len(rows_images), len(models)), dtype=np.int64)
    resized: dict[str, list[str]] = {}
    for i, (row, x_row, _) in enumerate(rows_images):
        ctx.check_cancel()
        for j, (name, lm) in enumerate(models.items()):
            fitted = fit_images(x_row, lm.input_shape)
            if fitted is not x_row:
                resized.setdefault(name, []).append(row.name)
            errors[i, j] = int((predict(lm.model, fitted, device) != y).sum())
        ctx.emit(Step(task="evaluate", done=i + 1, total=len(rows_images)))
    settings = {
        "offset": request.offset,
        "seed": request.seed,
        "attack": request.config.as_dict(),
        "target_mode": "all",
        "models": {
            name: {**m.identity(), "ref": t.to_json()}
            for (name, m), t in zip(models.items(), request.targets, strict=True)
        },
        "image_shapes": {r.name: list(x_row.shape[1:]) for r, x_row, _ in rows_images},
        "resized": {
            name: f"rows {', '.join(rows)} resized to {list(models[name].input_shape or [])} for this model "
            "(bilinear, antialiased)"
            for name, rows in resized.items()
        },
        "sources": sources_info,
        "noise": "Gaussian, clipped to [0,1], scaled per image to the rms",
        "unclipped_noise": "x + N(0, sigma^2), not clipped to [0,1]",
        "amplify": "x + s(x'-x), s per image so that the clipped rms is the requested value",
    }
    if ctx.ranks.sharded:
        settings["world_size"] = ctx.ranks.world
    rows = [r for r, _, _ in rows_images]
    matrix = TransferMatrix(rows, list(models), errors, request.split, len(y), settings, out)
    save_matrix(matrix, out, x, y, [x_row for _, x_row, _ in rows_images], [x_own for _, _, x_own in rows_images])
    return matrix


def _load_targets(targets: tuple[ModelRef, ...], device: torch.device) -> dict[str, LoadedModel]:
    """The target models by column name: their ids, numbered when two share one."""
    models: dict[str, LoadedModel] = {}
    for ref in targets:
        lm = load_model(ref, device)
        name, k = lm.id, 2
        while name in models:
            name, k = f"{lm.id}#{k}", k + 1
        models[name] = lm
    return models


def _source_rows(
    src: str,
    x: torch.Tensor,
    samples: dict[str, torch.Tensor],
    amplify_rms: float | None,
    scale_rms: float | None = None,
) -> list[RowImages]:
    """A source's adversarial row, and its amplified (Table 4) and scaled (`--scale-to`) rows when asked, with the
    clean images at the source's size. Both rescale each perturbation x′ − x to an rms, clipped to the box."""
    x_adv, ok = samples["x_adv"], samples["success"].bool()
    rows = [(_row(src, "adversarial", src, x, x_adv, ok), x_adv, x)]
    moved = ok & (paper_distortion(x, x_adv) > 0)  # images misclassified as they are have no direction
    for rms, kind, name in ((amplify_rms, "amplified", "amplified"), (scale_rms, "scaled", "scaled")):
        if rms is not None:
            x_amp = torch.where(moved.view(-1, 1, 1, 1), amplify(x, x_adv, rms), x)
            rows.append((_row(f"{src} {name} to rms {rms:g}", kind, src, x, x_amp, moved, rms), x_amp, x))
    return rows


def _noise_rows(x: torch.Tensor, request: TransferRequest) -> list[RowImages]:
    everyone = torch.ones(len(x), dtype=torch.bool)
    rows = []
    for sd in request.noise:
        x_noise = gaussian_noise(x, sd, request.seed)
        rows.append((_row(f"Gaussian noise rms {sd:g}", "noise", None, x, x_noise, everyone, sd), x_noise, x))
    for sd in request.unclipped:
        x_noise = unclipped_noise(x, sd, request.seed)
        name = f"Gaussian noise sd {sd:g}, unclipped"
        rows.append((_row(name, "noise", None, x, x_noise, everyone, sd, clipped=False), x_noise, x))
    return rows


def _row(
    name: str,
    kind: str,
    source: str | None,
    x: torch.Tensor,
    x_row: torch.Tensor,
    changed: torch.Tensor,
    stddev: float | None = None,
    clipped: bool = True,
) -> MatrixRow:
    d = paper_distortion(x, x_row)[changed]
    slug = "".join(ch if ch.isascii() and ch.isalnum() else "-" for ch in name).strip("-")
    return MatrixRow(
        name=name,
        kind=kind,
        source=source,
        distortion=float(d.mean()) if d.numel() else math.nan,
        n=int(x.shape[0]),
        set_file=f"sets/{slug}.safetensors",
        stddev=stddev,
        clipped=clipped,
    )
