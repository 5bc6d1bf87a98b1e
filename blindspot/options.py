"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engines.core.choices import DEVICES
from engines.core.models import ModelRef as EngineModelRef

Device = Annotated[
    str, typer.Option("--device", help=f"{', '.join(DEVICES)} (auto = cuda when present; cuda:N picks a card).")
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for the computation (default: torch's, one per core); recorded in run.json.",
    ),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Write into an --out folder that already holds results (they are replaced).")
]
Seed = Annotated[
    int,
    typer.Option("--seed", min=0, max=2**63 - 1, help="Random seed (results are reproducible for a seed on the CPU)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout; logs go to stderr.")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="An MNIST-format IDX folder, an image folder (DIR/<class>/*.png|jpg; train/ and val/ subfolders are "
        "splits), a flat image folder with labels.csv (file,label), or the CIFAR-10/100 binary distribution. "
        "Default: the shipped sample_data/mnist.",
    ),
]
ModelRef = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="A zoo id (see `blindspot models`), a checkpoint path, or a torchvision classifier name."
    ),
]
OptionalModel = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="A zoo id (see `blindspot models`), a checkpoint path, or a torchvision classifier name."
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="State dict for a torchvision name or --model-factory: .safetensors, or .pt/.pth read with "
        "weights_only (never unpickled). Without it the model has random weights, and every output says so.",
    ),
]
ModelFactory = Annotated[
    str | None,
    typer.Option(
        "--model-factory",
        help="Your own architecture: package.module:function returning an nn.Module (your code, imported because "
        "you name it; the working folder is searched). Use with --weights.",
    ),
]
NumClasses = Annotated[
    int | None,
    typer.Option("--num-classes", min=2, help="Classes of the model's head when it differs from 1000 (torchvision)."),
]
Normalize = Annotated[
    str | None,
    typer.Option(
        "--normalize",
        help="The model's input normalization: imagenet, none, or MEANS:STDS (0.5,0.5,0.5:0.2,0.2,0.2). Images, the "
        "attack's box and distances stay in pixels [0, 1]. Default: imagenet for torchvision names, else none.",
    ),
]
ImageSize = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        min=1,
        max=16384,
        help="Resize the shorter side and centre-crop images to this side (default: the model's, e.g. 224 "
        "for torchvision, 28 for the zoo; else the images' own).",
    ),
]
ClassesFile = Annotated[
    Path | None,
    typer.Option(
        "--classes",
        help="Class names (or WordNet ids) one per line in the model's output order: maps an image folder's "
        "class folders to the model's labels (ImageNet).",
    ),
]
OutDir = Annotated[Path | None, typer.Option("--out", help="Run folder for results (created; written atomically).")]
CSteps = Annotated[int, typer.Option("--c-steps", help="Runs of the search over c per image (bracket, then bisect).")]
MaxIter = Annotated[int, typer.Option("--max-iter", help="L-BFGS-B iterations per value of c.")]
Offset = Annotated[int, typer.Option("--offset", help="Index of the first image.")]


def model_ref(
    model: str | None,
    weights: Path | None = None,
    factory: str | None = None,
    num_classes: int | None = None,
    normalize: str | None = None,
) -> EngineModelRef:
    """The typed model reference the engines take, from the options every model-taking command has."""
    return EngineModelRef(
        name=str(Path(model).expanduser()) if model and model.startswith("~") else (model or ""),
        weights=str(weights.expanduser()) if weights is not None else None,
        factory=factory,
        num_classes=num_classes,
        normalize=normalize,
    )


def optional_path(path: Path | None) -> str | None:
    """A path option as the engines record it, with ~ expanded."""
    return str(path.expanduser()) if path is not None else None


SETS_CACHED = "finished adversarial sets stay cached; run the same command again to go on"
