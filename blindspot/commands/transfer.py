"""`blindspot transfer`: cross-model transfer of adversarial examples (Tables 2 and 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from engines.core.runs import new_run_folder
from blindspot.console import note, out, print_json, progress_sink, resumable
from blindspot.options import SETS_CACHED, CSteps, DataDir, Device, Json, MaxIter, Offset, Seed, adversarial_settings
from engines.core.errors import InputError
from engines.attack.transfer import TransferMatrix, compute_transfer


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
) -> None:
    """Error of every target on every source's minimum-distortion adversarial set (--target all)."""
    src, tgt = _csv_list(sources), _csv_list(targets) or _csv_list(sources)
    if n < 1:
        raise InputError("--n must be at least 1")
    folder = out_dir or new_run_folder(Path("runs"), "transfer", "matrix")
    settings = adversarial_settings(c_steps, max_iter, seed, device, data)
    with resumable(SETS_CACHED), progress_sink() as on_progress:
        matrix = compute_transfer(
            src,
            tgt,
            split,
            n,
            folder,
            noise=_floats(noise, "--noise"),
            unclipped=_floats(unclipped, "--unclipped-noise"),
            amplify_rms=amplify,
            offset=offset,
            on_progress=on_progress,
            **settings,
        )
    if json_out:
        print_json(matrix.to_json() | {"folder": str(folder)})
    else:
        out.print(matrix_table(matrix))
        note(f"run folder: {folder} (matrix.json, matrix.csv, heatmap.png)")


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
