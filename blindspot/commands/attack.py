"""`blindspot attack`: the box-constrained L-BFGS attack of §4.1 on a slice of any image data."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from blindspot.console import cli_context, note, print_json
from blindspot.console import out as stdout_console
from blindspot.options import (
    ClassesFile,
    CSteps,
    DataDir,
    Device,
    ImageSize,
    Json,
    MaxIter,
    ModelOptions,
    Offset,
    Overwrite,
    Seed,
    Tf32,
    Threads,
    cli_option,
    optional_path,
    with_model_options,
)
from engines.attack.operation import AttackRequest, AttackResult, resume_attack, run_attack
from engines.attack.search import AttackConfig
from engines.core.errors import InputError
from engines.core.runs import new_run_folder


@with_model_options
def attack(
    model: ModelOptions = ModelOptions(),
    split: Annotated[str, cli_option(AttackRequest, "split")] = AttackRequest.split,
    n: Annotated[int, cli_option(AttackRequest, "n")] = AttackRequest.n,
    offset: Offset = AttackRequest.offset,
    target: Annotated[str, cli_option(AttackRequest, "target")] = AttackRequest.target,
    c_steps: CSteps = AttackConfig.c_steps,
    max_iter: MaxIter = AttackConfig.max_iter,
    distance: Annotated[str, cli_option(AttackConfig, "distance")] = AttackConfig.distance,
    c_init: Annotated[float | None, cli_option(AttackConfig, "c_init")] = AttackConfig.c_init,
    warm_start: Annotated[bool, cli_option(AttackConfig, "warm_start")] = AttackConfig.warm_start,
    budget: Annotated[int | None, cli_option(AttackConfig, "budget")] = AttackConfig.budget,
    temperature: Annotated[float, cli_option(AttackConfig, "temperature")] = AttackConfig.temperature,
    batch_size: Annotated[int | None, cli_option(AttackRequest, "batch_size")] = AttackRequest.batch_size,
    seed: Seed = 0,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/attack-MODEL-TIME).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Finish an interrupted run in this folder.")] = None,
    data: DataDir = None,
    image_size: ImageSize = None,
    classes: ClassesFile = None,
    json_out: Json = False,
    threads: Threads = None,
    tf32: Tf32 = False,
    overwrite: Overwrite = False,
) -> None:
    """Find the closest image of another class (Szegedy et al. §4.1).

    Minimises c·D(r) + loss(x + r, target) over x + r in [0, 1] with box-constrained L-BFGS for each image,
    keeping the LARGEST c whose minimiser reaches the target (c multiplies the distance here, as in the paper).
    """
    if resume is None:
        if not model.names_a_model:
            raise InputError(
                "say which model to attack: --model ID|PATH|TORCHVISION_NAME or --model-factory (or --resume DIR)"
            )
        request = AttackRequest(
            model=model.ref(),
            split=split,
            n=n,
            offset=offset,
            target=target,
            seed=seed,
            config=AttackConfig(
                c_steps=c_steps,
                max_iter=max_iter,
                distance=distance,
                c_init=c_init,
                warm_start=warm_start,
                budget=budget,
                temperature=temperature,
            ),
            batch_size=batch_size,
            data_dir=optional_path(data),
            image_size=image_size,
            classes_file=optional_path(classes),
        )
    else:
        _note_ignored(resume, model, ctx_options=locals())
    folder = resume or out or new_run_folder(Path("runs"), "attack", str(request.model) if resume is None else "model")
    with cli_context(
        device,
        threads=threads,
        overwrite=overwrite,
        out=folder,
        hint=f"finished chunks are kept; finish with `blindspot attack --resume {folder}`",
    ) as ctx:
        ctx = replace(ctx, tf32=tf32)
        result = resume_attack(resume, ctx) if resume is not None else run_attack(request, ctx)
    if json_out:
        print_json(result.to_json())
    else:
        print_summary(result)


RESUME_FIXED = (  # besides the model options, which --resume ignores too
    "split",
    "n",
    "offset",
    "target",
    "c_steps",
    "max_iter",
    "distance",
    "c_init",
    "budget",
    "temperature",
    "seed",
    "image_size",
    "classes",
)


def _note_ignored(resume: Path, model: ModelOptions, ctx_options: dict) -> None:
    """--resume finishes the run as it was started: say which of the given options it does not use."""
    defaults = {p.name: p.default for p in inspect.signature(attack).parameters.values()}
    given = model.given() + [
        f"--{k.replace('_', '-')}" for k in (*RESUME_FIXED, "out") if ctx_options.get(k) != defaults.get(k)
    ]
    if given:
        note(f"--resume uses the settings {resume} was started with; {', '.join(given)} ignored")


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def print_summary(r: AttackResult) -> None:
    s = r.to_json()
    shape = "×".join(str(v) for v in s.get("image_shape") or [])
    table = Table(title=f"attack on {s['model']} ({s['split']}, n={s['n']}, {shape}, target={s['target']})")
    for col in ("success", "mean distortion", "median", "mean L2", "mean L∞", "seconds", "device"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{100 * s['success_rate']:.1f}%",
        _fmt(s["mean_distortion"]),
        _fmt(s["median_distortion"]),
        _fmt(s["mean_l2"], ".3f"),
        _fmt(s["mean_linf"], ".3f"),
        f"{s['seconds']:.1f}",
        s["device"],
    )
    stdout_console.print(table)
    if s.get("evaluations_per_image") is not None:
        note(
            f"model evaluations per image: {s['evaluations_per_image']:.0f} forward+backward, "
            f"{s['forward_evaluations_per_image'] or 0:.0f} forward only"
        )
    if s.get("random_init"):
        note(
            f"{s['model']} has random weights ({s['model_source']}): these figures say nothing about a trained network"
        )
    note(f"run folder: {s['run']}")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)
