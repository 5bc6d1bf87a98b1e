"""`blindspot units` (§3: natural basis vs random directions, measured) and `blindspot layers`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from blindspot.console import cli_context, note, out, print_json
from blindspot.options import (
    ClassesFile,
    DataDir,
    Device,
    ImageSize,
    Json,
    ModelOptions,
    OutDir,
    Overwrite,
    Seed,
    Threads,
    cli_option,
    optional_path,
    with_model_options,
)
from engines.core.context import RunContext
from engines.units.operation import LayersRequest, UnitsRequest, UnitsResult, run_layers, run_units


def _ci(interval: tuple[float, ...], digits: int) -> str:
    lo, hi = interval
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _print_result(result: UnitsResult) -> None:
    res, model_id, split = result.comparison, result.model, result.split
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
        ("  95% CI", lambda c: _ci(c.mean_diff_ci, 3)),
        ("Cliff's δ", lambda c: f"{c.cliffs_delta:+.3f}"),
        ("  95% CI", lambda c: _ci(c.delta_ci, 3)),
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
    for path in result.files.values():
        note(f"wrote {path}")


@with_model_options
def units(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (see `blindspot layers --model ID`).")],
    k: Annotated[int, cli_option(UnitsRequest, "k")] = UnitsRequest.k,
    shown_units: Annotated[int, cli_option(UnitsRequest, "show_units")] = UnitsRequest.show_units,
    shown_random: Annotated[int, cli_option(UnitsRequest, "show_random")] = UnitsRequest.show_random,
    stat_random: Annotated[int | None, cli_option(UnitsRequest, "n_random")] = UnitsRequest.n_random,
    max_units: Annotated[int, cli_option(UnitsRequest, "max_units")] = UnitsRequest.max_units,
    pool: Annotated[str, cli_option(UnitsRequest, "pool")] = UnitsRequest.pool,
    space: Annotated[str, cli_option(UnitsRequest, "space")] = UnitsRequest.space,
    bottom: Annotated[bool, cli_option(UnitsRequest, "bottom")] = UnitsRequest.bottom,
    split: Annotated[str, cli_option(UnitsRequest, "split")] = UnitsRequest.split,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute activations; do not touch the cache.")
    ] = False,
    n: Annotated[int | None, cli_option(UnitsRequest, "n")] = UnitsRequest.n,
    seed: Seed = 0,
    model: ModelOptions = ModelOptions(),
    data: DataDir = None,
    image_size: ImageSize = None,
    classes: ClassesFile = None,
    device: Device = "auto",
    out_dir: OutDir = None,
    json_out: Json = False,
    threads: Threads = None,
    overwrite: Overwrite = False,
) -> None:
    """Top-k images of each unit and of random directions, scored and compared (§3, Figures 1–4)."""
    request = UnitsRequest(
        model=model.ref(),
        layer=layer,
        split=split,
        n=n,
        k=k,
        n_random=stat_random,
        max_units=max_units,
        show_units=shown_units,
        show_random=shown_random,
        pool=pool,
        space=space,
        bottom=bottom,
        seed=seed,
        data_dir=optional_path(data),
        use_cache=not no_cache,
        image_size=image_size,
        classes_file=optional_path(classes),
    )
    with cli_context(
        device, threads=threads, out=out_dir, overwrite=overwrite, hint="finished activations stay cached"
    ) as ctx:
        result = run_units(request, ctx)
    for line in result.notes:
        note(line)
    if json_out:
        print_json(result.to_json())
        return
    _print_result(result)


@with_model_options
def layers(
    model: ModelOptions = ModelOptions(),
    image_size: ImageSize = None,
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """The model's named layers with their kinds and output shapes (the names `units --layer` takes)."""
    request = LayersRequest(model.ref(), image_size)
    result = run_layers(request, RunContext(device=device))  # one forward pass: nothing to cancel
    if json_out:
        print_json(result.to_json())
        return
    table = Table(title=f"layers of {result.model} (φ = flattened output)")
    for col in ("name", "kind", "output shape", "φ dims"):
        table.add_column(col, justify="right" if col == "φ dims" else "left")
    for info in result.layers:
        table.add_row(info.name, info.kind, "×".join(str(s) for s in info.shape), f"{info.size:,}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("units")(units)
    app.command("layers")(layers)
