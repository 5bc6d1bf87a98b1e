"""The train operation: `run_training(request, ctx)`, called alike by `blindspot train` and the Models screen.

Output policy, one rule for every caller: the checkpoints (`<id>.safetensors` + `<id>.json`) go to
`ctx.out` when given, else to `<ctx.runs_root>/models`; a checkpoint already there under the same
id is replaced only with `ctx.overwrite` (checked for every model before any training). On data
other than MNIST a model is saved as `<zoo id>-<data>` (`trained_model_id`). The shipped `sample_data` (the zoo the
README's numbers come from) is never written unless the request says `into_shipped_zoo`.

No run folder (run.json) is made: a models folder holds several checkpoints and is reused by
later trainings, and a checkpoint's sidecar already records how it was trained. The folder is
proved writable before any training starts, so hours of training are never lost to a bad --out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.core.choices import OPTIMIZERS
from engines.core.context import RunContext
from engines.core.data import dataset_identity, load_split, sample_data_dir
from engines.core.errors import InputError
from engines.core.events import ModelTrained
from engines.core.options import field_error, option
from engines.core.runs import check_writable
from engines.core.zoo import ZOO, build_model
from engines.train.fit import adversarial_id, adversarial_settings, train_zoo_model, trained_model_id
from engines.train.layer_cuts import layer_cuts
from engines.train.protocol import DECAY_MODES, check_validation_fits, protocol_for
from engines.train.seeds import check_seeds, train_seeds

ZOOS = ("paper", "adversarial")  # `--zoo paper`: the zoo of Tables 1 and 3; `--zoo adversarial`: §4.2's models
MODELS_SUBFOLDER = "models"


def zoo_ids(models: Iterable[str] | None, zoo: str | None) -> tuple[str, ...]:
    """The ids a `--model …` / `--zoo NAME` choice names (checked: a named zoo must exist)."""
    if zoo is not None and zoo not in ZOOS:
        raise InputError(f"unknown zoo {zoo!r}: choose {' or '.join(ZOOS)}")
    if zoo is not None:
        return tuple(k for k, e in ZOO.items() if e.group == zoo)
    return tuple(models or ())


@dataclass(frozen=True)
class TrainRequest:
    """Which zoo models to train and how: everything that fixes the weights (seed, data, budget)."""

    models: tuple[str, ...]
    optimizer: str = option(
        "recipe", choices=OPTIMIZERS, help="recipe (the zoo's own), lbfgs (full batch) or adam (minibatch)."
    )
    epochs: int | None = option(  # Adam epochs (None: the recipe's)
        None, min=1, help="Adam epochs (default: the recipe's)."
    )
    max_iter: int | None = option(  # L-BFGS iterations (None: the recipe's)
        None, label="L-BFGS iterations", min=1, help="L-BFGS iterations (default: the recipe's)."
    )
    seed: int = 0
    data_dir: str | None = None
    into_shipped_zoo: bool = option(  # allow writing into the shipped sample_data (regenerating the zoo)
        False,
        label="into the shipped zoo",
        help="Allow --out to be the shipped sample_data/models (regenerating the zoo the README quotes).",
    )
    adversarial: dict[str, Any] | None = None  # §4.2's pool options over the recipe's (None: the recipe's training)
    validation: int | None = option(  # the protocol (engines.train.protocol); None: the recipe's
        None,
        label="validation images",
        min=0,
        help="Training images held out to choose the best epoch (default: the recipe's, 0 for Table 1, 10000 for §4.2).",
    )
    seeds: tuple[int, ...] | None = None  # one model per seed, the first saved with the study (None: `seed` alone)
    weight_decay_mode: str | None = option(
        None,
        label="weight-decay mode",
        help=f"{' or '.join(DECAY_MODES)}: the paper's lambda*sum(w^2)/k in the loss, or AdamW's (default: paper).",
    )
    weight_decay: float | None = option(
        None,
        label="decoupled weight decay",
        min=0,
        help="AdamW's coefficient with --weight-decay-mode decoupled (0.01).",
    )
    lr_floor: float | None = option(
        None,
        label="learning-rate floor",
        min=0,
        max=1,
        help="The cosine schedule ends at this fraction of the initial learning rate (default 0).",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            raise InputError("say what to train: --model ID (see `blindspot models`) or --zoo paper")
        unknown = [m for m in self.models if m not in ZOO]
        if unknown:
            raise InputError(f"unknown zoo model {unknown[0]!r}; known: {', '.join(ZOO)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        for name, value in (("epochs", self.epochs), ("max_iter", self.max_iter)):
            if value is not None and value < 1:
                raise field_error(TrainRequest, f"${name} must be at least 1 (leave it out for the recipe's own)", name)
        if self.seeds is not None:
            object.__setattr__(self, "seeds", check_seeds(self.seeds))
            if self.seed != 0:
                raise InputError("give --seed or --seeds, not both")
        for model_id in self.models:
            protocol_for(ZOO[model_id].recipe, self.protocol())
        if self.adversarial is not None:
            for model_id in self.models:  # every option and layer name checked before hours of training
                settings = adversarial_settings(ZOO[model_id], self.adversarial)
                layer_cuts(build_model(ZOO[model_id].spec), settings.layers)

    def protocol(self) -> dict[str, Any]:
        """The user's protocol options (None: the recipe's)."""
        return {
            "validation": self.validation,
            "weight_decay_mode": self.weight_decay_mode,
            "weight_decay": self.weight_decay,
            "lr_floor": self.lr_floor,
        }

    def to_json(self) -> dict[str, Any]:
        return self.protocol() | {
            "seeds": None if self.seeds is None else list(self.seeds),
            "models": list(self.models),
            "optimizer": self.optimizer,
            "epochs": self.epochs,
            "max_iter": self.max_iter,
            "seed": self.seed,
            "data_dir": self.data_dir,
            "into_shipped_zoo": self.into_shipped_zoo,
            "adversarial": self.adversarial,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainRequest:
        try:
            return cls(
                models=tuple(str(m) for m in d["models"]),
                optimizer=str(d.get("optimizer", "recipe")),
                epochs=None if d.get("epochs") is None else int(d["epochs"]),
                max_iter=None if d.get("max_iter") is None else int(d["max_iter"]),
                seed=int(d.get("seed", 0)),
                data_dir=None if d.get("data_dir") is None else str(d["data_dir"]),
                into_shipped_zoo=bool(d.get("into_shipped_zoo", False)),
                adversarial=None if d.get("adversarial") is None else dict(d["adversarial"]),
                validation=None if d.get("validation") is None else int(d["validation"]),
                seeds=None if d.get("seeds") is None else tuple(int(s) for s in d["seeds"]),
                weight_decay_mode=None if d.get("weight_decay_mode") is None else str(d["weight_decay_mode"]),
                weight_decay=None if d.get("weight_decay") is None else float(d["weight_decay"]),
                lr_floor=None if d.get("lr_floor") is None else float(d["lr_floor"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded train request is damaged ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class TrainedModel:
    """One trained and saved model: where it is, its errors (%) and how it was trained."""

    id: str
    path: str
    metrics: dict[str, float]
    training: dict[str, Any]
    study: dict[str, Any] = field(default_factory=dict)  # validation_error; seeds, test_error_mean/sd with --seeds

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "metrics": self.metrics, "training": self.training} | self.study


@dataclass(frozen=True)
class TrainResult:
    """What a training request produced: `to_json()` is what `blindspot train --json` prints."""

    models: tuple[TrainedModel, ...]
    folder: str

    def to_json(self) -> list[dict[str, Any]]:
        return [m.to_json() for m in self.models]


def output_folder(ctx: RunContext) -> Path:
    """Where the checkpoints of a training under `ctx` go: `ctx.out`, else `<runs_root>/models`."""
    return Path(ctx.out) if ctx.out is not None else Path(ctx.runs_root) / MODELS_SUBFOLDER


def in_shipped_data(folder: Path) -> bool:
    """Whether `folder` is the shipped sample_data (its models folder included) or inside it."""
    shipped = sample_data_dir().resolve()
    where = folder.resolve()
    return where == shipped or where.is_relative_to(shipped)


def run_training(request: TrainRequest, ctx: RunContext) -> TrainResult:
    """Train each requested model in turn and save it; a `ModelTrained` event follows each save.

    A cancel stops the model in training (its old checkpoint, if any, is untouched); models saved
    before it stay saved.
    """
    folder = output_folder(ctx)
    if in_shipped_data(folder) and not request.into_shipped_zoo:
        raise InputError(
            f"{folder} is the shipped zoo, which training never overwrites unless asked: "
            "choose another --out, or pass --into-shipped-zoo to regenerate it"
        )
    _refuse_existing_checkpoints(request, folder, ctx.overwrite)
    _check_validation_fits(request)
    existed = folder.exists()
    check_writable(folder)
    try:
        return _train_all(request, ctx, folder)
    except BaseException:
        if not existed:  # refused or stopped before any save: leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _refuse_existing_checkpoints(request: TrainRequest, folder: Path, overwrite: bool) -> None:
    """Before any training: a checkpoint already in the folder under a planned id is kept unless overwrite."""
    if overwrite:
        return
    identity = dataset_identity(request.data_dir)
    for model_id in request.models:
        path = folder / f"{trained_model_id(adversarial_id(ZOO[model_id], request.adversarial), identity)}.safetensors"
        if path.exists():
            raise InputError(f"{path} already exists: choose another output folder or overwrite it")


def _check_validation_fits(request: TrainRequest) -> None:
    """Before any training: every model's validation split leaves training images (as `split_validation` checks)."""
    for model_id in request.models:
        entry = ZOO[model_id]
        size = protocol_for(entry.recipe, request.protocol()).validation
        if size:
            check_validation_fits(size, len(load_split(entry.train_split, request.data_dir)), entry.train_split)


