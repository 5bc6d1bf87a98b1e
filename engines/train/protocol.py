"""The training protocol (issue 24), one place for every training: zoo, §4.2, CLI and workbench.

- a validation split taken from the training set (fixed seed, recorded), never seen by the gradient nor the
  adversarial pool; `validation = 0` is the paper's literal recipe (no split, the last iterate kept);
- model selection: the validation error at every checkpoint (Adam epoch, L-BFGS block), the best state kept;
- the regularisers: the paper's λΣw²/k in the loss, or decoupled weight decay (AdamW); a cosine learning-rate
  schedule down to a floor (a fraction of the initial rate; 0 is today's schedule, which ends at zero).

Seeds (a study of one recipe over several seeds, and the paired comparison of two) are in `engines.train.seeds`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.core.data import Dataset
from engines.core.errors import InputError
from engines.core.evaluate import error_rate
from engines.core.zoo import weight_layers

VALIDATION_SEED = 20131224  # fixed: the same split for every seed of a study, so their errors pair up
DECAY_MODES = ("paper", "decoupled")
DECOUPLED_DECAY = 1e-2  # AdamW's usual coefficient, used when decoupled decay is asked without a value
PROTOCOL_KEYS = ("validation", "weight_decay_mode", "weight_decay", "lr_floor")


@dataclass(frozen=True)
class Protocol:
    """How a training holds data out and regularises: a recipe's defaults with the user's options over them."""

    validation: int = 0  # images held out of the training split for model selection (0: none)
    weight_decay_mode: str = "paper"  # paper: λΣw²/k in the loss; decoupled: AdamW on the connection weights
    weight_decay: float | None = None  # the decoupled coefficient (None: DECOUPLED_DECAY); only when decoupled
    lr_floor: float = 0.0  # the cosine schedule ends at lr_floor × the initial rate
    validation_seed: int = VALIDATION_SEED

    def __post_init__(self) -> None:
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) or self.validation < 0:
            raise InputError(f"--validation must be a whole number of images, 0 or more (got {self.validation})")
        if self.weight_decay_mode not in DECAY_MODES:
            raise InputError(
                f"unknown --weight-decay-mode {self.weight_decay_mode!r}: choose {' or '.join(DECAY_MODES)}"
            )
        if self.weight_decay is not None:
            if self.weight_decay_mode != "decoupled":
                raise InputError("--weight-decay is the decoupled coefficient: add --weight-decay-mode decoupled")
            if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
                raise InputError(f"--weight-decay must be 0 or more (got {self.weight_decay})")
        if not (math.isfinite(self.lr_floor) and 0.0 <= self.lr_floor <= 1.0):
            raise InputError(f"--lr-floor is a fraction of the initial learning rate, in [0, 1] (got {self.lr_floor})")

    @property
    def decoupled_decay(self) -> float:
        return DECOUPLED_DECAY if self.weight_decay is None else self.weight_decay

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.weight_decay_mode == "decoupled":
            d["weight_decay"] = self.decoupled_decay
        return d


def protocol_for(recipe: dict[str, Any], overrides: dict[str, Any] | None) -> Protocol:
    """A recipe's protocol (its own `validation`, `lr_floor`, … keys) with the user's options (None: not given)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(PROTOCOL_KEYS))
    if unknown:
        raise InputError(f"unknown protocol option {unknown[0]!r}: known {', '.join(PROTOCOL_KEYS)}")
    return Protocol(**({k: recipe[k] for k in PROTOCOL_KEYS if k in recipe} | given))


def split_validation(data: Dataset, protocol: Protocol) -> tuple[Dataset, Dataset | None, dict[str, Any] | None]:
    """(the part the gradient sees, the validation part, the split's record); no split when validation is 0.

    The validation images are a fixed-seed random subset of `data`; both parts keep `data`'s order."""
    size, n = protocol.validation, len(data)
    if size == 0:
        return data, None, None
    check_validation_fits(size, n, data.name)
    perm = np.random.default_rng(protocol.validation_seed).permutation(n)
    held, kept = np.sort(perm[:size]), np.sort(perm[size:])
    parts = [_take(data, pos) for pos in (kept, held)]
    record = {
        "size": size,
        "seed": protocol.validation_seed,
        "from_split": data.name,
        "training_images": n - size,
        "indices_sha256": hashlib.sha256(np.asarray(data.indices[held], dtype=np.int64).tobytes()).hexdigest(),
    }
    return parts[0], parts[1], record


