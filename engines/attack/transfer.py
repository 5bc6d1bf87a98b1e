"""Cross-model transfer of adversarial examples (Tables 2 and 4): the error of every target model
on every source's adversarial set, on amplified sets and on Gaussian noise of given rms.

A run folder holds `matrix.json` (rows, columns, values in %, counts, 95 % Wilson intervals,
distortions, settings), `matrix.csv`, `heatmap.png`, and `sets/` with each row's images so
that a cell can be opened to show the examples that fool its target.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engines.attack.adversarial_sets import adversarial_set
from engines.attack.problems import AttackConfig, paper_distortion
from engines.core.checkpoint import load_checkpoint
from engines.core.data import load_split
from engines.core.errors import InputError
from engines.core.events import CancelCheck, EventSink, SetReady, Step, ignore_events, never_cancel
from engines.report.figures import heatmap_png, predict
from engines.core.io import atomic_write, read_json, write_json_atomic, write_text_atomic
from engines.attack.perturb import amplify, gaussian_noise, unclipped_noise

ROW_KINDS = ("adversarial", "amplified", "noise")


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


def compute_transfer(
    sources: list[str],
    targets: list[str],
    split: str,
    n: int,
    out: str | Path,
    *,
    noise: list[float] | None = None,
    unclipped: list[float] | None = None,
    amplify_rms: float | None = None,
    offset: int = 0,
    seed: int = 0,
    config: AttackConfig | None = None,
    device: torch.device | str = "cpu",
    data_dir: str | Path | None = None,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> TransferMatrix:
    """Build the matrix and write it to `out`; adversarial sets come from (or go to) the cache.

    `noise` rows are clipped to [0, 1] at the requested rms; `unclipped` rows add N(0, σ²) and
    leave the box, as the paper's noise rows most likely did.
    """
    if not sources and not noise and not unclipped:
        raise InputError("nothing to evaluate: give --sources and/or --noise")
    if not targets:
        raise InputError("give at least one target model (--targets)")
    for sd in [*(noise or []), *(unclipped or []), *([amplify_rms] if amplify_rms is not None else [])]:
        if not 0 < sd < 1:
            raise InputError(f"rms/stddev {sd} must lie in (0, 1)")
    out = Path(out)
    config = config or AttackConfig()
    device = torch.device(device)
    data = load_split(split, data_dir).subset(offset, n)
    x, y = data.images, data.labels
    models = {t: load_checkpoint(t, device) for t in targets}  # fail early on a bad target
    sets: list[tuple[MatrixRow, torch.Tensor]] = []
    sources_info = {}
    for i, src in enumerate(sources):
        on_event(Step(task="adversarial sets", done=i, total=len(sources), message=f"attacking with {src}"))
        aset = adversarial_set(
            src,
            split,
            n,
            offset=offset,
            seed=seed,
            config=config,
            device=device,
            data_dir=data_dir,
            on_event=on_event,
            cancel=cancel,
        )
        sources_info[src] = {"cache": str(aset.folder), "cached": aset.cached, "summary": aset.summary}
        on_event(SetReady(task="adversarial sets", done=i + 1, total=len(sources), source=src, cached=aset.cached))
        x_adv, ok = aset.samples["x_adv"], aset.samples["success"].bool()
        sets.append((_row(src, "adversarial", src, x, x_adv, ok), x_adv))
        if amplify_rms is not None:
            moved = ok & (paper_distortion(x, x_adv) > 0)  # images misclassified as they are have no direction
            x_amp = torch.where(moved.view(-1, 1, 1, 1), amplify(x, x_adv, amplify_rms), x)
            sets.append(
                (_row(f"{src} amplified to rms {amplify_rms:g}", "amplified", src, x, x_amp, moved, amplify_rms), x_amp)
            )
    on_event(Step(task="adversarial sets", done=len(sources), total=len(sources)))
    everyone = torch.ones(len(y), dtype=torch.bool)
    for sd in noise or []:
        x_noise = gaussian_noise(x, sd, seed)
        sets.append((_row(f"Gaussian noise rms {sd:g}", "noise", None, x, x_noise, everyone, sd), x_noise))
    for sd in unclipped or []:
        x_noise = unclipped_noise(x, sd, seed)
        row = _row(f"Gaussian noise sd {sd:g}, unclipped", "noise", None, x, x_noise, everyone, sd, clipped=False)
        sets.append((row, x_noise))
    errors = np.zeros((len(sets), len(targets)), dtype=np.int64)
    for i, (_, x_row) in enumerate(sets):
        for j, t in enumerate(targets):
            errors[i, j] = int((predict(models[t].model, x_row, device) != y).sum())
        on_event(Step(task="evaluate", done=i + 1, total=len(sets)))
    settings = {
        "offset": offset,
        "seed": seed,
        "attack": config.as_dict(),
        "target_mode": "all",
        "models": {t: {"path": str(m.path), "sha256": m.sha256} for t, m in models.items()},
        "sources": sources_info,
        "noise": "Gaussian, clipped to [0,1], scaled per image to the rms",
        "unclipped_noise": "x + N(0, sigma^2), not clipped to [0,1]",
        "amplify": "x + s(x'-x), s per image so that the clipped rms is the requested value",
    }
    matrix = TransferMatrix([r for r, _ in sets], list(targets), errors, split, len(y), settings, out)
    save_matrix(matrix, out, x, y, [x_row for _, x_row in sets])
    return matrix


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
    matrix: TransferMatrix, out: str | Path, x: torch.Tensor, y: torch.Tensor, row_images: list[torch.Tensor]
) -> None:
    out = Path(out)
    atomic_write(
        out / "sets" / "images.safetensors", lambda p: save_file({"x": x.contiguous(), "label": y.contiguous()}, str(p))
    )
    for row, xr in zip(matrix.rows, row_images, strict=True):
        atomic_write(out / row.set_file, lambda p, xr=xr: save_file({"x_pert": xr.contiguous()}, str(p)))
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
    x_pert = load_file(str(matrix.folder / matrix.rows[row].set_file))["x_pert"]
    model = load_checkpoint(matrix.columns[col], device).model
    pred = predict(model, x_pert, device)
    fooled = (pred != base["label"]).nonzero().squeeze(1)[:k]
    return [
        {"x": base["x"][i], "x_pert": x_pert[i], "label": int(base["label"][i]), "pred": int(pred[i]), "index": int(i)}
        for i in fooled
    ]
