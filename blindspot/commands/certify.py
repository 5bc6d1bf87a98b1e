"""`blindspot certify`: both ends of each image's minimum adversarial distortion (issue 25)."""

from __future__ import annotations

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
    Threads,
    optional_path,
    with_model_options,
)
from engines.attack.search import AttackConfig
from engines.certify.operation import METHODS, CertifyRequest, CertifyResult, run_certify
from engines.core.choices import SPLITS
from engines.core.errors import InputError
from engines.core.runs import new_run_folder


@with_model_options
def certify(
    model: ModelOptions = ModelOptions(),
    split: Annotated[str, typer.Option(help=", ".join(SPLITS) + ".")] = CertifyRequest.split,
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = CertifyRequest.n,
    offset: Offset = CertifyRequest.offset,
    target: Annotated[
        str, typer.Option(help="all (untargeted: the closest wrong label) or a class label (targeted).")
    ] = CertifyRequest.target,
    method: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(METHODS)}: auto is exact for models whose logits are affine in the input, "
            "alpha-crown (CROWN with optimised slopes) otherwise; crown, ibp and lipschitz for comparison."
        ),
    ] = CertifyRequest.method,
    attack_run: Annotated[
        Path | None, typer.Option("--attack-run", help="Read this finished attack run instead of attacking.")
    ] = None,
    probes: Annotated[
        int, typer.Option("--probes", min=1, help="CROWN evaluations per image (radius search).")
    ] = CertifyRequest.probes,
    c_steps: CSteps = AttackConfig.c_steps,
    max_iter: MaxIter = AttackConfig.max_iter,
    seed: Seed = CertifyRequest.seed,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/certify-MODEL-TIME).")] = None,
    data: DataDir = None,
    image_size: ImageSize = None,
    classes: ClassesFile = None,
    json_out: Json = False,
    threads: Threads = None,
    overwrite: Overwrite = False,
) -> None:
    """Bracket each image's minimum adversarial distortion: the attack's distance above, a certified bound below.

    The lower end is the exact minimum (a convex QP) for models whose logits are affine in the input, else a
    radius proven by linear bound propagation (α-CROWN) over the L2 ball ∩ [0, 1] box. Distortions are rms over
    pixels, as in the paper's Table 1.
    """
    if not model.names_a_model:
        raise InputError("say which model to certify: --model ID|PATH|TORCHVISION_NAME or --model-factory")
    if target != "all":
        try:
            int(target)
        except ValueError:
            raise InputError(f"--target must be all or a class label, got {target!r}") from None
    request = CertifyRequest(
        model=model.ref(),
        split=split,
        n=n,
        offset=offset,
        target=target,
        method=method,
        seed=seed,
        config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
        attack_run=optional_path(attack_run),
        data_dir=optional_path(data),
        image_size=image_size,
        classes_file=optional_path(classes),
        probes=probes,
    )
    folder = out or new_run_folder(Path("runs"), "certify", str(request.model))
    with cli_context(device, threads=threads, overwrite=overwrite, out=folder) as ctx:
        result = run_certify(request, ctx)
    if json_out:
        print_json(result.to_json())
    else:
        print_summary(result)


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def print_summary(r: CertifyResult) -> None:
    table = Table(title=f"certify {r.model} ({r.method}, n={r.n}, target={r.target}; rms distortion)")
    cols = ["certified", "mean lower", "mean upper", "median up/low", "mean up/low", "violations", "seconds"]
    if r.exact:
        cols[3:5] = ["attack/exact mean", "attack/exact max"]
    for col in cols:
        table.add_column(col, justify="right")
    ratios = (
        (_fmt(r.attack_over_exact_mean), _fmt(r.attack_over_exact_max))
        if r.exact
        else (_fmt(r.median_ratio, ".2f"), _fmt(r.mean_ratio, ".2f"))
    )
    table.add_row(
        f"{r.certified}/{r.n}",
        _fmt(r.mean_lower),
        _fmt(r.mean_upper),
        *ratios,
        str(r.violations),
        f"{r.seconds:.1f} (attack {_fmt(r.attack_seconds, '.1f')})",
    )
    stdout_console.print(table)
    if r.median_lipschitz_ratio is not None:
        note(f"the global Lipschitz bound alone: median upper/lower {r.median_lipschitz_ratio:.1f}")
    note(f"run folder: {r.run} (certify.json, figure.png; the attack in {r.attack_run})")


def register(app: typer.Typer) -> None:
    app.command("certify")(certify)
