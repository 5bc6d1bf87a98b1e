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
    optional_path,
)
from engines.attack.problems import AttackConfig
from engines.core.runs import new_run_folder
from engines.reproduce.run import FULL_N, QUICK_N, ReproduceRequest, run_reproduce


def reproduce_cmd(
    quick: Annotated[bool, typer.Option("--quick", help=f"Smoke run with N={QUICK_N} images per set.")] = False,
    n: Annotated[
        int | None, typer.Option("--n", "-n", help=f"Images per adversarial set (default {FULL_N}, quick {QUICK_N}).")
    ] = None,
    c_steps: CSteps = 9,
    max_iter: MaxIter = 100,
    seed: Seed = 0,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: runs/reproduce-TIME).")] = None,
    data: DataDir = None,
    imagenet_dir: Annotated[
        Path | None,
        typer.Option(
            "--imagenet-dir",
            help="Your ImageNet images (e.g. the validation folder, DIR/<wnid>/*.JPEG): adds Fig. 5 on AlexNet.",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="A trained AlexNet state dict (torchvision layout): Table 5 and Fig. 5 on it."),
    ] = None,
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
