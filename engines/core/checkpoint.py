"""Safe checkpoints: weights in safetensors, metadata in a JSON sidecar; never unpickle.

A user's own PyTorch file is read with ``torch.load(weights_only=True)`` only; a file that
would need to run code to load is refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from engines.core.data import data_fingerprint, dataset_name, sample_data_dir
from engines.core.errors import CheckpointError, DataError, ModelError
from engines.core.evaluate import logit_slices
from engines.core.io import atomic_write, file_sha256, read_json, write_json_atomic
from engines.core.memory import eval_batch
from engines.core.zoo import ZOO, build_model

_log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    """A model ready for inference plus what is known about it."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path | None  # the weights file (None: a torchvision model with random weights)
    sha256: str  # the model's identity for caches and --resume (the file's hash for a plain checkpoint)
    input_shape: tuple[int, ...] | None = None  # (C, H, W) the model expects, when it says (None: the data's)
    kind: str = "checkpoint"
    source: str = ""
    random_init: bool = False
    normalization: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """What run records say about the model."""
        doc: dict[str, Any] = {"id": self.id, "path": str(self.path) if self.path else None, "sha256": self.sha256}
        if self.kind != "checkpoint" or self.normalization:
            doc |= {"kind": self.kind, "source": self.source, "random_init": self.random_init}
            doc["normalization"] = self.normalization
        return doc

    @property
    def id(self) -> str:
        return str(self.meta.get("id", self.path.stem if self.path else "model"))


def models_dir() -> Path:
    return Path(os.environ.get("BLINDSPOT_MODELS", sample_data_dir() / "models"))


def save_checkpoint(model: nn.Module, meta: dict[str, Any], weights_path: str | Path) -> Path:
    """Write `X.safetensors` and its sidecar `X.json` atomically; returns the weights path."""
    weights_path = Path(weights_path).with_suffix(".safetensors")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda p: save_file(tensors, str(p)))
    meta = dict(meta)
    meta["weights_sha256"] = file_sha256(weights_path)
    write_json_atomic(weights_path.with_suffix(".json"), meta)
    return weights_path


def resolve_model_path(ref: str | Path) -> Path:
    """A zoo id (looked up in the models folder) or a path to a weights file."""
    ref_s = str(ref)
    p = Path(ref_s)
    if p.suffix in WEIGHT_SUFFIXES + TORCH_SUFFIXES + (".json",) or p.exists():
        if p.suffix == ".json":
            p = p.with_suffix(".safetensors")
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}")
        return p
    candidate = models_dir() / f"{ref_s}.safetensors"
    if candidate.is_file():
        return candidate
    if ref_s in ZOO:
        raise CheckpointError(
            f"zoo model {ref_s!r} is not trained yet: no {candidate} (run `blindspot train --model {ref_s}`)"
        )
    raise CheckpointError(f"unknown model {ref_s!r}: not a zoo id ({', '.join(ZOO)}) nor an existing file")


def _read_sidecar(weights: Path, required: bool) -> dict[str, Any] | None:
    side = weights.with_suffix(".json")
    if not side.is_file():
        if required:
            raise CheckpointError(f"{weights}: metadata sidecar {side.name} is missing (it holds the architecture)")
        return None
    try:
        meta = read_json(side)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or "spec" not in meta:
        raise CheckpointError(f"{side}: sidecar has no 'spec' (architecture) entry")
    return meta


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a weights-only PyTorch state_dict; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix in WEIGHT_SUFFIXES:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); truncated or corrupt?") from exc
    return _load_torch_state(path)