STUDY_KEYS = ("validation_error", "seeds", "test_error_mean", "test_error_sd")


def _train_all(request: TrainRequest, ctx: RunContext, folder: Path) -> TrainResult:
    device = ctx.torch_device()
    trained: list[TrainedModel] = []
    for k, model_id in enumerate(request.models):
        ctx.check_cancel()
        options: dict[str, Any] = {
            "device": device,
            "optimizer": request.optimizer,
            "data_dir": request.data_dir,
            "max_iter": request.max_iter,
            "epochs": request.epochs,
            "adversarial": request.adversarial,
            "protocol": request.protocol(),
            "on_event": ctx.on_event,
            "cancel": ctx.cancelled,
        }
        if request.seeds is None:
            fitted = train_zoo_model(model_id, folder, seed=request.seed, **options)
        else:
            fitted = train_seeds(model_id, folder, seeds=request.seeds, **options)
        meta = fitted.meta
        study = {k: meta[k] for k in STUDY_KEYS if k in meta}
        model = TrainedModel(meta["id"], str(fitted.path), meta["metrics"], meta["training"], study)
        trained.append(model)
        ctx.emit(
            ModelTrained(
                task="train",
                done=k + 1,
                total=len(request.models),
                model_id=model.id,
                path=model.path,
                metrics=model.metrics,
            )
        )
    return TrainResult(tuple(trained), str(folder))
