"""`blindspot robustness`: per model, the interval [certified lower bound, attack's distortion] (§4.2, §4.3)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from blindspot.console import cli_context, note, out, print_json
from blindspot.options import (
    CSteps,
    DataDir,
    Device,
    Json,
    MaxIter,
    OutDir,
    Overwrite,
    Seed,
    Tf32,
    Threads,
    cli_option,
)
from engines.attack.search import AttackConfig
from engines.core.models import as_model_ref
from engines.robustness.operation import RESULT_FILE, RobustnessRequest, RobustnessResult, run_robustness
from engines.transfer.request import model_refs


def _table(result: RobustnessResult) -> Table:
    t = Table(box=box.SIMPLE_HEAD)
    for col in (
        "model",
        "test err %",
        "attack dist.",
        "certified",
        "bound/attack",
        "global bound",
        "transfer %",
        "noise %",
    ):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in result.rows:
        extra = ["–" if v is None else f"{v:.1f}" for v in (r.transfer, r.noise)]
        t.add_row(
            r.model,
            f"{r.test_error:.2f}",
            f"{r.distortion:.4f}",
            f"{r.certified:.5f} ({r.certified_method})",
            f"{r.certified_over_attack:.3f}",
            "–" if r.certified_global is None else f"{r.certified_global:.5f}",
            *extra,
        )
    return t


def robustness(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="A model to measure (repeatable): zoo id, checkpoint, torchvision name."),
    ],
    reference: Annotated[str, cli_option(RobustnessRequest, "reference")] = str(RobustnessRequest.reference),
    split: Annotated[str, cli_option(RobustnessRequest, "split")] = RobustnessRequest.split,
    n: Annotated[int, cli_option(RobustnessRequest, "n")] = RobustnessRequest.n,
    c_steps: CSteps = AttackConfig.c_steps,
    max_iter: MaxIter = AttackConfig.max_iter,
    seed: Seed = 0,
    data: DataDir = None,
    out_dir: OutDir = None,
    device: Device = "auto",
    threads: Threads = None,
    tf32: Tf32 = False,
    json_out: Json = False,
    overwrite: Overwrite = False,
) -> None:
    """Test error, the L-BFGS attack's mean minimum distortion (an upper bound), a certified radius (a lower
    bound: the exact minimum for linear models, CROWN's otherwise; the global margin/(√2·L) beside it),
    transfer and noise error, per model."""
    request = RobustnessRequest(
        models=model_refs(model),
        reference=None if reference == "none" else as_model_ref(reference),
        split=split,
        n=n,
        seed=seed,
        config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
        data_dir=str(data) if data else None,
    )
    with cli_context(device, threads=threads, out=out_dir, overwrite=overwrite) as ctx:
        result = run_robustness(request, replace(ctx, tf32=tf32))
    if json_out:
        print_json(result.to_json())
    else:
        out.print(_table(result))
        note(f"run folder: {result.folder} ({RESULT_FILE}; the transfer matrix in transfer/)")


def register(app: typer.Typer) -> None:
    app.command("robustness")(robustness)
