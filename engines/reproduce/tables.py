"""The numbers of `reproduce`'s tables: ours beside the paper's, as JSON-ready rows.

Tables 2 and 4 are transfer matrices (`engines.transfer`); this module turns them, the
error rates of Tables 1 and 3 and the frame bounds of Table 5 into rows that `tables.json` holds
and `engines.reproduce.markdown` renders. Nothing here is tuned to match the paper.
Every loop over models checks the context's cancel flag, so a Ctrl-C stops within one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engines.certify.bracket import checked_network, radii
from engines.certify.lipschitz import certified_radius, lipschitz_constant
from engines.core import paper
from engines.core.checkpoint import LoadedModel, load_checkpoint
from engines.core.context import RunContext
from engines.core.data import load_split
from engines.core.errors import InputError
from engines.core.evaluate import error_rate
from engines.core.models import ModelRef, as_model_ref
from engines.transfer.matrix import MatrixRow, TransferMatrix

UNCLIPPED = " unclipped"  # shown after the name of an unclipped-noise row (the paper has none)
AT_PAPER = " at the paper's distortion"  # shown after the name of a source's row scaled to the paper's distortion


def table1(t2: TransferMatrix, ctx: RunContext, data_dir: str | Path | None) -> list[dict[str, Any]]:
    """Train and test errors of the Table 1 models, with Table 2's minimum distortions."""
    device = ctx.torch_device()
    rows = []
    train, test = load_split("train", data_dir), load_split("test", data_dir)
    own = {r.source: r for r in t2.rows if r.kind == "adversarial"}  # the matrix also holds scaled and noise rows
    for mid in paper.TABLE1_MODELS:
        ctx.check_cancel()
        lm = load_checkpoint(mid, device)
        model = lm.model
        p_train, p_test, p_dist = paper.TABLE1[mid]
        summary = t2.settings["sources"][mid]["summary"]
        rows.append(
            {
                **table1_bracket(t2, own[mid], lm),
                "model": mid,
                "train_error": error_rate(model, train.images, train.labels, device),
                "paper_train_error": p_train,
                "test_error": error_rate(model, test.images, test.labels, device),
                "paper_test_error": p_test,
                "distortion": own[mid].distortion,
                "paper_distortion": p_dist,
                "success_rate": 100.0 * summary["success_rate"],
                "trivial": summary.get("n_trivial", 0),
            }
        )
    return rows


def table1_bracket(t2: TransferMatrix, row: MatrixRow, lm: LoadedModel) -> dict[str, Any]:
    """The lower end of Table 1's distortion, on the same images as the attack's: the exact minimum for the
    linear models, CROWN's certified radius for the others (means in rms over the images the attack moved), and
    the global bound margin/(√2·L) beside it. Empty where the matrix's files are gone or CROWN cannot walk the model."""
    if t2.folder is None:
        return {}
    try:
        base = load_file(str(t2.folder / "sets" / "images.safetensors"))
        x_pert = load_file(str(t2.folder / row.set_file))["x_pert"]
    except (OSError, SafetensorError):
        return {}
    x, labels = base["x"], base["label"].long()
    changed = (x_pert != x).flatten(1).any(1)
    if not bool(changed.any()):
        return {}
    x, labels, x_pert = x[changed], labels[changed], x_pert[changed]
    upper = (x_pert - x).flatten(1).norm(dim=1).double()
    try:
        net = checked_network(lm.model, x, lm.normalization, next(lm.model.parameters()).device)
    except InputError:
        return {}
    lower, method = radii(net, x, labels, upper)
    pixels = math.sqrt(x[0].numel())
    global_l2 = certified_radius(lm.model, x, labels, lipschitz_constant(lm.model, tuple(x.shape[1:])))
    ratio = upper / lower.clamp(min=1e-300)
    return {
        "lower": float(lower.mean()) / pixels,
        "lower_method": method,
        "exact": float(lower.mean()) / pixels if method == "exact" else None,
        "attack_over_lower_mean": float(ratio[lower > 0].mean()) if bool((lower > 0).any()) else None,
        "attack_over_lower_max": float(ratio[lower > 0].max()) if bool((lower > 0).any()) else None,
        "lower_global": float(global_l2.mean()) / pixels,
        "bracket_images": int(changed.sum()),
        "bracket_violations": int((lower > upper * (1 + 1e-6)).sum()),
    }


