"""Resuming a cancelled training from its last finished epoch (issue 24).

While `run_training` trains, every finished epoch of a minibatch phase (Adam, §4.2's adversarial epochs, the sparse
autoencoder's pre-training) writes, atomically, one state file into `<out>/.resume/<saved id>/<key>.pt` (the key:
the seed and, for a grid's point, a hash of its values): the weights, the optimizer's and the schedule's states,
every random generator the loop draws from (its own `torch.Generator`s and the global torch RNG that dropout uses,
CUDA's too on a GPU), the adversarial pool, model selection's history and best state, and the epoch done. It holds
tensors and plain containers only, read back with `torch.load(weights_only=True)`. Resuming restores all of it, so a
training cancelled after epoch k and resumed gives the very weights of an uninterrupted one. An L-BFGS phase
(full-batch training, the Adam recipes' polish, the autoencoder's softmax) is not resumed mid-way: it restarts from
the state after the last finished epoch (so the whole of a pure L-BFGS training restarts).

A seed study or a grid keeps each finished training (weights and sidecar) as `<key>.done.pt`: resuming skips them.
Once the model's checkpoint is saved, its resume folder is deleted. Each state carries a fingerprint of its recipe
(model, seed, grid point, protocol, budget, adversarial options, data, device type): resuming from a state of another
recipe is refused in one line (train without --resume to start afresh, or delete the folder); without --resume an
existing state is ignored and replaced; --resume with no state starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.core.errors import InputError
from engines.core.io import atomic_write, json_safe
from engines.train.protocol import Selection

RESUME_FOLDER = ".resume"
FORMAT = 1


def fingerprint(**recipe: Any) -> str:
    """The recipe a state belongs to, as canonical JSON (compared as text)."""
    return json.dumps(json_safe(recipe), sort_keys=True)


def _differs(saved: str, mine: str) -> str:
    """The first recipe field in which two fingerprints differ (for the refusal's one line)."""
    a, b = json.loads(saved), json.loads(mine)
    return next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), "format")


def _state_of(part: Any) -> Any:
    return part.get_state() if isinstance(part, torch.Generator) else part.state_dict()


def _load_into(part: Any, state: Any) -> None:
    if isinstance(part, torch.Generator):
        part.set_state(state)
    else:
        part.load_state_dict(state)


