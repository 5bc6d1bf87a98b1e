"""The paper's model zoo (Tables 1 and 3) as architecture specs, and the one builder for them.

A spec is plain JSON so that it can sit in a checkpoint's sidecar; `build_model` is the only
place that turns a spec into an ``nn.Module``. Layers carry stable names (fc1, act1, conv1, ...)
so that analyses can address them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engines.core.errors import ModelError

INPUT_SHAPE = [1, 28, 28]
N100_DECAY = [1e-5, 1e-5, 1e-6]

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp_spec(
    hidden: list[int],
    activation: str = "sigmoid",
    classes: int = 10,
    kind: str = "mlp",
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> dict[str, Any]:
    spec = {"kind": kind, "input": INPUT_SHAPE, "hidden": list(hidden), "activation": activation, "classes": classes}
    if dropout or input_dropout:  # absent when unused, so the paper zoo's specs stay as they were
        spec |= {"dropout": dropout, "input_dropout": input_dropout}
    return spec


def conv_spec(
    channels: int = 32, kernel: int = 5, pool: int = 2, hidden: int = 128, dropout: float = 0.5
) -> dict[str, Any]:
    return {
        "kind": "conv",
        "input": INPUT_SHAPE,
        "channels": channels,
        "kernel": kernel,
        "pool": pool,
        "hidden": hidden,
        "dropout": dropout,
        "activation": "relu",
        "classes": 10,
    }


@dataclass(frozen=True)
class ZooEntry:
    """One model of the paper: its spec, per-layer weight decay, training set and recipe."""

    id: str
    description: str
    spec: dict[str, Any]
    decay: list[float]
    train_split: str
    recipe: dict[str, Any]
    paper: dict[str, float] = field(default_factory=dict)
    group: str = "paper"  # "paper": the zoo of Tables 1 and 3; "adversarial": §4.2's models and its ablation


# "validation": images held out of the training split for model selection (engines.train.protocol). Table 1's
# recipes are the paper's literal ones: no validation split, the last iterate kept (so they reproduce bit for bit).
_LBFGS = {"optimizer": "lbfgs", "max_iter": 500, "validation": 0}
_MLP_RECIPE = {"optimizer": "adam", "epochs": 60, "batch_size": 128, "lr": 3e-3, "polish_lbfgs": 300, "validation": 0}

# §4.2 under issue 24's protocol: one 784-100-100-10 sigmoid net, one budget (30 epochs of Adam, no L-BFGS polish),
# 10,000 training images held out for model selection (`--validation 0` is no split, the last iterate), decoupled
# weight decay (AdamW on the connection weights) and a cosine schedule that ends at a floor, not at zero. The values
# below (lr, weight decay, dropout rates, pool mix, perturbation size) are the ones the stated grids chose on the
# validation split (benchmarks/study_section42.py; the grid and its validation errors are in each shipped sidecar).
SECTION42_EPOCHS = 30
SECTION42_VALIDATION = 10000
_SECTION42_RECIPE = {
    "optimizer": "adam",
    "epochs": SECTION42_EPOCHS,
    "batch_size": 128,
    "lr": 0.03,
    "validation": SECTION42_VALIDATION,
    "weight_decay_mode": "decoupled",
    "weight_decay": 0.1,
    "lr_floor": 0.02,
}
_ADV_RECIPE = _SECTION42_RECIPE | {"optimizer": "adversarial", "adversarial": {}}
# the pool with issue 24's fixes: nearest wrong class, a per-layer cap at the clean net's own median distortion
# (examples above it shrunk onto it), hidden examples kept as perturbations re-applied to the current φ_k(x)
POOL_FIXES = {"target": "nearest", "cap": "auto", "cap_policy": "shrink", "hidden": "perturbation", "mix": 0.25}
FRESH = {"mix": 0.5}  # the controls' perturbed copies per clean example


def _adv_entry(model_id: str, description: str, adversarial: dict[str, Any]) -> ZooEntry:
    recipe = _ADV_RECIPE | {"adversarial": adversarial}
    paper = {"test_error": 1.2} if model_id == "n100-100-10-adv" else {}
    return ZooEntry(model_id, description, mlp_spec([100, 100]), N100_DECAY, "train", recipe, paper, "adversarial")


SECTION42 = [
    ZooEntry(
        "n100-100-10-decay",
        "sigmoid 784-100-100-10, weight decay only (§4.2's comparison, same budget)",
        mlp_spec([100, 100]),
        N100_DECAY,
        "train",
        _SECTION42_RECIPE,
        {"test_error": 1.6},
        "adversarial",
    ),
    ZooEntry(
        "n100-100-10-dropout",
        "sigmoid 784-100-100-10, weight decay + dropout (§4.2's comparison, same budget)",
        mlp_spec([100, 100], dropout=0.05, input_dropout=0.2),
        N100_DECAY,
        "train",
        _SECTION42_RECIPE | {"lr": 0.01},
        {"test_error": 1.3},
        "adversarial",
    ),
    _adv_entry(
        "n100-100-10-adv", "sigmoid 784-100-100-10, adversarial pool on every layer, with fixes (§4.2)", POOL_FIXES
    ),
    _adv_entry(
        "n100-100-10-adv-input",
        "§4.2 ablation: the fixed pool on the input only (4,000 examples, as per layer in n100-100-10-adv)",
        POOL_FIXES | {"layers": ["input"], "pool_size": 4000},
    ),
    _adv_entry(
        "n100-100-10-adv-hidden",
        "§4.2 ablation: the fixed pool on the hidden layers only (4,000 examples per layer)",
        POOL_FIXES | {"layers": ["act1", "act2"], "pool_size": 8000},
    ),
    _adv_entry("n100-100-10-adv-paper", "§4.2: the paper's pool as written (random targets, no cap), every layer", {}),
    _adv_entry(
        "n100-100-10-fgm",
        "§4.2 control: fresh one-step L2 gradient perturbations (FGM) on every layer",
        FRESH | {"mode": "fgm", "eps": 0.02},
    ),
    _adv_entry(
        "n100-100-10-vat",
        "§4.2 control: virtual adversarial perturbations (VAT, no labels) on every layer",
        FRESH | {"mode": "vat", "eps": 0.01},
    ),
]

ZOO: dict[str, ZooEntry] = {
    e.id: e
    for e in [
        ZooEntry(
            "softmax1",
            "linear softmax, λ=1e-4",
            mlp_spec([], kind="softmax"),
            [1e-4],
            "train",
            _LBFGS,
            {"train_error": 6.7, "test_error": 7.4, "distortion": 0.062},
        ),
        ZooEntry(
            "softmax2",
            "linear softmax, λ=1e-2",
            mlp_spec([], kind="softmax"),
            [1e-2],
            "train",
            _LBFGS,
            {"train_error": 10.0, "test_error": 9.4, "distortion": 0.1},
        ),
        ZooEntry(
            "softmax3",
            "linear softmax, λ=1",
            mlp_spec([], kind="softmax"),
            [1.0],
            "train",
            _LBFGS,
            {"train_error": 21.2, "test_error": 20.0, "distortion": 0.14},
        ),
        ZooEntry(
            "n100-100-10",
            "sigmoid 784-100-100-10",
            mlp_spec([100, 100]),
            N100_DECAY,
            "train",
            _MLP_RECIPE,
            {"train_error": 0.0, "test_error": 1.64, "distortion": 0.058},
        ),
        ZooEntry(
            "n200-200-10",
            "sigmoid 784-200-200-10",
            mlp_spec([200, 200]),
            N100_DECAY,
            "train",
            _MLP_RECIPE,
            {"train_error": 0.0, "test_error": 1.54, "distortion": 0.065},
        ),
        ZooEntry(
            "ae400-10",
            "sparse autoencoder (400 sigmoid units, frozen) + softmax",
            mlp_spec([400], kind="autoencoder"),
            [0.0, 1e-6],
            "train",
            {
                "optimizer": "autoencoder",
                "ae_epochs": 100,
                "batch_size": 128,
                "lr": 2e-3,
                "sparsity": 0.1,
                "sparsity_weight": 3.0,
                "ae_decay": 3e-3,
                "softmax_max_iter": 500,
                "validation": 0,
            },
            {"train_error": 0.57, "test_error": 1.9, "distortion": 0.086},
        ),
        ZooEntry(
            "conv",
            "conv 32×5×5 → max-pool 2 → fc 128 → dropout 0.5 → softmax",
            conv_spec(),
            [1e-5, 1e-5, 1e-6],
            "train",
            {"optimizer": "adam", "epochs": 8, "batch_size": 128, "lr": 1e-3, "validation": 0},
            {},
        ),
        ZooEntry(
            "m1",
            "sigmoid 784-100-100-10 on P1",
            mlp_spec([100, 100]),
            N100_DECAY,
            "p1",
            _MLP_RECIPE,
            {"p1_error": 0.0, "p2_error": 2.4, "test_error": 2.0, "distortion": 0.062},
        ),
        ZooEntry(
            "m1-prime",
            "sigmoid 784-123-456-10 on P1",
            mlp_spec([123, 456]),
            N100_DECAY,
            "p1",
            _MLP_RECIPE,
            {"p1_error": 0.0, "p2_error": 2.5, "test_error": 2.1, "distortion": 0.059},
        ),
        ZooEntry(
            "m2",
            "sigmoid 784-100-100-10 on P2",
            mlp_spec([100, 100]),
            N100_DECAY,
            "p2",
            _MLP_RECIPE,
            {"p1_error": 2.3, "p2_error": 0.0, "test_error": 2.1, "distortion": 0.058},
        ),
    ]
    + SECTION42
}


def zoo_entry(model_id: str) -> ZooEntry:
    try:
        return ZOO[model_id]
    except KeyError:
        raise ModelError(f"unknown zoo model {model_id!r}; known: {', '.join(ZOO)}") from None


def build_model(spec: dict[str, Any]) -> nn.Sequential:
    """Turn a JSON architecture spec into a module whose output is (N, classes) logits."""
    try:
        kind = spec["kind"]
        classes = int(spec.get("classes", 10))
        c, h, w = (int(v) for v in spec.get("input", INPUT_SHAPE))
        act = ACTIVATIONS[spec.get("activation", "sigmoid")]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if kind in ("mlp", "softmax", "autoencoder"):
            layers["flatten"] = nn.Flatten()
            if float(spec.get("input_dropout", 0.0)):
                layers["drop0"] = nn.Dropout(float(spec["input_dropout"]))
            width = c * h * w
            for i, units in enumerate(spec.get("hidden", []), start=1):
                if int(units) < 1:
                    raise ValueError(f"layer fc{i} has {units} units")
                layers[f"fc{i}"] = nn.Linear(width, int(units))
                layers[f"act{i}"] = act()
                if float(spec.get("dropout", 0.0)):
                    layers[f"drop{i}"] = nn.Dropout(float(spec["dropout"]))
                width = int(units)
            layers[f"fc{len(spec.get('hidden', [])) + 1}"] = nn.Linear(width, classes)
        elif kind == "conv":
            k, pool, ch = int(spec["kernel"]), int(spec["pool"]), int(spec["channels"])
            layers["conv1"] = nn.Conv2d(c, ch, k)
            layers["act1"] = act()
            layers["pool1"] = nn.MaxPool2d(pool)
            layers["flatten"] = nn.Flatten()
            side_h, side_w = (h - k + 1) // pool, (w - k + 1) // pool
            layers["fc1"] = nn.Linear(ch * side_h * side_w, int(spec["hidden"]))
            layers["act2"] = act()
            layers["dropout"] = nn.Dropout(float(spec.get("dropout", 0.5)))
            layers["fc2"] = nn.Linear(int(spec["hidden"]), classes)
        else:
            raise ModelError(f"unknown architecture kind {kind!r}")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"malformed architecture spec ({exc.__class__.__name__}: {exc}): {spec}") from exc
    return nn.Sequential(layers)


def weight_layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """Linear and Conv2d layers in forward order: the ones weight decay and frame bounds see."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def decay_loss(model: nn.Module, lambdas: list[float]) -> torch.Tensor:
    """The paper's quadratic weight decay: Σ_layers λ Σ w² / k, k = units in the layer (§4.2).

    Only connection weights are decayed, not biases. k is the number of output units of the
    layer (out_features for Linear, out_channels for Conv2d).
    """
    layers = weight_layers(model)
    if len(lambdas) != len(layers):
        raise ModelError(f"{len(lambdas)} weight-decay values for {len(layers)} weight layers")
    total = torch.zeros((), device=layers[0].weight.device)
    for lam, layer in zip(lambdas, layers, strict=True):
        if lam:
            k = layer.weight.shape[0]
            total = total + lam * layer.weight.pow(2).sum() / k
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_spec(spec: dict[str, Any]) -> str:
    """Short human description, e.g. 'sigmoid 784-100-100-10'."""
    kind = spec.get("kind")
    c, h, w = spec.get("input", INPUT_SHAPE)
    if kind in ("mlp", "softmax", "autoencoder"):
        sizes = [c * h * w, *spec.get("hidden", []), spec.get("classes", 10)]
        prefix = "linear softmax" if not spec.get("hidden") else spec.get("activation", "sigmoid")
        text = f"{prefix} {'-'.join(str(s) for s in sizes)}"
        if spec.get("dropout") or spec.get("input_dropout"):
            text += f", dropout {spec.get('input_dropout', 0.0)} input / {spec.get('dropout', 0.0)} hidden"
        return text
    if kind == "conv":
        return (
            f"conv {spec['channels']}×{spec['kernel']}×{spec['kernel']} → max-pool {spec['pool']} → "
            f"fc {spec['hidden']} → dropout {spec.get('dropout', 0.5)} → softmax"
        )
    return str(kind)
