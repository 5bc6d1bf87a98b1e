"""`blindspot train --model ID | --zoo paper`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from blindspot.console import note, print_json, progress_sink
from blindspot.options import DataDir, Device, Json, Seed
from engines.core.checkpoint import models_dir
from engines.core.device import resolve_device
from engines.core.errors import InputError
from engines.train.fit import OPTIMIZERS, train_zoo_model
from engines.core.zoo import ZOO

DEFAULT_OUT = Path("runs/models")


def train(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Zoo id to train (repeatable).")] = None,
    zoo: Annotated[str | None, typer.Option("--zoo", help="'paper' trains the whole zoo of Tables 1 and 3.")] = None,
    optimizer: Annotated[
        str, typer.Option(help="recipe (the zoo's own), lbfgs (full batch) or adam (minibatch).")
    ] = "recipe",
    epochs: Annotated[int | None, typer.Option(help="Adam epochs (default: the recipe's).")] = None,
    max_iter: Annotated[int | None, typer.Option(help="L-BFGS iterations (default: the recipe's).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the checkpoints (default: runs/models; the shipped zoo is never overwritten unless asked).",
        ),
    ] = None,
    data: DataDir = None,
    device: Device = "auto",
    seed: Seed = 0,
    json_out: Json = False,
) -> None:
    """Train zoo models with the paper's weight decay; writes <id>.safetensors + <id>.json."""
    if zoo is not None and zoo != "paper":
        raise InputError(f"unknown zoo {zoo!r}: the only zoo is 'paper'")
    ids = list(ZOO) if zoo == "paper" else list(model or [])
    if not ids:
        raise InputError("say what to train: --model ID (see `blindspot models`) or --zoo paper")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    for name, value in (("--epochs", epochs), ("--max-iter", max_iter)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1 (leave it out for the recipe's own)")
    dev = resolve_device(device)
    target = out or DEFAULT_OUT
    results = []
    with progress_sink() as on_progress:
        for model_id in ids:
            res = train_zoo_model(
                model_id,
                target,
                seed=seed,
                device=dev,
                optimizer=optimizer,
                data_dir=data,
                max_iter=max_iter,
                epochs=epochs,
                on_progress=on_progress,
            )
            m = res.meta["metrics"]
            note(f"{model_id}: train {m['train_error']:.2f}% test {m['test_error']:.2f}% -> {res.path}")
            results.append({"id": model_id, "path": str(res.path), "metrics": m, "training": res.meta["training"]})
    if json_out:
        print_json(results)
    if target.resolve() != models_dir().resolve():
        note(f"use them with BLINDSPOT_MODELS={target} or --model {target}/ID.safetensors")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
