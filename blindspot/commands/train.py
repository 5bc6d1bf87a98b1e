"""`blindspot train --model ID | --zoo paper`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from blindspot.console import cli_context, note, print_json
from blindspot.options import DataDir, Device, Json, Overwrite, Seed, Threads
from engines.core.checkpoint import models_dir
from engines.core.errors import InputError
from engines.core.events import Event, ModelTrained, fan_out
from engines.train.operation import TrainRequest, run_training, zoo_ids


def _announce(event: Event) -> None:
    """One log line per saved model, as it is saved (a whole zoo takes hours)."""
    if isinstance(event, ModelTrained):
        m = event.metrics
        note(f"{event.model_id}: train {m['train_error']:.2f}% test {m['test_error']:.2f}% -> {event.path}")


def train(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Zoo id to train (repeatable).")] = None,
    zoo: Annotated[
        str | None,
        typer.Option("--zoo", help="'paper': the zoo of Tables 1 and 3; 'adversarial': §4.2's models and ablation."),
    ] = None,
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
    into_shipped_zoo: Annotated[
        bool,
        typer.Option(
            "--into-shipped-zoo",
            help="Allow --out to be the shipped sample_data/models (regenerating the zoo the README quotes).",
        ),
    ] = False,
    adversarial: Annotated[
        bool,
        typer.Option(
            "--adversarial",
            help="§4.2: train with a pool of adversarial examples (per layer) mixed into every minibatch; "
            "a plain zoo model is saved as ID-adv. The n100-100-10-adv* zoo models do this by their recipe.",
        ),
    ] = False,
    pool_size: Annotated[int | None, typer.Option(help="Adversarial examples in the pool (default 12000).")] = None,
    refresh: Annotated[
        float | None, typer.Option(help="Fraction of the pool regenerated at each refresh (default 0.2).")
    ] = None,
    refresh_every: Annotated[int | None, typer.Option(help="Epochs between pool refreshes (default 1).")] = None,
    mix: Annotated[
        float | None, typer.Option(help="Pool examples per clean example in a minibatch (default 0.25).")
    ] = None,
    adv_layers: Annotated[
        str | None,
        typer.Option(
            help="Layers whose outputs get examples: input and activation names, e.g. input,act1,act2 (default all)."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Pool targets: random (default), next, least-likely or a label.")
    ] = None,
    adv_c_steps: Annotated[int | None, typer.Option(help="c-search steps of each pool attack (default 5).")] = None,
    adv_max_iter: Annotated[int | None, typer.Option(help="L-BFGS iterations per c step (default 40).")] = None,
    warmup: Annotated[
        int | None, typer.Option(help="Clean epochs before the pool is first filled (default 2).")
    ] = None,
    data: DataDir = None,
    device: Device = "auto",
    seed: Seed = 0,
    json_out: Json = False,
    threads: Threads = None,
    overwrite: Overwrite = False,
) -> None:
    """Train zoo models with the paper's weight decay; writes <id>.safetensors + <id>.json.

    On data other than MNIST the id gets the data's name (softmax1-fashionmnist); an existing
    checkpoint of the same id is replaced only with --overwrite.
    """
    pool = {
        "pool_size": pool_size,
        "refresh": refresh,
        "refresh_every": refresh_every,
        "mix": mix,
        "layers": None if adv_layers is None else [v.strip() for v in adv_layers.split(",") if v.strip()],
        "target": target,
        "c_steps": adv_c_steps,
        "max_iter": adv_max_iter,
        "warmup": warmup,
    }
    pool = {k: v for k, v in pool.items() if v is not None}
    if pool and not adversarial:
        flag = {"layers": "adv-layers", "c_steps": "adv-c-steps", "max_iter": "adv-max-iter"}.get(
            next(iter(pool)), next(iter(pool)).replace("_", "-")
        )
        raise InputError(f"--{flag} is a pool option: add --adversarial")
    request = TrainRequest(
        models=zoo_ids(model, zoo),
        optimizer=optimizer,
        epochs=epochs,
        max_iter=max_iter,
        seed=seed,
        data_dir=str(data) if data else None,
        into_shipped_zoo=into_shipped_zoo,
        adversarial=pool if adversarial else None,
    )
    with cli_context(
        device, threads=threads, out=out, overwrite=overwrite, hint="models saved before the interrupt are kept"
    ) as ctx:
        result = run_training(request, replace(ctx, on_event=fan_out(ctx.on_event, _announce)))
    if json_out:
        print_json(result.to_json())
    folder = Path(result.folder)
    if folder.resolve() != models_dir().resolve():
        note(f"use them with BLINDSPOT_MODELS={folder} or --model {folder}/ID.safetensors")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
