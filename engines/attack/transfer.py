"""The transfer operation (Tables 2 and 4): the error of every target model on every source's
adversarial set, on amplified sets and on Gaussian noise of given rms.

`run_transfer(TransferRequest, RunContext)` is what `blindspot transfer` and the Transfer screen
both call. Its run folder holds `run.json` (the request), `matrix.json` (rows, columns, values in
%, counts, 95 % Wilson intervals, distortions, settings), `matrix.csv`, `heatmap.png`, and `sets/`
with each row's images so that a cell can be opened to show the examples that fool its target.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engines.attack.adversarial_sets import adversarial_set
from engines.attack.perturb import amplify, gaussian_noise, unclipped_noise
from engines.attack.problems import AttackConfig, paper_distortion
from engines.attack.run import AttackRequest
from engines.core.checkpoint import LoadedModel, check_classifier, warn_if_trained_on_other_data
from engines.core.context import RunContext
from engines.core.distributed import on_main_first
from engines.core.errors import InputError
from engines.core.events import SetReady, Step
from engines.core.io import atomic_write, read_json, write_json_atomic, write_text_atomic
from engines.core.model_data import check_labels, fit_images, open_model_data, take_images
from engines.core.models import ModelRef, load_model
from engines.core.runs import RUN_FILE, open_run, read_run_record
from engines.report.figures import heatmap_png, predict


@dataclass(frozen=True)
class TransferRequest:
    """Which sets are fed to which models: everything that fixes the matrix. Stored in run.json.

    `targets` defaults to the sources. Each source's set is its minimum-distortion attack
    (`--target all`) on images [offset, offset + n) of `split`, with `config` and `seed`.
    """

    sources: tuple[ModelRef | str, ...] = ()
    targets: tuple[ModelRef | str, ...] = ()
    split: str = "train"
    n: int = 100
    offset: int = 0
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    data_dir: str | None = None
    noise: tuple[float, ...] = ()  # clipped Gaussian-noise rows at these rms values
    unclipped: tuple[float, ...] = ()  # x + N(0, sd²) rows left outside [0, 1]
    amplify_rms: float | None = None  # also each set amplified to this rms (Table 4)
    scaled: tuple[tuple[str, float], ...] = ()  # (source id, rms): that source's set also scaled to the rms
    classes_file: str | None = None  # folder class names in the models' class order

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise once, here
        fix(self, "sources", tuple(ModelRef.from_json(s) for s in self.sources))
        fix(self, "targets", tuple(ModelRef.from_json(t) for t in self.targets) or self.sources)
        fix(self, "noise", tuple(float(v) for v in self.noise))
        fix(self, "unclipped", tuple(float(v) for v in self.unclipped))
        fix(self, "scaled", tuple((str(src), float(rms)) for src, rms in self.scaled))
        if self.data_dir is not None:
            fix(self, "data_dir", str(self.data_dir))
        if not self.sources and not self.noise and not self.unclipped:
            raise InputError("nothing to evaluate: give --sources and/or --noise")
        if not self.targets:
            raise InputError("give at least one target model (--targets)")
        if self.n < 1:
            raise InputError("--n must be at least 1")
        if self.offset < 0:
            raise InputError("--offset must be at least 0")
        amplified = [self.amplify_rms] if self.amplify_rms is not None else []
        names = {src.name for src in self.sources}
        for src, _ in self.scaled:
            if src not in names:
                raise InputError(f"--scale-to {src}=…: {src} is not one of the sources")
        for sd in [*self.noise, *self.unclipped, *amplified, *(rms for _, rms in self.scaled)]:
            if not 0 < sd < 1:
                raise InputError(f"rms/stddev {sd} must lie in (0, 1)")

    def attack_request(self, source: ModelRef) -> AttackRequest:
        """The attack that makes `source`'s adversarial set."""
        return AttackRequest(
            model=source,
            split=self.split,
            n=self.n,
            offset=self.offset,
            target="all",
            seed=self.seed,
            config=self.config,
            data_dir=self.data_dir,
            classes_file=self.classes_file,
        )

    def to_json(self) -> dict[str, Any]:
        extra = {"classes_file": self.classes_file} if self.classes_file else {}
        return {
            "sources": [s.to_json() for s in self.sources],
            "targets": [t.to_json() for t in self.targets],
            "split": self.split,
            "n": self.n,
            "offset": self.offset,
            "seed": self.seed,
            "config": self.config.as_dict(),
            "data_dir": self.data_dir,
            "noise": list(self.noise),
            "unclipped": list(self.unclipped),
            "amplify_rms": self.amplify_rms,
            **({"scaled": [list(p) for p in self.scaled]} if self.scaled else {}),
            **extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TransferRequest:
        try:
            return cls(
                sources=tuple(d["sources"]),
                targets=tuple(d["targets"]),
                split=str(d["split"]),
                n=int(d["n"]),
                offset=int(d["offset"]),
                seed=int(d["seed"]),
                config=AttackConfig.from_dict(d["config"]),
                data_dir=d.get("data_dir"),
                noise=tuple(d.get("noise", ())),
                unclipped=tuple(d.get("unclipped", ())),
                amplify_rms=d.get("amplify_rms"),
                scaled=tuple((str(a), float(b)) for a, b in d.get("scaled", ())),
                classes_file=d.get("classes_file"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded transfer request is damaged ({type(exc).__name__}: {exc})") from None


@dataclass
class MatrixRow:
    name: str
    kind: str  # adversarial | amplified | noise
    source: str | None
    distortion: float  # mean rms sqrt(Σ(x′−x)²/n) over the row's perturbed images
    n: int
    set_file: str  # relative to the matrix folder
    stddev: float | None = None
    clipped: bool = True  # False: noise left outside [0, 1] (the paper's likely setting)


@dataclass
class TransferMatrix:
    rows: list[MatrixRow]
    columns: list[str]
    errors: np.ndarray  # (R, C) misclassified counts
    split: str
    n: int
    settings: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def values(self) -> np.ndarray:
        """Error rates in percent."""
        sizes = np.array([r.n for r in self.rows], dtype=float)[:, None]
        return 100.0 * self.errors / np.maximum(sizes, 1)

    @property
    def intervals(self) -> np.ndarray:
        """95 % Wilson intervals in percent, (R, C, 2)."""
        out = np.zeros(self.errors.shape + (2,))
        for i, row in enumerate(self.rows):
            for j in range(len(self.columns)):
                out[i, j] = wilson_interval(int(self.errors[i, j]), row.n)
        return 100.0 * out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "transfer",
            "split": self.split,
            "n": self.n,
            "columns": self.columns,
            "rows": [asdict(r) for r in self.rows],
            "values": np.round(self.values, 4).tolist(),
            "errors": self.errors.astype(int).tolist(),
            "intervals": np.round(self.intervals, 4).tolist(),
            "distortions": [r.distortion for r in self.rows],
            "settings": self.settings,
        }


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion k/n (sound at 0 % and 100 %)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


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
    rows_images: list[tuple[MatrixRow, torch.Tensor, torch.Tensor]] = []
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


def redo_interrupted(ctx: RunContext, kind: str) -> RunContext:
    """Let an --out that holds an interrupted run of `kind` be run again.

    Transfer and reproduce keep their costly part (the adversarial sets) in the cache, so the CLI's
    hint says "run the same command again": that must not be refused as an occupied folder. A
    finished run, another kind's folder or a folder without run.json still is.
    """
    if ctx.out is None or ctx.overwrite or not (Path(ctx.out) / RUN_FILE).is_file():
        return ctx
    try:
        record = read_run_record(Path(ctx.out))
    except InputError:
        return ctx
    if record.get("kind") == kind and record.get("status") != "done":
        return replace(ctx, overwrite=True)
    return ctx


def _source_rows(
    src: str,
    x: torch.Tensor,
    samples: dict[str, torch.Tensor],
    amplify_rms: float | None,
    scale_rms: float | None = None,
) -> list[tuple[MatrixRow, torch.Tensor, torch.Tensor]]:
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


def _noise_rows(x: torch.Tensor, request: TransferRequest) -> list[tuple[MatrixRow, torch.Tensor, torch.Tensor]]:
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


def save_matrix(
    matrix: TransferMatrix,
    out: str | Path,
    x: torch.Tensor,
    y: torch.Tensor,
    row_images: list[torch.Tensor],
    row_clean: list[torch.Tensor] | None = None,
) -> None:
    """The matrix files and every row's images; a row made at another size than `x` keeps its own clean images."""
    out = Path(out)
    atomic_write(
        out / "sets" / "images.safetensors", lambda p: save_file({"x": x.contiguous(), "label": y.contiguous()}, str(p))
    )
    for i, (row, xr) in enumerate(zip(matrix.rows, row_images, strict=True)):
        tensors = {"x_pert": xr.contiguous()}
        if row_clean is not None and row_clean[i].shape != x.shape:
            tensors["x"] = row_clean[i].contiguous()
        atomic_write(out / row.set_file, lambda p, t=tensors: save_file(t, str(p)))
    write_json_atomic(out / "matrix.json", matrix.to_json())
    write_text_atomic(out / "matrix.csv", matrix_csv(matrix))
    heatmap_png(
        matrix.values,
        [r.name for r in matrix.rows],
        matrix.columns,
        out / "heatmap.png",
        extra=[f"{r.distortion:.3f}" for r in matrix.rows],
        extra_title="rms",
    )


def matrix_csv(matrix: TransferMatrix) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "kind", *matrix.columns, "distortion", "n"])
    for row, vals in zip(matrix.rows, matrix.values, strict=True):
        w.writerow([row.name, row.kind, *[f"{v:.2f}" for v in vals], f"{row.distortion:.4f}", row.n])
    return buf.getvalue()