def check_validation_fits(size: int, images: int, split: str) -> None:
    """A validation split must leave training images (checked before any training)."""
    if size >= images:
        raise InputError(
            f"--validation {size} leaves no training image: the {split} split has {images} images "
            "(give fewer, or --validation 0)"
        )


def _take(data: Dataset, positions: np.ndarray) -> Dataset:
    t = torch.from_numpy(positions)
    files = None if data.files is None else tuple(data.files[int(i)] for i in positions)
    return Dataset(data.images[t], data.labels[t], data.name, data.indices[positions], files)


WARM_UP = "warm-up"  # the stage of §4.2's clean epochs before the pool is filled: recorded, never chosen


class Selection:
    """Model selection on the validation part: `check` evaluates the model at a checkpoint and keeps a copy of the
    best state (the earliest on ties; warm-up epochs are never chosen); `finish` puts that state back. Without a
    validation part it does nothing."""

    def __init__(self, model: nn.Module, validation: Dataset | None, device: torch.device | str) -> None:
        self.model, self.validation, self.device = model, validation, device
        self.history: list[dict[str, Any]] = []
        self.best_error = math.inf
        self.best_at = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def check(self, stage: str, done: int) -> float:
        """The validation error (%) of the model as it is now (nan without a validation part)."""
        if self.validation is None:
            return math.nan
        was_training = self.model.training
        self.model.eval()  # dropout off, as the test will see it
        error = error_rate(self.model, self.validation.images, self.validation.labels, self.device)
        self.model.train(was_training)
        self.history.append({"stage": stage, "done": done, "validation_error": round(error, 4)})
        # an adversarially trained model is chosen among its adversarial epochs: a clean warm-up epoch is not it
        if stage != WARM_UP and error < self.best_error:
            self.best_error, self.best_at = error, len(self.history) - 1
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return error

    def state_dict(self) -> dict[str, Any]:
        """What a resumed training needs of the selection so far (`engines.train.resume`)."""
        return {
            "history": [dict(h) for h in self.history],
            "best_error": self.best_error,
            "best_at": self.best_at,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to the selection a resumed training had reached (`state_dict`'s record)."""
        self.history = [dict(h) for h in state["history"]]
        self.best_error, self.best_at = float(state["best_error"]), int(state["best_at"])
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}

    def finish(self) -> dict[str, Any] | None:
        """Load the best checkpoint into the model; what was chosen, the last checkpoint and the whole history."""
        if self.validation is None or self.best_state is None:
            return None
        self.model.load_state_dict(self.best_state)
        self.best_state = None
        return {"chosen": self.history[self.best_at], "last": self.history[-1], "history": self.history}


def no_check(stage: str, done: int) -> float:
    """The checkpoint hook of a training without a validation split."""
    return math.nan


def adam_optimizer(
    model: nn.Module, lr: float, lambdas: list[float], protocol: Protocol
) -> tuple[torch.optim.Optimizer, list[float]]:
    """The minibatch optimizer and the λ the loss keeps: Adam with the paper's λΣw²/k in the loss, or AdamW
    with the decay on the connection weights of the layers whose λ is not 0 (biases never) and none in the loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    if protocol.weight_decay_mode == "paper":
        return torch.optim.Adam(params, lr=lr), lambdas
    decayed = {
        id(layer.weight)
        for lam, layer in zip(lambdas, weight_layers(model), strict=True)
        if lam and layer.weight.requires_grad
    }
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": protocol.decoupled_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr), [0.0] * len(lambdas)


def cosine_schedule(opt: torch.optim.Optimizer, steps: int, floor: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over `steps` from the initial rate to `floor` × it (floor 0: the paper recipes' schedule)."""
    if floor == 0.0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=floor * opt.param_groups[0]["lr"])


def decay_formula(protocol: Protocol, optimizer: str) -> str:
    """The sidecar's words for the objective actually minimised (`optimizer`: the training's own description)."""
    paper = "mean cross-entropy + sum_layers lambda * sum(w^2) / k, k = units in the layer"
    if protocol.weight_decay_mode == "paper":
        return paper
    text = f"mean cross-entropy; decoupled weight decay (AdamW) {protocol.decoupled_decay:g} on the decayed layers"
    if "lbfgs" in optimizer:
        text += f"; the L-BFGS phase minimises {paper}"
    return text
