"""Options shared by several commands, defined once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from typer.models import OptionInfo

from engines.attack.request import AttackRequest
from engines.attack.search import AttackConfig
from engines.core.choices import DEVICES
from engines.core.models import ModelRef as EngineModelRef
from engines.core.options import option_spec

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
Tf32 = Annotated[
    bool,
    typer.Option(
        "--tf32",
        help="Let float32 products and convolutions run in TF32 on Ampere and later GPUs: faster, but a ~1e-3 "
        "relative error, far above the float32 rounding the L-BFGS line search assumes (runs stop earlier, results "
        "differ from the CPU's). Off by default; recorded in run.json. No effect on the CPU.",
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


# every option cli_option made, with the (request class, field) it declares: the parity test walks the commands'
# signatures and checks each such parameter's default against its declaration (OptionInfo is not hashable by value)
_DECLARED: list[tuple[OptionInfo, type, str]] = []


@functools.cache  # one option per field, however often the commands' annotations are evaluated
def cli_option(request: type, name: str) -> OptionInfo:
    """The Typer option of a request field, from its declaration (`engines.core.options.option`): its flags,
    its help and, where the declaration says so, its range. Use it as `Annotated[TYPE, cli_option(Request,
    "field")] = Request.field`, so the flag, the help and the default all come from the one declaration."""
    spec = option_spec(request, name)
    low, high = (spec.min, spec.max) if spec.cli_range else (None, None)
    info: OptionInfo = typer.Option(*spec.flags, help=spec.help, min=low, max=high)
    _DECLARED.append((info, request, name))
    return info


def declaration_of(info: object) -> tuple[type, str] | None:
    """The (request class, field) whose declaration `cli_option` made this option from; None for other options."""
    return next(((request, name) for made, request, name in _DECLARED if made is info), None)


CSteps = Annotated[int, cli_option(AttackConfig, "c_steps")]
MaxIter = Annotated[int, cli_option(AttackConfig, "max_iter")]
Offset = Annotated[int, cli_option(AttackRequest, "offset")]


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


@dataclass(frozen=True)
class ModelOptions:
    """The options that name one model, as given on the command line: the one place they are defined.

    Each field is one option of every command decorated with `with_model_options`, in this order, with the
    field's annotation (its Typer option) and default. `ref()` turns them into the engines' `ModelRef`,
    refusing bad input with an `InputError` (exit code 2, one line).
    """

    model: OptionalModel = None
    weights: Weights = None
    model_factory: ModelFactory = None
    num_classes: NumClasses = None
    normalize: Normalize = None

    def ref(self) -> EngineModelRef:
        """The model reference, validated (an `InputError` says what is wrong)."""
        return model_ref(self.model, self.weights, self.model_factory, self.num_classes, self.normalize)

    @property
    def names_a_model(self) -> bool:
        """Whether --model or --model-factory is given."""
        return self.model is not None or self.model_factory is not None

    def given(self) -> list[str]:
        """The options given with a value other than their default, as their flags (--model, --weights, ...)."""
        return [f"--{f.name.replace('_', '-')}" for f in fields(self) if getattr(self, f.name) != f.default]


def _model_parameters(kind: Any) -> list[inspect.Parameter]:
    hints = get_type_hints(ModelOptions, include_extras=True)
    return [inspect.Parameter(f.name, kind, default=f.default, annotation=hints[f.name]) for f in fields(ModelOptions)]


def with_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the model options of `ModelOptions`, in one place.

    The command declares one parameter `model: ModelOptions` where the options belong in its `--help`; Typer
    sees (through `__signature__`) the fields of `ModelOptions` there instead, and the command is called with
    them gathered into one `ModelOptions`.
    """
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    names = [p.name for p in params]
    if "model" not in names or params[names.index("model")].annotation is not ModelOptions:
        raise TypeError(f"{command.__name__} needs a parameter `model: ModelOptions` for with_model_options")
    at = names.index("model")
    shared = _model_parameters(params[at].kind)
    clash = {p.name for p in shared} & (set(names) - {"model"})
    if clash:
        raise TypeError(f"{command.__name__} has its own {', '.join(sorted(clash))}: with_model_options defines them")
    params[at : at + 1] = shared
    shared_names = [p.name for p in shared]

    @functools.wraps(command)
    def with_model(**kwargs: Any) -> Any:
        options = ModelOptions(**{name: kwargs.pop(name) for name in shared_names})
        return command(model=options, **kwargs)

    new_signature = signature.replace(parameters=params)
    with_model.__signature__ = new_signature  # type: ignore[attr-defined]
    with_model.__annotations__ = {p.name: p.annotation for p in params} | {"return": new_signature.return_annotation}
    return with_model


def optional_path(path: Path | None) -> str | None:
    """A path option as the engines record it, with ~ expanded."""
    return str(path.expanduser()) if path is not None else None


SETS_CACHED = "finished adversarial sets stay cached; run the same command again to go on"
