"""`blindspot reproduce`: Tables 1–5 of the paper beside ours, as report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engines.core.runs import new_run_folder
from blindspot.console import note, print_json, progress_sink, resumable
from blindspot.options import SETS_CACHED, CSteps, DataDir, Device, Json, MaxIter, Seed, adversarial_settings
from engines.core.errors import InputError
from engines.reproduce.tables import FULL_N, QUICK_N, reproduce


def reproduce_cmd(
    quick: Annotated[bool, typer.Option("--quick", help=f"Smoke run with N={QUICK_N} images per set.")] = False,
    n: Annotated[
        int | None, typer.Option("--n", help=f"Images per adversarial set (default {FULL_N}, quick {QUICK_N}).")
    ] = None,
    c_steps: CSteps = 9,
    max_iter: MaxIter = 100,
    seed: Seed = 0,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: runs/reproduce-TIME).")] = None,
    data: DataDir = None,
    json_out: Json = False,
) -> None:
    """Recompute Tables 1–5 with the shipped zoo and write report.md beside the paper's numbers."""
    if n is not None and n < 1:
        raise InputError("--n must be at least 1")
    folder = out or new_run_folder(Path("runs"), "reproduce", "paper")
    settings = adversarial_settings(c_steps, max_iter, seed, device, data)
    with resumable(f"{SETS_CACHED} ({folder})"), progress_sink() as on_progress:
        result = reproduce(folder, quick=quick, n=n, on_progress=on_progress, **settings)
    if json_out:
        print_json({"report": str(result.report), "seconds": result.seconds, **result.tables})
    else:
        note(f"report: {result.report} ({result.seconds:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("reproduce")(reproduce_cmd)
