"""Hyper-parameters chosen on the validation split (issue 24): `--grid NAME=V1,V2,…` axes, their points, and a
zoo entry with a point's values over its recipe.

A grid is small and stated: every point is trained with the study's first seed, the point of lowest validation
error is chosen (the earliest on ties) and only then are the test set and the other seeds touched
(`engines.train.seeds.train_seeds`). A one-value axis just sets that hyper-parameter; `check_point` refuses a
value the training would ignore.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace
from typing import Any

from engines.core.errors import InputError
from engines.core.zoo import ZooEntry
from engines.train.adversarial_pool import AdversarialSettings

# name -> (where it goes, its type): the recipe's own keys, the architecture's dropout rates, the protocol's
# decoupled decay and floor, and the adversarial training's settings (adversarial trainings only).
HYPER: dict[str, tuple[str, type]] = {
    "lr": ("recipe", float),
    "epochs": ("recipe", int),
    "batch_size": ("recipe", int),
    "weight_decay": ("recipe", float),
    "lr_floor": ("recipe", float),
    "dropout": ("spec", float),
    "input_dropout": ("spec", float),
    "mix": ("adversarial", float),
    "eps": ("adversarial", float),
    "cap": ("adversarial", float),
    "refresh": ("adversarial", float),
}
_NAME = re.compile(r"[a-z_]+")


def parse_axis(text: str) -> tuple[str, tuple[Any, ...]]:
    """`lr=0.001,0.003` → ("lr", (0.001, 0.003)); names with dashes are accepted (`input-dropout=0.1,0.2`)."""
    name, equals, values_text = text.replace(" ", "").partition("=")
    name = name.replace("-", "_")
    if not equals or not _NAME.fullmatch(name) or not values_text:
        raise InputError(f"--grid takes NAME=V1,V2,… (e.g. lr=0.001,0.003), got {text!r}")
    values = values_text.split(",")
    if name not in HYPER:
        raise InputError(f"--grid cannot vary {name!r}: choose from {', '.join(HYPER)}")
    kind = HYPER[name][1]
    try:
        parsed = tuple(kind(v) for v in values)
    except ValueError:
        raise InputError(f"--grid {name} takes {kind.__name__} values, got {values_text!r}") from None
    if any(isinstance(v, float) and not math.isfinite(v) for v in parsed):
        raise InputError(f"--grid {name} takes finite values, got {values_text!r}")
    if len(set(parsed)) != len(parsed):
        raise InputError(f"--grid {name} names a value twice")
    return name, parsed


def parse_grid(texts: list[str] | tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    """Every `--grid` option, one axis each (an axis named twice is refused)."""
    axes: dict[str, tuple[Any, ...]] = {}
    for text in texts:
        name, values = parse_axis(text)
        if name in axes:
            raise InputError(f"--grid names {name} twice: give its values in one option ({name}=V1,V2)")
        axes[name] = values
    return axes


def grid_points(axes: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The grid's points in a stated order (the product of the axes, first axis slowest); one empty point without
    axes."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))]


def with_hyper(entry: ZooEntry, hyper: dict[str, Any], *, adversarial: bool = False) -> ZooEntry:
    """`entry` with a point's values over its recipe and architecture (`adversarial`: the training is adversarial
    although the recipe is not, `--adversarial` on a plain model)."""
    if not hyper:
        return entry
    recipe, spec = dict(entry.recipe), dict(entry.spec)
    pool = dict(recipe.get("adversarial") or {})
    for name, value in hyper.items():
        if name not in HYPER:
            raise InputError(f"unknown hyper-parameter {name!r}: choose from {', '.join(HYPER)}")
        place = HYPER[name][0]
        if place == "recipe":
            recipe[name] = value
        elif place == "spec":
            spec[name] = value
        elif recipe.get("optimizer") != "adversarial" and not adversarial:
            raise InputError(f"--grid {name} is an adversarial-training setting: {entry.id} is not adversarial")
        else:
            pool[name] = value
    if "weight_decay" in hyper:
        recipe["weight_decay_mode"] = "decoupled"
    if pool:
        recipe["adversarial"] = pool
    return replace(entry, recipe=recipe, spec=spec)


# bounds of the values a point may hold (the adversarial settings are checked by `AdversarialSettings` itself)
_BOUNDS: dict[str, tuple[float, float, str]] = {
    "lr": (0.0, math.inf, "above 0"),
    "epochs": (1, math.inf, "at least 1"),
    "batch_size": (1, math.inf, "at least 1"),
    "weight_decay": (0.0, math.inf, "0 or more"),
    "lr_floor": (0.0, 1.0, "in [0, 1]"),
    "dropout": (0.0, 1.0, "in [0, 1)"),
    "input_dropout": (0.0, 1.0, "in [0, 1)"),
}
_OPEN_ABOVE = ("dropout", "input_dropout")
_OPEN_BELOW = ("lr",)


def check_point(entry: ZooEntry, point: dict[str, Any], optimizer: str, adversarial: dict[str, Any] | None) -> None:
    """Refuse, before any training, a point whose values are out of range or that would do nothing for this model
    and training (`optimizer`: the one it will use; `adversarial`: the user's pool options, None without
    --adversarial): a grid over a value the training ignores would train identical models and claim a choice."""
    for name, value in point.items():
        if name in _BOUNDS:
            low, high, words = _BOUNDS[name]
            bad = value < low or value > high or (name in _OPEN_BELOW and value == low)
            if bad or (name in _OPEN_ABOVE and value == high):
                raise InputError(f"--grid {name} must be {words} (got {value})")
    adversarial_training = optimizer == "adversarial" or adversarial is not None
    settings = None
    if adversarial_training:
        settings = AdversarialSettings.from_json(dict(entry.recipe.get("adversarial") or {}) | (adversarial or {}))
    minibatch = adversarial_training or optimizer in ("adam", "autoencoder")
    ignored = {
        "lr": not minibatch,
        "epochs": not minibatch or optimizer == "autoencoder",  # its pre-training counts `ae_epochs`
        "batch_size": not minibatch,
        "dropout": entry.spec.get("kind") not in ("mlp", "conv"),
        "input_dropout": entry.spec.get("kind") != "mlp",
        "eps": settings is None or settings.mode == "pool",
        "mix": settings is None,
        "cap": settings is None or settings.mode != "pool",
        "refresh": settings is None or settings.mode != "pool",
    }
    for name in point:
        if ignored.get(name, False):
            raise InputError(f"--grid {name} has no effect on {entry.id} as it is trained here: leave it out")


def grid_record(axes: dict[str, tuple[Any, ...]], trials: list[dict[str, Any]], chosen: int) -> dict[str, Any]:
    """What the sidecar keeps of a grid: its axes, every point's validation error and time, the chosen point."""
    return {
        "axes": {k: list(v) for k, v in axes.items()},
        "points": trials,
        "chosen": trials[chosen]["hyper"],
        "rule": "lowest validation error of the first seed (earliest point on ties); test set not read",
    }
