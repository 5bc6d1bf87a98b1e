"""`blindspot reproduce`: Tables 1–5 of the paper beside ours, as report.md."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from blindspot.console import cli_context, note, print_json
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
from engines.core.runs import new_run_folder
from engines.reproduce.operation import ReproduceRequest, run_reproduce


def reproduce_cmd(
    quick: Annotated[bool, cli_option(ReproduceRequest, "quick")] = ReproduceRequest.quick,
    n: Annotated[int | None, cli_option(ReproduceRequest, "n")] = ReproduceRequest.n,
    c_steps: CSteps = AttackConfig.c_steps,
    max_iter: MaxIter = AttackConfig.max_iter,
    seed: Seed = 0,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: runs/reproduce-TIME).")] = None,
    data: DataDir = None,
    imagenet_dir: Annotated[Path | None, cli_option(ReproduceRequest, "imagenet_dir")] = None,
    weights: Annotated[Path | None, cli_option(ReproduceRequest, "alexnet_weights")] = None,
    classes: ClassesFile = None,
    json_out: Json = False,
    threads: Threads = None,
    tf32: Tf32 = False,
    overwrite: Overwrite = False,
) -> None:
    """Recompute Tables 1–5 with the shipped zoo and write report.md beside the paper's numbers."""
    request = ReproduceRequest(
        quick=quick,
        n=n,
        seed=seed,
        config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
        data_dir=optional_path(data),
        imagenet_dir=optional_path(imagenet_dir),
        alexnet_weights=optional_path(weights),
        classes_file=optional_path(classes),
    )
    folder = out or new_run_folder(Path("runs"), "reproduce", "paper")  # named here: the hint shows it
    with cli_context(device, threads=threads, overwrite=overwrite, out=folder, hint=f"{SETS_CACHED} ({folder})") as ctx:
        result = run_reproduce(request, replace(ctx, tf32=tf32))
    if json_out:
        print_json(result.to_json())
    else:
        note(f"report: {result.report} ({result.seconds:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("reproduce")(reproduce_cmd)
