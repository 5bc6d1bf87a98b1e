"""`blindspot transfer`: cross-model transfer of adversarial examples (Tables 2 and 4)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from blindspot.console import cli_context, note, out, print_json
from blindspot.options import (
    SETS_CACHED,
    ClassesFile,
    CSteps,
    DataDir,
    Device,
    Json,
    MaxIter,
    Overwrite,
    Seed,
    Tf32,
    Threads,
    cli_option,
    optional_path,
)
from engines.attack.search import AttackConfig
from engines.core.models import ModelRef
from engines.core.options import option_spec
from engines.transfer.matrix import TransferMatrix
from engines.transfer.operation import run_transfer
from engines.transfer.request import MODEL_OPTIONS, TransferRequest, csv_items, model_refs, numbers, scaled_pairs

FLAGS = {name: option_spec(ModelRef, name).flag for name in MODEL_OPTIONS}  # what error messages call them


def transfer(
    sources: Annotated[
        str,
        typer.Option(
            help="Comma-separated source models whose adversarial sets are used: zoo ids, checkpoint paths, "
            "torchvision names, package.module:function factories."
        ),
    ] = "",
    targets: Annotated[str, typer.Option(help="Comma-separated target models (default: the sources).")] = "",
    weights: Annotated[
        list[str] | None,
        typer.Option(
            FLAGS["weights"],
            help="NAME=FILE: the state dict of a torchvision or factory model in the lists (repeat per model; a bare "
            "FILE applies to all of them). Safetensors or weights-only .pt/.pth.",
        ),
    ] = None,
    num_classes: Annotated[
        list[str] | None,
        typer.Option(FLAGS["num_classes"], help="NAME=K (or K for all): a head other than 1000 classes."),
    ] = None,
    normalize: Annotated[
        list[str] | None,
        typer.Option(FLAGS["normalize"], help="NAME=imagenet|none|MEANS:STDS (or one value for all non-zoo models)."),
    ] = None,
    split: Annotated[str, cli_option(TransferRequest, "split")] = TransferRequest.split,
    n: Annotated[int, cli_option(TransferRequest, "n")] = TransferRequest.n,
    offset: Annotated[int, cli_option(TransferRequest, "offset")] = TransferRequest.offset,
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
    amplify: Annotated[float | None, cli_option(TransferRequest, "amplify_rms")] = TransferRequest.amplify_rms,
    scale_to: Annotated[
        list[str] | None,
        typer.Option(
            "--scale-to",
            help="SOURCE=RMS: also a row of that source's set with each perturbation scaled to the rms "
            "(e.g. the paper's distortion, to compare transfer rates at equal size).",
        ),
    ] = None,
    c_steps: CSteps = AttackConfig.c_steps,
    max_iter: MaxIter = AttackConfig.max_iter,
    seed: Seed = 0,
    device: Device = "auto",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/transfer-TIME).")] = None,
    data: DataDir = None,
    classes: ClassesFile = None,
    json_out: Json = False,
    threads: Threads = None,
    tf32: Tf32 = False,
    overwrite: Overwrite = False,
) -> None:
    """Error of every target on every source's minimum-distortion adversarial set (--target all)."""
    options = (weights or [], num_classes or [], normalize or [])
    request = TransferRequest(
        sources=model_refs(csv_items(sources), *options, labels=FLAGS),
        targets=model_refs(csv_items(targets), *options, labels=FLAGS),
        split=split,
        n=n,
        offset=offset,
        seed=seed,
        config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
        data_dir=optional_path(data),
        classes_file=optional_path(classes),
        noise=tuple(numbers(noise, "--noise")),
        unclipped=tuple(numbers(unclipped, "--unclipped-noise")),
        amplify_rms=amplify,
        scaled=scaled_pairs(scale_to, "--scale-to"),
    )
    with cli_context(device, threads=threads, overwrite=overwrite, out=out_dir, hint=SETS_CACHED) as ctx:
        matrix = run_transfer(request, replace(ctx, tf32=tf32))
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
    if matrix.settings.get("resized"):
        table.caption = "; ".join(f"{name}: {text}" for name, text in matrix.settings["resized"].items())
    return table


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer)
