"""`blindspot robustness`: per model, the interval [certified lower bound, attack's distortion] (§4.2, §4.3)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from blindspot.commands.transfer import model_refs
from blindspot.console import cli_context, note, out, print_json
from blindspot.options import CSteps, DataDir, Device, Json, MaxIter, OutDir, Overwrite, Seed, Tf32, Threads
from engines.attack.problems import AttackConfig
from engines.robustness.operation import RESULT_FILE, RobustnessRequest, RobustnessResult, run_robustness


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
    reference: Annotated[
        str,
        typer.Option(
            help="Model whose adversarial examples are transferred to each (and whose rms the noise takes); 'none' to skip."
        ),
    ] = "n100-100-10",
    split: Annotated[str, typer.Option(help="train, test, p1 or p2.")] = "test",
    n: Annotated[int, typer.Option("--n", "-n", help="Correctly classified images per model.")] = 1000,
    c_steps: CSteps = 9,
    max_iter: MaxIter = 100,
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
        models=model_refs(model, {}, {}, {}),
        reference=None if reference == "none" else reference,
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
