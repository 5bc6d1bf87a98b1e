"""Any image classifier behind one loader: zoo ids, checkpoint files, torchvision names, the user's factory.

`ModelRef` is what a request records about its model; `load_model` turns it into a `LoadedModel` whose
module takes *pixel* images in [0, 1]: a model's input normalization (ImageNet's mean and std for the
torchvision names by default) is part of the loaded model, so the attack's box, its distances and every
figure stay in pixel space whatever the network expects.

Weights come from safetensors or a weights-only PyTorch state dict, never from a pickle. A factory
(`package.module:function`) is the user's own code, imported because they named it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.core.checkpoint import (
    TORCH_SUFFIXES,
    WEIGHT_SUFFIXES,
    LoadedModel,
    load_checkpoint,
    load_state_file,
)
from engines.core.errors import CheckpointError, InputError, ModelError
from engines.core.io import file_sha256
from engines.core.options import field_error, option
from engines.core.zoo import ZOO

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_SEED = 0  # random init of a torchvision model without --weights: fixed, so runs can be compared
KINDS = ("checkpoint", "torchvision", "factory")


@dataclass(frozen=True)
class ModelRef:
    """Which model, from where, with what input normalization: everything a request records of its model.

    `name` is a zoo id, a checkpoint path or a torchvision classifier name; `factory` instead names the
    user's `package.module:function`. `normalize` None means the kind's default (ImageNet's statistics for
    torchvision names, none otherwise).
    """

    name: str = ""
    # declared for how messages name them (the CLI's flags, the workbench's words); no form offers them
    weights: str | None = option(None, label="a weights file", help="State dict of a torchvision or factory model.")
    factory: str | None = option(
        None,
        flags=("--model-factory",),
        label="package.module:function factories",
        help="The user's architecture: package.module:function returning an nn.Module.",
    )
    num_classes: int | None = option(None, label="a head size", help="Classes of a torchvision or factory head.")
    normalize: str | None = option(None, help="Input normalization: imagenet, none or MEANS:STDS.")

    def __post_init__(self) -> None:
        if not self.name.strip() and not self.factory:
            raise InputError("say which model: --model ID|PATH|TORCHVISION_NAME, or --model-factory MODULE:FUNCTION")
        if self.name.strip() and self.factory:
            raise InputError("--model and --model-factory name two models: give one of them")
        if self.num_classes is not None and self.num_classes < 2:
            raise InputError(f"--num-classes must be at least 2, got {self.num_classes}")
        if self.factory is not None and ":" not in self.factory:
            raise InputError(f"--model-factory must look like package.module:function, got {self.factory!r}")
        if self.normalize is not None:
            parse_normalization(self.normalize)  # refuse a malformed value before any work

    @property
    def kind(self) -> str:
        """checkpoint (zoo id or file), torchvision (a name torchvision builds) or factory."""
        if self.factory:
            return "factory"
        path = Path(self.name)
        if self.name in ZOO or path.suffix in WEIGHT_SUFFIXES + TORCH_SUFFIXES + (".json",) or path.exists():
            return "checkpoint"
        if self.name in torchvision_names():
            return "torchvision"
        return "checkpoint"  # the checkpoint loader explains what it looked for

    def __str__(self) -> str:
        return self.factory or self.name

    def to_json(self) -> str | dict[str, Any]:
        """A plain string when only the name is set (as run records have always said), else a dict."""
        extra = {k: v for k, v in self._options().items() if v is not None}
        return {"name": self.name, **extra} if extra else self.name

    def _options(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "factory": self.factory,
            "num_classes": self.num_classes,
            "normalize": self.normalize,
        }

    @classmethod
    def from_json(cls, value: Any) -> ModelRef:
        if isinstance(value, ModelRef):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            known = {"name", "weights", "factory", "num_classes", "normalize"}
            unknown = set(value) - known
            if unknown:
                raise InputError(f"unknown model fields {', '.join(sorted(unknown))}")
            return cls(**value)
        raise InputError(f"a model is a name or a mapping, got {type(value).__name__}")


def as_model_ref(value: ModelRef | str | dict[str, Any]) -> ModelRef:
    return ModelRef.from_json(value)


_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def parse_model_text(text: str, weights: str | None = None) -> ModelRef:
    """A model typed in one field (the workbench's Load): a zoo id, a checkpoint path (`~` expanded), a
    torchvision name, or `package.module:function`; `weights` for the last two."""
    text = text.strip()
    weights = str(Path(weights.strip()).expanduser()) if weights and weights.strip() else None
    path = Path(text).expanduser()
    if _FACTORY.fullmatch(text) and not path.exists():
        return ModelRef(factory=text, weights=weights)
    if text.startswith("~") or path.exists():
        text = str(path)
    return ModelRef(text, weights=weights)


@dataclass(frozen=True)
class Normalization:
    """Per-channel (x - mean) / std applied to pixel images before the network."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}

    @property
    def lipschitz(self) -> float:
        """The operator norm of the normalization map (a diagonal scaling): max 1/std."""
        return max(1.0 / s for s in self.std)


def parse_normalization(text: str) -> Normalization | None:
    """'imagenet', 'none', or 'm1,m2,m3:s1,s2,s3' (one value per channel; 'm:s' for one channel)."""
    t = text.strip().lower()
    if t == "none":
        return None
    if t == "imagenet":
        return Normalization(IMAGENET_MEAN, IMAGENET_STD, "imagenet")
    try:
        m_text, s_text = t.split(":")
        mean = tuple(float(v) for v in m_text.split(","))
        std = tuple(float(v) for v in s_text.split(","))
    except ValueError:
        raise InputError(
            f"--normalize must be imagenet, none or MEANS:STDS such as 0.5,0.5,0.5:0.25,0.25,0.25; got {text!r}"
        ) from None
    if len(mean) != len(std):
        raise InputError(f"--normalize gives {len(mean)} means but {len(std)} standard deviations")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise InputError(f"--normalize needs finite means and positive standard deviations, got {text!r}")
    return Normalization(mean, std, t)


def attach_normalization(model: nn.Module, norm: Normalization) -> None:
    """Make `model` take pixel images: a forward pre-hook normalizes its input.

    A hook rather than a wrapper module keeps the model's layer names (units, bounds and the user
    address layers by the names their own code gave them).
    """
    base_mean = torch.tensor(norm.mean, dtype=torch.float64)
    base_std = torch.tensor(norm.std, dtype=torch.float64)
    cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def normalize(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if x.ndim != 4 or x.shape[1] != len(norm.mean):
            raise ModelError(
                f"--normalize {norm.name} has {len(norm.mean)} channels but the images have shape {tuple(x.shape[1:])}"
            )
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = (
                base_mean.to(x.device, x.dtype).view(1, -1, 1, 1),
                base_std.to(x.device, x.dtype).view(1, -1, 1, 1),
            )
        mean, std = cache[key]
        return ((x - mean) / std, *args[1:])

    model.register_forward_pre_hook(normalize)


def torchvision_names() -> list[str]:
    """Classification models torchvision can build (``torchvision.models`` top level)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_input_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


@dataclass
class _Built:
    model: nn.Module
    id: str
    source: str
    input_shape: tuple[int, int, int] | None
    digest: dict[str, Any] = field(default_factory=dict)


def load_model(ref: ModelRef | str, device: torch.device | str = "cpu") -> LoadedModel:
    """The model a request names, on `device`, in eval mode, taking pixel images in [0, 1].

    Every failure is a one-line ModelError/CheckpointError/InputError: an unknown name, a factory that
    cannot be imported or returns no module, weights that do not fit (the first mismatched keys and shapes).
    """
    ref = as_model_ref(ref)
    kind = ref.kind
    if kind == "checkpoint":
        for key, tail in (("weights", "; a checkpoint has its weights"), ("num_classes", ", not to a checkpoint")):
            if getattr(ref, key) is not None:  # named by flag or label, as the front end says it
                raise field_error(ModelRef, f"${key} applies to torchvision names and $factory{tail}", key, "factory")
        lm = load_checkpoint(ref.name, "cpu")
        spec_input = lm.meta.get("spec", {}).get("input")
        lm.input_shape = tuple(int(v) for v in spec_input) if spec_input else None
        lm.kind = "checkpoint"
        lm.source = f"checkpoint {lm.path} (sha256 {lm.sha256[:12]})"
        norm = parse_normalization(ref.normalize) if ref.normalize else None
        if norm is not None:
            attach_normalization(lm.model, norm)
            lm.normalization = norm.to_json()
            lm.sha256 = _digest({"checkpoint": lm.sha256, "normalize": norm.to_json()})
        lm.model.to(device)
        return lm
    built = _build_torchvision(ref) if kind == "torchvision" else _build_factory(ref)
    model = built.model
    weights_sha = None
    if ref.weights:
        weights_sha = _load_weights(model, Path(ref.weights).expanduser(), str(ref))
    else:
        _log.warning(
            "warning: %s has random weights (no --weights given): its results say nothing about a trained network",
            ref,
        )
    _check_finite_parameters(model, str(ref))
    default_norm = "imagenet" if kind == "torchvision" else "none"
    norm = parse_normalization(ref.normalize or default_norm)
    if norm is not None:
        attach_normalization(model, norm)
    model.eval()
    model.to(device)
    random_init = weights_sha is None
    model_id = built.id if not random_init else f"{built.id}-random"
    meta: dict[str, Any] = {
        "id": model_id,
        "kind": kind,
        "source": built.source + (f" with weights {ref.weights}" if ref.weights else ", random init"),
        "random_init": random_init,
        "weights_sha256": weights_sha,
        "normalization": norm.to_json() if norm else None,
        "num_classes": ref.num_classes,
    }
    if built.input_shape:
        meta["spec"] = {"input": list(built.input_shape)}
    sha = _digest({**built.digest, "weights": weights_sha, "normalize": meta["normalization"]})
    path = Path(ref.weights).expanduser() if ref.weights else None
    return LoadedModel(
        model=model,
        meta=meta,
        path=path,
        sha256=sha,
        input_shape=built.input_shape,
        kind=kind,
        source=meta["source"],
        random_init=random_init,
        normalization=meta["normalization"],
    )


def _digest(doc: dict[str, Any]) -> str:
    """The model's identity for caches and --resume: weights, architecture and normalization together."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _build_torchvision(ref: ModelRef) -> _Built:
    import torchvision

    kwargs: dict[str, Any] = {}
    if ref.num_classes is not None:
        kwargs["num_classes"] = ref.num_classes
    if ref.name in ("inception_v3", "googlenet"):
        kwargs["init_weights"] = True  # their default; said so that torchvision does not warn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TORCHVISION_SEED)
        try:
            model = torchvision.models.get_model(ref.name, weights=None, **kwargs)
        except Exception as exc:
            raise ModelError(f"torchvision cannot build {ref.name!r}: {str(exc)[:200]}") from exc
    size = torchvision_input_size(ref.name)
    return _Built(
        model,
        ref.name,
        f"torchvision {ref.name}",
        (3, size, size),
        {"torchvision": ref.name, "num_classes": ref.num_classes, "seed": TORCHVISION_SEED},
    )


def _build_factory(ref: ModelRef) -> _Built:
    """Import the user's module (their own trusted code, named by them) and call the function."""
    assert ref.factory is not None
    module_name, _, func_name = ref.factory.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:  # a console script does not search the working folder; the user's package often is there
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"cannot import {module_name!r} for --model-factory ({type(exc).__name__}: {str(exc)[:160]}); "
            "run from the folder that holds the package or add it to PYTHONPATH"
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(f"{module_name} has no callable {func_name!r} (--model-factory {ref.factory})")
    kwargs = {"num_classes": ref.num_classes} if ref.num_classes is not None else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TORCHVISION_SEED)
        try:
            model = func(**kwargs)
        except Exception as exc:
            raise ModelError(
                f"{ref.factory}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: "
                f"{type(exc).__name__}: {str(exc)[:160]}"
            ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref.factory} returned {type(model).__name__}, not a torch.nn.Module")
    return _Built(
        model, func_name, f"factory {ref.factory}", None, {"factory": ref.factory, "num_classes": ref.num_classes}
    )


def _load_weights(model: nn.Module, path: Path, name: str) -> str:
    """Load a state dict into `model` strictly; a mismatch lists the first differing keys and shapes."""
    state = load_state_file(path)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or extra or wrong:
        parts = (
            (
                [f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else "")]
                if missing
                else []
            )
            + (
                [f"unexpected {', '.join(extra[:3])}" + (f" (+{len(extra) - 3})" if len(extra) > 3 else "")]
                if extra
                else []
            )
            + ([f"shapes {'; '.join(wrong[:3])}"] if wrong else [])
        )
        hint = " (a different head? pass --num-classes K)" if wrong and not missing and not extra else ""
        raise CheckpointError(f"{path}: weights do not fit {name}: {' | '.join(parts)}{hint}")
    model.load_state_dict(state, strict=True)
    return file_sha256(path)


def _check_finite_parameters(model: nn.Module, name: str) -> None:
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{name}: tensor {key} holds NaN or inf")