def export_csv(matrix: TransferMatrix, path: str | Path) -> Path:
    return write_text_atomic(path, matrix_csv(matrix))


def load_matrix(path: str | Path) -> TransferMatrix:
    """Read a matrix.json (or its folder) back; values and intervals are recomputed from counts."""
    path = Path(path)
    if path.is_dir():
        path = path / "matrix.json"
    if not path.is_file():
        raise InputError(f"no transfer matrix at {path}")
    try:
        d = read_json(path)
        rows = [
            MatrixRow(**(r | {"distortion": math.nan if r.get("distortion") is None else r["distortion"]}))
            for r in d["rows"]
        ]
        errors = np.array(d["errors"], dtype=np.int64).reshape(len(rows), len(d["columns"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a blindspot transfer matrix ({exc})") from exc
    return TransferMatrix(rows, list(d["columns"]), errors, d["split"], int(d["n"]), d.get("settings", {}), path.parent)


def cell_examples(
    matrix: TransferMatrix, row: int, col: int, k: int = 8, device: torch.device | str = "cpu"
) -> list[dict[str, Any]]:
    """Images of row `row`'s set that column `col`'s model misclassifies (x, x_pert, label, pred, index)."""
    if matrix.folder is None:
        raise InputError("this matrix has no folder with its image sets")
    base = load_file(str(matrix.folder / "sets" / "images.safetensors"))
    row_set = load_file(str(matrix.folder / matrix.rows[row].set_file))
    x_pert, x = row_set["x_pert"], row_set.get("x", base["x"])
    column = matrix.columns[col]
    ref = (matrix.settings.get("models") or {}).get(column, {}).get("ref", column)
    lm = load_model(ModelRef.from_json(ref), device)
    pred = predict(lm.model, fit_images(x_pert, lm.input_shape), device)
    fooled = (pred != base["label"]).nonzero().squeeze(1)[:k]
    return [
        {"x": x[i], "x_pert": x_pert[i], "label": int(base["label"][i]), "pred": int(pred[i]), "index": int(i)}
        for i in fooled
    ]
