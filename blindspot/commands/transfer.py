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
    Offset,
    Overwrite,
    Seed,
    Tf32,
    Threads,
    optional_path,
)
from engines.attack.problems import AttackConfig
from engines.attack.transfer import TransferMatrix, TransferRequest, run_transfer
from engines.core.errors import InputError
from engines.core.models import ModelRef


def _csv_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _floats(text: str | None, option: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None


def per_model(values: list[str] | None, option: str) -> dict[str | None, str]:
    """`NAME=VALUE` entries of a repeatable option, by model name; a bare VALUE (key None) applies to every
    torchvision or factory model without its own."""
    found: dict[str | None, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        key, val = (name.strip(), value.strip()) if sep else (None, item.strip())
        if key in found:
            raise InputError(f"{option} is given twice for {key or 'every model'}")
        found[key] = val
    return found


def _scaled(values: list[str] | None) -> tuple[tuple[str, float], ...]:
    out = []
    for name, value in per_model(values, "--scale-to").items():
        if name is None:
            raise InputError("--scale-to takes SOURCE=RMS, e.g. softmax2=0.1")
        out.append((name, _floats(value, "--scale-to")[0]))
    return tuple(out)


def model_refs(
    names: list[str], weights: dict[str | None, str], classes: dict[str | None, str], norms: dict[str | None, str]
) -> tuple[ModelRef, ...]:
    """One reference per listed model; `pkg.module:function` entries name the user's factories."""
    refs = []
    for name in names:
        is_factory = ":" in name and not Path(name).exists()
        plain = ModelRef(factory=name) if is_factory else ModelRef(name)
        own = plain.kind != "checkpoint"
        weight = weights.get(name, weights.get(None) if own else None)
        k = classes.get(name, classes.get(None) if own else None)
        try:
            num_classes = int(k) if k is not None else None
        except ValueError:
            raise InputError(f"--num-classes takes a number (or NAME=NUMBER), got {k!r}") from None
        refs.append(
            ModelRef(
                name="" if is_factory else name,
                factory=name if is_factory else None,
                weights=str(Path(weight).expanduser()) if weight else None,
                num_classes=num_classes,
                normalize=norms.get(name, norms.get(None) if own else None),
            )
        )
    return tuple(refs)


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
            "--weights",
            help="NAME=FILE: the state dict of a torchvision or factory model in the lists (repeat per model; a bare "
            "FILE applies to all of them). Safetensors or weights-only .pt/.pth.",
        ),
    ] = None,
    num_classes: Annotated[
        list[str] | None, typer.Option("--num-classes", help="NAME=K (or K for all): a head other than 1000 classes.")
    ] = None,
    normalize: Annotated[
        list[str] | None,
        typer.Option("--normalize", help="NAME=imagenet|none|MEANS:STDS (or one value for all non-zoo models)."),
    ] = None,
    split: Annotated[str, typer.Option(help="train, test, p1 or p2.")] = "train",
    n: Annotated[int, typer.Option("--n", "-n", help="Images per set (-n under torchrun).")] = 100,
    offset: Offset = 0,
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
    amplify: Annotated[
        float | None, typer.Option(help="Also rows of each set amplified to this rms (Table 4).")
    ] = None,
    scale_to: Annotated[
        list[str] | None,
        typer.Option(
            "--scale-to",
            help="SOURCE=RMS: also a row of that source's set with each perturbation scaled to the rms "
            "(e.g. the paper's distortion, to compare transfer rates at equal size).",
        ),
    ] = None,
    c_steps: CSteps = 9,
    max_iter: MaxIter = 100,
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
    options = (
        per_model(weights, "--weights"),
        per_model(num_classes, "--num-classes"),
        per_model(normalize, "--normalize"),
    )
    request = TransferRequest(
        sources=model_refs(_csv_list(sources), *options),
        targets=model_refs(_csv_list(targets), *options),
        split=split,
        n=n,
        offset=offset,
        seed=seed,
        config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
        data_dir=optional_path(data),
        classes_file=optional_path(classes),
        noise=tuple(_floats(noise, "--noise")),
        unclipped=tuple(_floats(unclipped, "--unclipped-noise")),
        amplify_rms=amplify,
        scaled=_scaled(scale_to),
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
