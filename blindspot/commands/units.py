"""`blindspot units` (§3: natural basis vs random directions, measured) and `blindspot layers`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from blindspot.console import note, out, print_json, progress_sink
from blindspot.options import DataDir, Device, Json, ModelRef, OutDir, Seed
from engines.units.activations import POOLINGS, find_layer, list_layers
from engines.core.checkpoint import load_checkpoint
from engines.core.data import SPLITS, load_split
from engines.core.device import resolve_device
from engines.core.errors import InputError
from engines.core.io import write_json_atomic
from engines.report.unit_figures import save_unit_figures
from engines.units.directions import UnitsResult, result_to_dict, run_units


def _input_shape(meta: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(s) for s in meta.get("spec", {}).get("input", (1, 28, 28)))


def _check(
    k: int, shown_units: int, shown_random: int, stat_random: int | None, max_units: int, pool: str, split: str
) -> None:
    if k < 1:
        raise InputError(f"--k must be at least 1, got {k}")
    if shown_units < 0 or shown_random < 0:
        raise InputError("--units and --random count rows to draw and cannot be negative")
    if stat_random is not None and stat_random < 2:
        raise InputError(f"--stat-random must be at least 2, got {stat_random}")
    if max_units < 2:
        raise InputError(f"--max-units must be at least 2, got {max_units}")
    if pool not in POOLINGS:
        raise InputError(f"unknown --pool {pool!r}: choose one of {', '.join(POOLINGS)}")
    if split not in SPLITS:
        raise InputError(f"unknown --split {split!r}: choose one of {', '.join(SPLITS)}")


def _ci(lo: float, hi: float, digits: int) -> str:
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _print_result(res: UnitsResult, model_id: str, split: str, files: dict[str, Path]) -> None:
    phi = "flattened output" if res.pool == "none" else f"{res.pool}-pooled per channel"
    shape = "×".join(str(s) for s in res.layer_shape)
    scored = f"{len(res.units)} of {res.units_total} units" + (" (seeded sample)" if res.units_sampled else "")
    out.print(
        f"{model_id} · layer {res.layer} ({res.layer_kind}, {shape}; φ = {phi}, {res.dim} dims) · "
        f"{res.n_images} {split} images · {scored}, {int(res.units.degenerate.sum())} degenerate · "
        f"{len(res.random)} random directions · top-{res.k}",
        highlight=False,
    )
    table = Table(
        title=f"units vs random directions at {res.layer}: scores of each direction's top-{res.k}", box=box.SIMPLE_HEAD
    )
    table.add_column("")
    comps = list(res.comparisons.items())
    for name, c in comps:
        label = name + (f" ({res.space})" if name == "cosine" else "")
        table.add_column(f"{label} {'↑' if c.higher_is_coherent else '↓'}", justify="right")
    cells: list[tuple[str, Any]] = [
        (f"units (n={comps[0][1].n_units})", lambda c: f"{c.units_mean:.3f}"),
        (f"random (n={comps[0][1].n_random})", lambda c: f"{c.random_mean:.3f}"),
        ("Δ mean", lambda c: f"{c.mean_diff:+.3f}"),
        ("  95% CI", lambda c: _ci(*c.mean_diff_ci, 3)),
        ("Cliff's δ", lambda c: f"{c.cliffs_delta:+.3f}"),
        ("  95% CI", lambda c: _ci(*c.delta_ci, 3)),
        ("  effect", lambda c: c.effect),
        ("Mann–Whitney p", lambda c: f"{c.p_value:.2g}"),
        ("more coherent", lambda c: c.favours),
    ]
    for label, fmt in cells:
        table.add_row(label, *[fmt(c) for _name, c in comps])
    out.print(table)
    out.print(f"verdict: {res.verdict}", highlight=False, soft_wrap=True)
    for name, sentence in res.verdicts().items():
        if name != res.primary:
            out.print(f"  {name}: {sentence}", highlight=False, soft_wrap=True)
    for path in files.values():
        note(f"wrote {path}")


def units(
    model: ModelRef,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (see `blindspot layers --model ID`).")],
    k: Annotated[int, typer.Option("--k", help="Images per direction: the top-k of ⟨φ(x), v⟩.")] = 8,
    shown_units: Annotated[int, typer.Option("--units", help="Units drawn in the figure (a seeded sample).")] = 16,
    shown_random: Annotated[int, typer.Option("--random", help="Random directions drawn in the figure.")] = 16,
    stat_random: Annotated[
        int | None,
        typer.Option("--stat-random", help="Random directions for the statistics (default: max(units, 1000))."),
    ] = None,
    max_units: Annotated[
        int, typer.Option("--max-units", help="Score all units up to this many; a seeded sample beyond.")
    ] = 5000,
    pool: Annotated[
        str, typer.Option("--pool", help="none: φ = flattened C×H×W; max/mean: one value per channel.")
    ] = "none",
    space: Annotated[
        str, typer.Option("--space", help="Where the label-free cosine is read: 'pixel' or another layer's name.")
    ] = "pixel",
    bottom: Annotated[bool, typer.Option("--bottom", help="Also find and draw the bottom-k images.")] = False,
    split: Annotated[str, typer.Option("--split", help="Image set: test, train, p1 or p2.")] = "test",
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute activations; do not touch the cache.")
    ] = False,
    seed: Seed = 0,
    data: DataDir = None,
    device: Device = "auto",
    out_dir: OutDir = None,
    json_out: Json = False,
) -> None:
    """Top-k images of each unit and of random directions, scored and compared (§3, Figures 1–4)."""
    _check(k, shown_units, shown_random, stat_random, max_units, pool, split)
    dev = resolve_device(device)
    loaded = load_checkpoint(model, dev)
    shape = _input_shape(loaded.meta)
    find_layer(loaded.model, layer, shape, dev)  # fail on a bad name before the data are read
    dataset = load_split(split, data)
    with progress_sink() as on_progress:
        res = run_units(
            loaded,
            layer,
            dataset,
            k=k,
            seed=seed,
            n_random=stat_random,
            max_units=max_units,
            show_units=shown_units,
            show_random=shown_random,
            bottom=bottom,
            pool=pool,
            space=space,
            device=dev,
            use_cache=not no_cache,
            on_progress=on_progress,
        )
    target = out_dir or Path("runs") / "units" / f"{loaded.id}-{layer}"
    files = save_unit_figures(res, dataset.images, target, labels=dataset.labels)
    files["json"] = target / "units.json"
    res.extra["files"] = {name: str(p) for name, p in files.items()}
    write_json_atomic(files["json"], result_to_dict(res, dataset.indices, full=True))
    if json_out:
        print_json(result_to_dict(res, dataset.indices, full=False))
        return
    _print_result(res, loaded.id, split, files)


def layers(model: ModelRef, device: Device = "auto", json_out: Json = False) -> None:
    """The model's named layers with their kinds and output shapes (the names `units --layer` takes)."""
    dev = resolve_device(device)
    loaded = load_checkpoint(model, dev)
    rows = [info.to_dict() for info in list_layers(loaded.model, _input_shape(loaded.meta), dev)]
    if json_out:
        print_json({"model": loaded.id, "layers": rows})
        return
    table = Table(title=f"layers of {loaded.id} (φ = flattened output)")
    for col in ("name", "kind", "output shape", "φ dims"):
        table.add_column(col, justify="right" if col == "φ dims" else "left")
    for r in rows:
        table.add_row(r["name"], r["kind"], "×".join(str(s) for s in r["shape"]), f"{r['size']:,}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("units")(units)
    app.command("layers")(layers)