def table3(ctx: RunContext, data_dir: str | Path | None) -> list[dict[str, Any]]:
    """Errors of the models trained on P1 or P2 on each half and on the test set."""
    device = ctx.torch_device()
    splits = {s: load_split(s, data_dir) for s in ("p1", "p2", "test")}
    rows = []
    for mid in paper.TABLE3_MODELS:
        ctx.check_cancel()
        model = load_checkpoint(mid, device).model
        p1, p2, pt, _ = paper.TABLE3[mid]
        ours = {s: error_rate(model, d.images, d.labels, device) for s, d in splits.items()}
        rows.append(
            {
                "model": mid,
                "p1_error": ours["p1"],
                "paper_p1_error": p1,
                "p2_error": ours["p2"],
                "paper_p2_error": p2,
                "test_error": ours["test"],
                "paper_test_error": pt,
            }
        )
    return rows


def table5(ctx: RunContext, model: ModelRef | str = "alexnet") -> dict[str, Any]:
    """Frame bounds of torchvision's AlexNet (random init, seed 0, unless the user gives trained weights)
    beside the paper's trained network."""
    from engines.bounds.models import load_bounds_model
    from engines.bounds.network import ALEXNET_NOTE, PAPER_TABLE5, frame_bounds

    ctx.check_cancel()
    bm = load_bounds_model(model)
    result = frame_bounds(
        bm.model, bm.input_shape, device=ctx.torch_device(), dtype=torch.float32, power_iters=3, cancel=ctx.cancelled
    )
    rows = []
    for layer, ref in zip(result.layers, PAPER_TABLE5, strict=False):
        rows.append(
            {
                "layer": layer.label,
                "size": layer.size,
                "lower": layer.lower,
                "upper": layer.upper,
                "method": layer.short_method,
                "paper_size": ref["size"],
                "paper_lower": ref["lower"],
                "paper_upper": ref["upper"],
            }
        )
    weights = as_model_ref(model).weights
    note = f"torchvision's AlexNet with the trained weights {weights}" if weights is not None else ALEXNET_NOTE
    return {"rows": rows, "product": result.product_table, "note": note, "seconds": result.seconds}


def _noise_key(row: MatrixRow) -> str:
    return f"noise {row.stddev:g}" + ("" if row.clipped else UNCLIPPED)


def paper_key(row: MatrixRow) -> str:
    """The name of the paper's row that one of our rows stands beside: its source's own row for a scaled row,
    the noise row of the same stddev whether or not ours is clipped."""
    if row.kind in ("adversarial", "scaled"):
        return row.source or ""
    if row.kind == "amplified":
        return f"{row.source} amplified {row.stddev:g}"
    return f"noise {row.stddev:g}"


def table2_key(row: MatrixRow) -> str:
    """The paper's Table 2 row name for one of our rows."""
    if row.kind == "adversarial":
        return row.source or ""
    if row.kind == "scaled":
        return f"{row.source}{AT_PAPER}"
    return _noise_key(row)


def table4_key(row: MatrixRow) -> str:
    """The paper's Table 4 row name for one of our rows."""
    if row.kind == "adversarial":
        return row.source or ""
    if row.kind == "amplified":
        return f"{row.source} amplified {row.stddev:g}"
    if row.kind == "scaled":
        return f"{row.source}{AT_PAPER}"
    return _noise_key(row)


def matrix_vs_paper(
    m: TransferMatrix, table: dict[str, list[float]], key: Callable[[MatrixRow], str]
) -> list[dict[str, Any]]:
    """Each row of our matrix beside the paper's row: values, paper values, intervals, distortion; what the row is
    (kind, source, clipped) in fields of its own, the name only for show."""
    out = []
    for i, row in enumerate(m.rows):
        out.append(
            {
                "row": key(row),
                "kind": row.kind,
                "source": row.source,
                "clipped": row.clipped,
                "n": row.n,
                "distortion": row.distortion,
                "columns": m.columns,
                "ours": [float(v) for v in m.values[i]],
                "paper": table.get(paper_key(row)),
                "interval": [[float(a), float(b)] for a, b in m.intervals[i]],
                "folder": str(m.folder),
            }
        )
    return out