def _cpu(obj: Any) -> Any:
    """Tensors copied to the CPU (a saved state never keeps device tensors nor views into live ones)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(v) for v in obj)
    return obj


class EpochStates:
    """Where a minibatch loop keeps its state after each epoch: this base keeps nothing and resumes nothing (a
    training outside `run_training`, a test); `ResumeFile` writes and reads a file."""

    resumed_at: dict[str, Any] | None = None

    def restore(self, stage: str, parts: dict[str, Any]) -> dict[str, Any] | None:
        """Load the saved state into `parts` (optimizer, schedule, generators, pool: anything with `state_dict`, or
        a `torch.Generator`) and the model; its extras with "epoch" (epochs done), None: start at epoch 0."""
        return None

    def save(self, stage: str, epoch: int, parts: dict[str, Any], extras: dict[str, Any]) -> None:
        """Keep the state after `epoch` finished epochs (`extras`: plain values the loop needs to go on)."""


NO_STATES = EpochStates()


class ResumeFile(EpochStates):
    """One training's state file (see the module's note), bound to its model, model selection and device."""

    def __init__(
        self, path: Path, recipe: str, model: nn.Module, selection: Selection, device: torch.device, resume: bool
    ) -> None:
        self.path, self.recipe, self.model, self.selection, self.device = path, recipe, model, selection, device
        self.saved = _read(path, recipe) if resume else None

    def restore(self, stage: str, parts: dict[str, Any]) -> dict[str, Any] | None:
        saved, self.saved = self.saved, None  # read once: a state is resumed by one loop
        if saved is None:
            return None
        if saved["stage"] != stage or set(saved["parts"]) != set(parts):
            raise InputError(f"{self.path} was saved by another training phase: delete it or train without --resume")
        self.model.load_state_dict(saved["model"])
        for name, part in parts.items():
            _load_into(part, saved["parts"][name])
        self.selection.load_state_dict(saved["selection"])
        torch.set_rng_state(saved["rng"])
        if self.device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.resumed_at = {"stage": stage, "epoch": int(saved["epoch"])}
        return dict(saved["extras"]) | {"epoch": int(saved["epoch"])}

    def save(self, stage: str, epoch: int, parts: dict[str, Any], extras: dict[str, Any]) -> None:
        state = {
            "format": FORMAT,
            "recipe": self.recipe,
            "stage": stage,
            "epoch": epoch,
            "model": _cpu(self.model.state_dict()),
            "parts": {name: _cpu(_state_of(part)) for name, part in parts.items()},
            "selection": _cpu(self.selection.state_dict()),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "extras": _cpu(extras),
        }
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))


def _read(path: Path, recipe: str) -> dict[str, Any] | None:
    """A saved state of this recipe (None: none there); a state of another recipe or a damaged one is refused."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file (truncated, not a torch file): one line, no traceback
        raise InputError(
            f"cannot resume from {path} ({type(exc).__name__}): delete it or train without --resume"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise InputError(f"{path} is not a resume state of this version: delete it or train without --resume")
    if saved["recipe"] != recipe:
        raise InputError(
            f"{path} was saved by another recipe (its {_differs(saved['recipe'], recipe)} differs): "
            "train without --resume to start afresh, or delete it"
        )
    return saved


class ResumeFolder:
    """The resume folder of one saved model, `<out>/.resume/<id>/`: a state file per training in progress (a seed,
    a grid's point) and each finished training of a study."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path, self.resume = path, resume

    @classmethod
    def of(cls, out: Path, model_id: str, resume: bool) -> ResumeFolder:
        """The folder of the model saved as `out/<model_id>.safetensors`; without `resume` any old state is deleted
        now, so that nothing of an earlier run is mixed into this one."""
        folder = cls(Path(out) / RESUME_FOLDER / model_id, resume)
        if not resume:
            folder.clear()
        return folder

    @staticmethod
    def key(seed: int, hyper: dict[str, Any] | None) -> str:
        """A training's name in the folder: its seed, and a grid point's hash."""
        if not hyper:
            return f"seed{seed}"
        return f"seed{seed}-{hashlib.sha256(fingerprint(**hyper).encode()).hexdigest()[:12]}"

    def states(self, key: str, recipe: str, model: nn.Module, selection: Selection, device: torch.device) -> ResumeFile:
        """The state file of one training (a seed, a grid point) in this folder."""
        return ResumeFile(self.path / f"{key}.pt", recipe, model, selection, device, self.resume)

    def finished(self, key: str, recipe: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """A finished training of a study kept under `key` (its weights and sidecar); None: not finished."""
        saved = _read(self.path / f"{key}.done.pt", recipe) if self.resume else None
        return None if saved is None else (saved["model"], json.loads(saved["meta"]))

    def keep_finished(self, key: str, recipe: str, model: nn.Module, meta: dict[str, Any]) -> None:
        """Keep a finished training of a study (its epoch state is then no longer needed)."""
        state = {
            "format": FORMAT,
            "recipe": recipe,
            "model": _cpu(model.state_dict()),
            "meta": json.dumps(json_safe(meta)),
        }
        atomic_write(self.path / f"{key}.done.pt", lambda tmp: torch.save(state, tmp))
        (self.path / f"{key}.pt").unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete the folder's states (and the folder, and `.resume` when nothing else is in it)."""
        if self.path.is_dir():
            for file in self.path.iterdir():
                if file.is_file() and (file.suffix == ".pt" or file.name.endswith(".tmp")):
                    file.unlink(missing_ok=True)
        for folder in (self.path, self.path.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()
