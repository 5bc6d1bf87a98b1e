"""The train operation: `run_training(request, ctx)`, called alike by `blindspot train` and the Models screen.

Output policy, one rule for every caller: the checkpoints (`<id>.safetensors` + `<id>.json`) go to
`ctx.out` when given, else to `<ctx.runs_root>/models`; a checkpoint already there under the same
id is replaced only with `ctx.overwrite` (checked for every model before any training). On data
other than MNIST a model is saved as `<zoo id>-<data>` (`trained_model_id`). The shipped `sample_data` (the zoo the
README's numbers come from) is never written unless the request says `into_shipped_zoo`.

No run folder (run.json) is made: a models folder holds several checkpoints and is reused by
later trainings, and a checkpoint's sidecar already records how it was trained. The folder is
proved writable before any training starts, so hours of training are never lost to a bad --out.
While a model trains, its state after each finished epoch is kept in `<folder>/.resume/<id>/` (deleted once the
checkpoint is saved), from which `resume` continues a cancelled training (`engines.train.resume`).
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
from engines.train.hyper import check_point, grid_points, with_hyper
from engines.train.layer_cuts import layer_cuts
from engines.train.protocol import DECAY_MODES, check_validation_fits, protocol_for
from engines.train.resume import ResumeFolder
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
    grid: dict[str, tuple[Any, ...]] | None = None  # hyper-parameter axes chosen on validation (engines.train.hyper)
    lr_floor: float | None = option(
        None,
        label="learning-rate floor",
        min=0,
        max=1,
        help="The cosine schedule ends at this fraction of the initial learning rate (default 0).",
    )
    resume: bool = option(  # continue a cancelled training from its last finished epoch (engines.train.resume)
        False,
        label="resume",
        help="Continue a cancelled training of the same recipe into the same folder from its last finished epoch "
        "(finished seeds and grid points are not retrained); without it a saved state is replaced.",
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
            self._check_adam_options(model_id, self.grid or {})
        self._check_grid()
        if self.adversarial is not None:
            for model_id in self.models:  # every option and layer name checked before hours of training
                settings = adversarial_settings(ZOO[model_id], self.adversarial)
                layer_cuts(build_model(ZOO[model_id].spec), settings.layers)

    def _check_adam_options(self, model_id: str, grid: dict[str, Any]) -> None:
        """Decoupled decay and the schedule's floor act on Adam epochs: a training without any (full-batch L-BFGS;
        the autoencoder, whose Adam pre-training is unregularised and whose softmax is L-BFGS) is refused them."""
        entry = ZOO[model_id]
        optimizer = entry.recipe["optimizer"] if self.optimizer == "recipe" else self.optimizer
        if self.adversarial is not None or optimizer in ("adam", "adversarial"):
            return
        how = "full-batch L-BFGS" if optimizer == "lbfgs" else "its recipe, with no Adam epoch of the classifier"
        ending = f"acts on Adam epochs, and {model_id} trains by {how}: leave it out or add --optimizer adam"
        given = [name for name in ("weight_decay_mode", "lr_floor") if getattr(self, name) not in (None, "paper")]
        if given:
            raise field_error(TrainRequest, f"${given[0]} {ending}", given[0])
        on_grid = [name for name in ("weight_decay", "lr_floor") if name in grid]
        if on_grid:
            raise InputError(f"--grid {on_grid[0]} {ending}")

    def _check_grid(self) -> None:
        """A grid's names apply to every model, none is also given by its own option, and (with more than one
        point) there is a validation split to choose on."""
        if not self.grid:
            return
        object.__setattr__(self, "grid", {k: tuple(v) for k, v in self.grid.items()})
        given = {"epochs": self.epochs, "weight_decay": self.weight_decay, "lr_floor": self.lr_floor}
        given |= {k: v for k, v in (self.adversarial or {}).items() if k in ("mix", "eps", "cap", "refresh")}
        twice = [k for k in self.grid if given.get(k) is not None]
        if twice:
            raise InputError(f"{twice[0]} is given by --grid and by its own option: give it once")
        points = grid_points(self.grid)
        for model_id in self.models:
            optimizer = ZOO[model_id].recipe["optimizer"] if self.optimizer == "recipe" else self.optimizer
            for point in points:
                check_point(ZOO[model_id], point, optimizer, self.adversarial)
                entry = with_hyper(ZOO[model_id], point, adversarial=self.adversarial is not None)
                build_model(entry.spec)
                if self.adversarial is not None or optimizer == "adversarial":
                    adversarial_settings(entry, self.adversarial)
                protocol = protocol_for(entry.recipe, self.protocol())
                if len(points) > 1 and protocol.validation == 0:
                    raise InputError("--grid chooses among its points on the validation split: add --validation N")

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
            "grid": None if self.grid is None else {k: list(v) for k, v in self.grid.items()},
            "resume": self.resume,
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
                grid=None if d.get("grid") is None else {str(k): tuple(v) for k, v in d["grid"].items()},
                resume=bool(d.get("resume", False)),
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
    for model_id in request.models:
        path = folder / f"{_saved_id(request, model_id)}.safetensors"
        if path.exists():
            raise InputError(f"{path} already exists: choose another output folder or overwrite it")


def _saved_id(request: TrainRequest, model_id: str) -> str:
    """The id `model_id` is saved under by this request (as `train_zoo_model` names it)."""
    return trained_model_id(adversarial_id(ZOO[model_id], request.adversarial), dataset_identity(request.data_dir))


def _check_validation_fits(request: TrainRequest) -> None:
    """Before any training: every model's validation split leaves training images (as `split_validation` checks)."""
    for model_id in request.models:
        entry = ZOO[model_id]
        size = protocol_for(entry.recipe, request.protocol()).validation
        if size:
            check_validation_fits(size, len(load_split(entry.train_split, request.data_dir)), entry.train_split)


STUDY_KEYS = ("validation_error", "seeds", "test_error_mean", "test_error_sd", "hyper", "grid")


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
            "resume": ResumeFolder.of(folder, _saved_id(request, model_id), request.resume),
        }
        if request.seeds is None and not request.grid:
            fitted = train_zoo_model(model_id, folder, seed=request.seed, **options)
        else:
            seeds = request.seeds or (request.seed,)
            fitted = train_seeds(model_id, folder, seeds=seeds, axes=request.grid, **options)
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
