"""`blindspot transfer`: cross-model transfer of adversarial examples (Tables 2 and 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from blindspot.console import cli_context, note, out, print_json
from blindspot.options import SETS_CACHED, CSteps, DataDir, Device, Json, MaxIter, Offset, Overwrite, Seed, Threads
from engines.attack.problems import AttackConfig
from engines.attack.transfer import TransferMatrix, TransferRequest, run_transfer
from engines.core.errors import InputError


def _csv_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _floats(text: str | None, option: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None


def transfer(
    sources: Annotated[str, typer.Option(help="Comma-separated source models whose adversarial sets are used.")] = "",
    targets: Annotated[str, typer.Option(help="Comma-separated target models (default: the sources).")] = "",
    split: Annotated[str, typer.Option(help="train, test, p1 or p2.")] = "train",
    n: Annotated[int, typer.Option("--n", help="Images per set.")] = 100,
    offset: Offset = 0,
    noise: Annotated[
        str | None, typer.Option(help="Gaussian-noise rows clipped to [0,1] at these rms values, e.g. 0.1,0.3.")
    ] = None,
    unclipped: Annotated[
        str | None,
        typer.Option(
            "--unclipped-noise",
            help="Rows of x + N(0, sd²) left outside [0,1] (the paper's likely noise), e.g. 0.1,0.3.",
        ),
    ] = None,
    amplify: Annotated[
        float | None, typer.Option(help="Also rows of each set amplified to this rms (Table 4).")
    ] = None,
    c_steps: CSteps = 9,
    max_iter: MaxIter = 100,
    seed: Seed = 0,
    device: Device = "auto",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/transfer-TIME).")] = None,
    data: DataDir = None,
    json_out: Json = False,
    threads: Threads = None,
    overwrite: Overwrite = False,
) -> None:
    """Error of every target on every source's minimum-distortion adversarial set (--target all)."""
    request = TransferRequest(
        sources=tuple(_csv_list(sources)),
        targets=tuple(_csv_list(targets)),
        split=split,
        n=n,
        offset=offset,
        seed=seed,
        config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
        data_dir=str(data) if data else None,
        noise=tuple(_floats(noise, "--noise")),
        unclipped=tuple(_floats(unclipped, "--unclipped-noise")),
        amplify_rms=amplify,
    )
    with cli_context(device, threads=threads, overwrite=overwrite, out=out_dir, hint=SETS_CACHED) as ctx:
        matrix = run_transfer(request, ctx)
    if json_out:
        print_json(matrix.to_json() | {"folder": str(matrix.folder)})
    else:
        out.print(matrix_table(matrix))
        note(f"run folder: {matrix.folder} (matrix.json, matrix.csv, heatmap.png)")


def matrix_table(matrix: TransferMatrix) -> Table:
    table = Table(title=f"error (%) of each column's model on each row's set ({matrix.split}, n={matrix.n})")
    table.add_column("set")
    for c in matrix.columns:
        table.add_column(c, justify="right")
    table.add_column("rms", justify="right")
    for row, vals in zip(matrix.rows, matrix.values, strict=True):
        table.add_row(row.name, *[f"{v:.1f}" for v in vals], f"{row.distortion:.3f}")
    return table


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer)