def _load_torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns at length before refusing a pickle; our one line says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused, loading it would execute code (a pickled module or other objects); save "
            "model.state_dict() instead and load it with a torchvision name or --model-factory plus --weights"
        ) from exc
    except Exception as exc:  # torch raises many kinds for corrupt files
        raise CheckpointError(
            f"{path}: not a readable PyTorch file ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return obj


def infer_mlp_spec(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture of a plain fc1..fcN state dict (sigmoid assumed), for sidecar-less files."""
    names = sorted((k for k in state if k.startswith("fc") and k.endswith(".weight")), key=lambda k: int(k[2:-7] or 0))
    if not names or len(names) * 2 != len(state):
        raise CheckpointError(
            "no sidecar JSON and the state_dict is not a plain fc1..fcN MLP; add a sidecar with a 'spec'"
        )
    shapes = [tuple(state[n].shape) for n in names]
    if shapes[0][1] != 784:
        raise CheckpointError(f"cannot infer the architecture: first layer takes {shapes[0][1]} inputs, not 784")
    return {
        "kind": "mlp",
        "input": [1, 28, 28],
        "hidden": [s[0] for s in shapes[:-1]],
        "activation": "sigmoid",
        "classes": shapes[-1][0],
    }


def load_checkpoint(ref: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a zoo id or a file; every failure is a CheckpointError with a one-line reason."""
    path = resolve_model_path(ref)
    if path.suffix in TORCH_SUFFIXES:
        state = load_state_file(path)
        meta = _read_sidecar(path, required=False) or {"id": path.stem, "spec": infer_mlp_spec(state)}
    else:
        meta = _read_sidecar(path, required=True) or {}  # required: never None
        state = load_state_file(path)
    sha256 = file_sha256(path)
    recorded = meta.get("weights_sha256")
    if recorded and recorded != sha256:
        raise CheckpointError(f"{path}: the weights are not the ones its sidecar describes (sha256 differs)")
    _check_shapes(path, meta["spec"], state)
    model = build_model(meta["spec"])
    model.load_state_dict(state, strict=True)
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or inf")
    model.eval()
    model.to(device)
    meta.setdefault("id", path.stem)
    return LoadedModel(model=model, meta=meta, path=path, sha256=sha256)


def _check_shapes(path: Path, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Compare the file's tensors with the architecture built on the meta device (no memory), so that a
    wrong or absurd spec is refused before anything of its size is allocated."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} ≠ {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = (
        ([f"missing {', '.join(missing[:4])}"] if missing else [])
        + ([f"unexpected {', '.join(extra[:4])}"] if extra else [])
        + ([f"shapes {'; '.join(wrong[:3])}"] if wrong else [])
    )
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the architecture in its sidecar: {' | '.join(problems)}")


def list_checkpoints(folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder) if folder else models_dir()
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def check_classifier(
    model: nn.Module, input_shape: tuple[int, ...] | list[int], device: torch.device | str = "cpu"
) -> int:
    """Run one dummy batch; the output must be (N, k) logits with k >= 2. Returns k."""
    with torch.no_grad():
        try:
            out = model(torch.zeros(2, *input_shape, device=device))
        except Exception as exc:
            raise ModelError(f"the model rejects inputs of shape {tuple(input_shape)}: {str(exc)[:200]}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model is not a classifier: expected (N, k) logits, got {shape}")
    return int(out.shape[1])


def check_finite_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu", batch: int | None = None
) -> None:
    """Refuse a model whose logits overflow to inf/NaN on the images: every attack on it would
    "fail" silently and report 0 % success."""
    for start, out in logit_slices(model, x, device, batch or eval_batch(x, 1024)):
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).any(1).sum())
            raise ModelError(
                f"the model's logits are inf or NaN on {bad} of images {start}..{start + len(out) - 1} "
                "(weights that overflow?); nothing to attack"
            )


def warn_if_trained_on_other_data(lm: LoadedModel, data_dir: str | Path | None) -> bool:
    """One warning line when a checkpoint meets data other than the data it was trained on (by md5s).

    Not an error: attacking a model on another set is legitimate, but a silent mismatch (a model
    trained on FashionMNIST attacked on the default MNIST) is how numbers go quietly wrong.
    """
    recorded = lm.meta.get("data_md5")
    if not recorded:
        return False
    try:
        used = data_fingerprint(data_dir)
    except DataError:
        return False
    if recorded == used:
        return False
    trained = (lm.meta.get("data") or {}).get("name") or (
        dataset_name(recorded) if isinstance(recorded, dict) else "other data"
    )
    here = dataset_name(used)
    _log.warning(
        "warning: %s was trained on %s (md5s in its sidecar) but is used here on %s (%s)",
        lm.id,
        trained,
        here,
        data_dir or "the shipped sample_data/mnist",
    )
    return True
