"""`blindspot train --model ID | --zoo paper`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from blindspot.console import cli_context, note, print_json
from blindspot.options import DataDir, Device, Json, Overwrite, Seed, Threads, cli_option
from engines.core.checkpoint import models_dir
from engines.core.errors import InputError
from engines.core.events import Event, ModelTrained, fan_out
from engines.train.hyper import HYPER, parse_grid
from engines.train.operation import TrainRequest, run_training, zoo_ids
from engines.train.seeds import parse_seeds


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
    optimizer: Annotated[str, cli_option(TrainRequest, "optimizer")] = TrainRequest.optimizer,
    epochs: Annotated[int | None, cli_option(TrainRequest, "epochs")] = TrainRequest.epochs,
    max_iter: Annotated[int | None, cli_option(TrainRequest, "max_iter")] = TrainRequest.max_iter,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the checkpoints (default: runs/models; the shipped zoo is never overwritten unless asked).",
        ),
    ] = None,
    into_shipped_zoo: Annotated[bool, cli_option(TrainRequest, "into_shipped_zoo")] = TrainRequest.into_shipped_zoo,
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
        float | None,
        typer.Option(help="Pool examples (fgm/vat: perturbed copies) per clean example in a minibatch (default 0.25)."),
    ] = None,
    adv_layers: Annotated[
        str | None,
        typer.Option(
            help="Layers whose outputs get examples: input and activation names, e.g. input,act1,act2 (default all)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Pool targets: random (default), nearest (the wrong class nearest by the linearised margin), "
            "next, least-likely or a label."
        ),
    ] = None,
    adv_c_steps: Annotated[int | None, typer.Option(help="c-search steps of each pool attack (default 5).")] = None,
    adv_max_iter: Annotated[int | None, typer.Option(help="L-BFGS iterations per c step (default 40).")] = None,
    warmup: Annotated[
        int | None, typer.Option(help="Clean epochs before the pool is first filled, or fgm/vat start (default 2).")
    ] = None,
    adv_cap: Annotated[
        str | None,
        typer.Option(
            help="Distortion cap of pool examples: rms in each layer's units, or auto (per layer, the median "
            "distortion of the first fill: the clean net's own minimum). Default: none."
        ),
    ] = None,
    adv_cap_policy: Annotated[
        str | None, typer.Option(help="Pool examples above --adv-cap: drop (default) or shrink onto the cap.")
    ] = None,
    adv_hidden: Annotated[
        str | None,
        typer.Option(
            help="Hidden-layer pool examples kept as the activation (default) or as a perturbation r "
            "re-applied to the current net's activation at each use."
        ),
    ] = None,
    adversarial_mode: Annotated[
        str | None,
        typer.Option(
            help="pool (§4.2, default); fgm: a fresh one-step L2 gradient perturbation per minibatch at each layer, "
            "true label; vat: virtual adversarial (KL to the clean prediction, no label)."
        ),
    ] = None,
    adv_eps: Annotated[
        float | None, typer.Option(help="fgm/vat: the perturbation's rms in each layer's units (default 0.05).")
    ] = None,
    adv_xi: Annotated[
        float | None, typer.Option(help="vat: the rms of the power iteration's probe (default 0.001).")
    ] = None,
    validation: Annotated[int | None, cli_option(TrainRequest, "validation")] = TrainRequest.validation,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="One model per seed (e.g. 0,1,2): mean ± sd of the errors; the first seed's model is saved.",
        ),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help=f"A hyper-parameter axis NAME=V1,V2 (repeatable: {', '.join(HYPER)}); every point is trained with "
            "the first seed, the lowest validation error chooses, then the seeds run with it. One value just sets it.",
        ),
    ] = None,
    weight_decay_mode: Annotated[
        str | None, cli_option(TrainRequest, "weight_decay_mode")
    ] = TrainRequest.weight_decay_mode,
    weight_decay: Annotated[float | None, cli_option(TrainRequest, "weight_decay")] = TrainRequest.weight_decay,
    lr_floor: Annotated[float | None, cli_option(TrainRequest, "lr_floor")] = TrainRequest.lr_floor,
    resume: Annotated[bool, cli_option(TrainRequest, "resume")] = TrainRequest.resume,
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
        "cap": adv_cap,
        "cap_policy": adv_cap_policy,
        "hidden": adv_hidden,
        "mode": adversarial_mode,
        "eps": adv_eps,
        "xi": adv_xi,
    }
    pool = {k: v for k, v in pool.items() if v is not None}
    if pool and not adversarial:
        first = next(iter(pool))
        plain = ("pool_size", "refresh", "refresh_every", "mix", "target", "warmup")
        flag = {"mode": "adversarial-mode"}.get(first, first if first in plain else f"adv-{first}").replace("_", "-")
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
        validation=validation,
        seeds=None if seeds is None else parse_seeds(seeds),
        weight_decay_mode=weight_decay_mode,
        weight_decay=weight_decay,
        lr_floor=lr_floor,
        grid=parse_grid(grid) if grid else None,
        resume=resume,
    )
    with cli_context(
        device,
        threads=threads,
        out=out,
        overwrite=overwrite,
        hint="models saved before the interrupt are kept; --resume continues from the last finished epoch",
    ) as ctx:
        result = run_training(request, replace(ctx, on_event=fan_out(ctx.on_event, _announce)))
    if json_out:
        print_json(result.to_json())
    folder = Path(result.folder)
    if folder.resolve() != models_dir().resolve():
        note(f"use them with BLINDSPOT_MODELS={folder} or --model {folder}/ID.safetensors")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
