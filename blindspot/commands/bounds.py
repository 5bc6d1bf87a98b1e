"""`blindspot bounds`: per-layer frame bounds in the layout of the paper's Table 5 (§4.3)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from blindspot.console import cli_context, note, out, print_json
from blindspot.options import (
    Device,
    Json,
    ModelOptions,
    OutDir,
    Overwrite,
    Seed,
    Tf32,
    Threads,
    cli_option,
    with_model_options,
)
from engines.bounds.models import parse_input_shape
from engines.bounds.operation import BOUNDS_FILE, SPECTRA_FILE, BoundsRequest, run_bounds
from engines.bounds.results import PAPER_TABLE5, NetworkBounds


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


@with_model_options
def bounds(
    model: ModelOptions = ModelOptions(),
    input_shape: Annotated[str | None, cli_option(BoundsRequest, "input_shape")] = None,
    power_iters: Annotated[int, cli_option(BoundsRequest, "power_iters")] = BoundsRequest.power_iters,
    precision: Annotated[str, cli_option(BoundsRequest, "precision")] = BoundsRequest.precision,
    device: Device = "auto",
    seed: Seed = 0,
    json_out: Json = False,
    out_dir: OutDir = None,
    overwrite: Overwrite = False,
    threads: Threads = None,
    tf32: Tf32 = False,
) -> None:
    """Frame bounds of every Linear and Conv2d layer and the product of upper bounds (Table 5)."""
    request = BoundsRequest(
        model=model.ref(),
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        power_iters=power_iters,
        precision=precision,
        seed=seed,
    )
    hint = "finished layers are not kept; run the command again"
    with cli_context(device, threads=threads, out=out_dir, overwrite=overwrite, hint=hint) as ctx:
        result = run_bounds(request, replace(ctx, tf32=tf32), save=out_dir is not None)
    note(
        f"{result.model}: {result.source}; input {'×'.join(map(str, result.input_shape))}; "
        f"{precision} on {result.device}; {result.seconds:.1f} s"
    )
    if result.run:
        note(f"wrote {Path(result.run) / BOUNDS_FILE} and {Path(result.run) / SPECTRA_FILE}")
    if json_out:
        print_json(result.to_json())
    else:
        render(result)


def render(result: NetworkBounds) -> None:
    """Table 5's layout, plus the method, power iteration and (for AlexNet) the paper's values."""
    paper = {row["layer"]: row for row in PAPER_TABLE5} if result.model == "alexnet" else {}
    table = Table(
        title=f"Frame bounds: {result.model} at {'×'.join(map(str, result.input_shape))}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    for col in ("Layer", "Size", "Lower bound", "Upper bound", "power", *(["paper"] if paper else []), "method"):
        table.add_column(
            col, justify="right" if col.startswith(("Lower", "Upper", "power")) else "left", no_wrap=col != "method"
        )
    for layer in result.layers:
        power = layer.power["sigma"] if layer.power else None
        row = [layer.label, layer.size, _num(layer.lower) + ("†" if layer.wide else ""), _num(layer.upper), _num(power)]
        if paper:
            ref = paper.get(layer.label, {})
            row.append(f"{_num(ref.get('lower'))} / {_num(ref.get('upper'))}" if ref else "")
        table.add_row(*row, layer.short_method)
    out.print(table)
    if any(layer.kind == "conv" for layer in result.layers):
        out.print(
            "Conv bounds: the layer's circular version on its input grid, sup/inf over ω of ‖A(ω)‖ (the "
            "paper's method, exact); power: power iteration through the layer as it runs (its padding), a "
            "lower estimate of its norm.",
            highlight=False,
        )
    if any(layer.wide for layer in result.layers):
        out.print(
            "† wide: a null space, so the true lower frame bound is 0; shown is the smallest of the "
            "min(rows, cols) singular values (the paper's convention).",
            highlight=False,
        )
    kinds = Counter((f.kind, f.factor, f.paper_factor) for f in result.factors if f.kind not in ("Dropout", "Flatten"))
    parts = []
    for (kind, factor, paper_factor), n in kinds.items():
        text = f"{kind} ×{_num(factor)}" + (f" (paper ×{_num(paper_factor)})" if paper_factor != factor else "")
        parts.append(text + (f" [{n}]" if n > 1 else ""))
    if parts:
        out.print("Factors between layers: " + ", ".join(parts), highlight=False)
    lip = result.lipschitz_upper
    same = lip is not None and abs(lip - result.product_table) <= 1e-12 * abs(lip)
    out.print(
        f"Product of upper bounds{'' if same else ' (paper: max-pooling ×1)'}: {_num(result.product_table)}",
        highlight=False,
    )
    if lip is None:
        out.print(f"Upper Lipschitz bound: n/a ({result.lipschitz_note})", highlight=False)
    elif not same:
        out.print(
            f"Upper Lipschitz bound (guaranteed: layers as they run, exact factors): {_num(lip)}", highlight=False
        )
    else:
        out.print("It is a guaranteed upper Lipschitz bound of the network as it runs.", highlight=False)
    for line in result.notes:
        out.print(f"[yellow]note:[/yellow] {line}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bounds")(bounds)
