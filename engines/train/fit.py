"""Training the zoo: full-batch L-BFGS (the paper's choice) or minibatch Adam, with the paper's decay.

Objective = mean cross-entropy + Σ_layers λ Σ w² / k (see `zoo.decay_loss`), or decoupled decay (the protocol's
option). Every training goes through the protocol (`engines.train.protocol`): an optional validation split held out
of the training data, the best-validation checkpoint kept, the test set evaluated once on it. Deterministic for a
seed on the CPU. Progress goes out as typed events (`EpochDone`); cancellation is checked between steps.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.core.checkpoint import check_classifier, save_checkpoint
from engines.core.choices import OPTIMIZERS
from engines.core.data import IDX_NAME, PAPER_SPLIT_SEED, Dataset, dataset_identity, load_split
from engines.core.device import cpu_speed_settings
from engines.core.errors import Cancelled, DataError, InputError, ModelError
from engines.core.evaluate import error_rate
from engines.core.events import CancelCheck, EpochDone, EventSink, ignore_events, never_cancel
from engines.core.zoo import ZooEntry, build_model, count_parameters, describe_spec, zoo_entry
from engines.train.adversarial import train_adversarial
from engines.train.adversarial_pool import AdversarialSettings
from engines.train.hyper import with_hyper
from engines.train.minibatch import CheckpointHook, objective, pretrain_sparse_autoencoder, train_adam
from engines.train.protocol import Protocol, Selection, decay_formula, no_check, protocol_for, split_validation
from engines.train.resume import NO_STATES, EpochStates, ResumeFolder, fingerprint


@dataclass
class FittedModel:
    """One trained model, its sidecar metadata and (when saved) its weights file."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path | None


def train_lbfgs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lambdas: list[float],
    max_iter: int,
    on_event: EventSink,
    cancel: CancelCheck,
    task: str,
    chunk: int = 10,
    check: CheckpointHook = no_check,
) -> dict[str, Any]:
    """Full-batch L-BFGS with a strong-Wolfe line search until convergence or `max_iter`.

    Runs in blocks of `chunk` iterations (one `EpochDone` each, after `check`: model selection's checkpoints);
    the cancel check runs at every function evaluation, since one block of a large net on the full training
    set takes many seconds.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=chunk,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )
    last = math.inf
    done = 0
    loss_value = math.nan

    def closure() -> torch.Tensor:
        if cancel():
            raise Cancelled(task)
        opt.zero_grad()
        loss = objective(model, x, y, lambdas)
        loss.backward()
        return loss

    model.train()
    while done < max_iter:
        if cancel():
            raise Cancelled(task)
        block = min(chunk, max_iter - done)  # never more iterations than asked for
        opt.param_groups[0]["max_iter"] = block
        opt.param_groups[0]["max_eval"] = block * 5 // 4
        opt.step(closure)
        done += block
        with torch.no_grad():
            loss_value = float(objective(model, x, y, lambdas))
        error = check("L-BFGS", done)
        on_event(
            EpochDone(task=task, done=done, total=max_iter, stage="L-BFGS", loss=loss_value, validation_error=error)
        )
        if abs(last - loss_value) <= 1e-10 * max(1.0, abs(loss_value)):
            break
        last = loss_value
    model.eval()
    return {"optimizer": "lbfgs", "iterations": done, "final_loss": loss_value}


@dataclass(frozen=True)
class Budget:
    """How long and how a training runs: the user's optimizer, L-BFGS iterations and Adam epochs over the recipe's."""

    optimizer: str = "recipe"
    max_iter: int | None = None
    epochs: int | None = None


def _fit(
    entry: ZooEntry,
    model: nn.Module,
    data: Dataset,
    budget: Budget,
    seed: int,
    device: torch.device,
    on_event: EventSink,
    cancel: CancelCheck,
    adversarial: dict[str, Any] | None = None,
    protocol: Protocol | None = None,
    check: CheckpointHook = no_check,
    states: EpochStates = NO_STATES,
) -> dict[str, Any]:
    """Train `model` on `data` (the training part only: a validation split is held out before) by the recipe;
    `check` is model selection's hook, run at every epoch's or L-BFGS block's end; `states` keeps each minibatch
    epoch's state for resuming (an L-BFGS phase restarts from the last one kept)."""
    recipe, protocol = dict(entry.recipe), protocol or Protocol()
    x, y = data.images.to(device), data.labels.to(device)
    task, optimizer, max_iter, epochs = f"train {entry.id}", budget.optimizer, budget.max_iter, budget.epochs
    if optimizer == "recipe":
        optimizer = recipe["optimizer"]
    if adversarial is not None or optimizer == "adversarial":
        settings = adversarial_settings(entry, adversarial)
        return train_adversarial(
            model,
            x,
            y,
            entry.decay,
            settings,
            epochs=epochs or recipe.get("epochs", 30),
            batch_size=recipe.get("batch_size", 128),
            lr=recipe.get("lr", 3e-3),
            seed=seed,
            on_event=on_event,
            cancel=cancel,
            task=task,
            protocol=protocol,
            check=check,
            states=states,
        )
    if optimizer == "autoencoder":
        encoder = model.fc1
        assert isinstance(encoder, nn.Linear)  # the autoencoder recipe's model: fc1 (encoder) then fc2 (softmax)
        info = pretrain_sparse_autoencoder(encoder, x, recipe, seed, on_event, cancel, task, states)
        for p in encoder.parameters():
            p.requires_grad_(False)
        with torch.no_grad():  # the encoder is frozen: compute its features once
            features = torch.sigmoid(encoder(x.flatten(1)))
        head = nn.Sequential(model.get_submodule("fc2"))  # shares its parameters with the model
        iters = max_iter or recipe["softmax_max_iter"]
        info |= train_lbfgs(head, features, y, entry.decay[1:], iters, on_event, cancel, task, check=check)
        info["optimizer"] = "sparse autoencoder (adam), frozen; softmax by full-batch lbfgs"
        info["frozen"] = ["fc1"]
        return info
    if optimizer == "lbfgs":
        iters = max_iter or recipe.get("max_iter", 500)
        return train_lbfgs(model, x, y, entry.decay, iters, on_event, cancel, task, check=check)
    if optimizer == "adam":
        info = train_adam(
            model,
            x,
            y,
            entry.decay,
            epochs or recipe.get("epochs", 20),
            recipe.get("batch_size", 128),
            recipe.get("lr", 1e-3),
            seed,
            on_event,
            cancel,
            task,
            protocol,
            check,
            states,
        )
        polish = recipe.get("polish_lbfgs", 0) if max_iter is None else max_iter
        if polish:
            info |= {"polish": train_lbfgs(model, x, y, entry.decay, polish, on_event, cancel, task, check=check)}
            info["optimizer"] = "adam, then full-batch lbfgs"
        return info
    raise InputError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def evaluate_splits(
    model: nn.Module, data_dir: str | Path | None, device: torch.device, trained_on: Dataset | None = None
) -> dict[str, float]:
    """Error (%) on train, test, P1 and P2. `train_error` is on `trained_on` when given (the images trained on,
    without a validation split's), else on the whole train split; P1 and P2 are always the paper's two halves of
    the train split, held-out images included."""
    model.eval()
    errors = {}
    for split in ("train", "test", "p1", "p2"):
        data = trained_on if split == "train" and trained_on is not None else load_split(split, data_dir)
        errors[f"{split}_error"] = round(error_rate(model, data.images, data.labels, device), 4)
    return errors


TRAIN_ERROR_ON = "the images trained on: the {split} split less the {size} validation images (p1/p2: whole halves)"


def training_part(meta: dict[str, Any], data_dir: str | Path | None) -> Dataset | None:
    """The images a model with a validation split was trained on, from its sidecar (None: no split)."""
    if not meta.get("validation"):
        return None
    protocol = Protocol(**meta["protocol"])
    return split_validation(load_split(meta["train_split"], data_dir), protocol)[0]


def check_data_fits(model: nn.Module, data_dir: str | Path | None, device: torch.device) -> dict[str, Any]:
    """Refuse, before any training, data whose images the model cannot take or whose labels it cannot
    output (a 32x32 set for a 784-input net, 26 letters for 10 outputs); returns the data's identity."""
    identity = dataset_identity(data_dir)
    shape = tuple(identity["image_shape"])
    try:
        classes = check_classifier(model, shape, device)
    except ModelError as exc:
        raise DataError(f"the data's images ({'x'.join(map(str, shape))}) do not fit this model: {exc}") from None
    if identity["classes"] > classes:
        raise DataError(f"the data has {identity['classes']} classes but this model has {classes} outputs")
    return identity


def adversarial_settings(entry: ZooEntry, overrides: dict[str, Any] | None) -> AdversarialSettings:
    """The pool settings a training uses: the recipe's own (a §4.2 zoo model) with the user's options over them."""
    return AdversarialSettings.from_json(entry.recipe.get("adversarial", {}) | (overrides or {}))


def adversarial_id(entry: ZooEntry, adversarial: dict[str, Any] | None) -> str:
    """A plain zoo model trained with an adversarial pool is saved as `<id>-adv`, never under the plain id."""
    return f"{entry.id}-adv" if adversarial is not None and entry.recipe["optimizer"] != "adversarial" else entry.id


def trained_model_id(zoo_id: str, identity: dict[str, Any]) -> str:
    """The id a zoo model trained on this data is saved under: its zoo id on MNIST (the paper's data);
    on other data the zoo id plus the data's name (for unnamed IDX data, the start of its training
    images' md5), so that a checkpoint never wears a paper id whose numbers it did not earn."""
    name = str(identity["name"])
    if name == "MNIST":
        return zoo_id
    if name == IDX_NAME:
        return f"{zoo_id}-data-{identity['md5s']['train-images'][:8]}"
    return f"{zoo_id}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"


@cpu_speed_settings()
def train_zoo_model(
    model_id: str,
    out_dir: str | Path | None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    optimizer: str = "recipe",
    data_dir: str | Path | None = None,
    max_iter: int | None = None,
    epochs: int | None = None,
    adversarial: dict[str, Any] | None = None,
    protocol: dict[str, Any] | None = None,
    hyper: dict[str, Any] | None = None,
    evaluate: bool = True,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
    resume: ResumeFolder | None = None,
) -> FittedModel:
    """Train one zoo model from scratch and (if `out_dir`) save it as `out_dir/<id>.safetensors`
    (`trained_model_id`: the zoo id on MNIST, `<id>-adv` when `adversarial` makes a plain model adversarial).
    `adversarial` holds the user's pool options, `protocol` the user's protocol options (validation, weight-decay
    mode, lr floor; None: the recipe's).

    With a validation split the model kept is the checkpoint of lowest validation error; the test set (and the
    other splits) are evaluated once, on it; `evaluate=False` (a grid's point, chosen on validation alone) reads no
    split but the validation part, and leaves `metrics` empty until `evaluate_fitted`. `hyper` is a grid point's
    values over the recipe (`engines.train.hyper`).

    `resume` (from `run_training`) keeps each epoch's state in its folder, resumes from it when asked, returns a
    study's finished training from it untrained, and is cleared once the model is saved (`engines.train.resume`)."""
    entry = with_hyper(zoo_entry(model_id), hyper or {}, adversarial=adversarial is not None)
    device = torch.device(device)
    chosen = protocol_for(entry.recipe, protocol)
    torch.manual_seed(seed)
    model = build_model(entry.spec).to(device)
    identity = check_data_fits(model, data_dir, device)
    budget = Budget(optimizer, max_iter, epochs)
    recipe = fingerprint(
        entry=[entry.id, entry.spec, entry.decay, entry.recipe, entry.train_split],
        seed=seed,
        hyper=hyper,
        protocol=chosen.to_json(),
        budget=[budget.optimizer, budget.max_iter, budget.epochs],
        adversarial=adversarial,
        data=identity["md5s"],
        device=device.type,
    )
    key = ResumeFolder.key(seed, hyper)
    done = None if resume is None else resume.finished(key, recipe)
    if done is not None:  # a study's training finished before the interrupt: not trained again
        model.load_state_dict(done[0])
        model.eval()
        fitted = FittedModel(model, done[1], None)
        if evaluate and not fitted.meta["metrics"]:
            evaluate_fitted(fitted, data_dir, device)
        return fitted
    data, validation, held_out = split_validation(load_split(entry.train_split, data_dir), chosen)
    selection = Selection(model, validation, device)
    states = NO_STATES if resume is None else resume.states(key, recipe, model, selection, device)
    start = time.perf_counter()
    info = _fit(
        entry, model, data, budget, seed, device, on_event, cancel, adversarial, chosen, selection.check, states
    )
    seconds = time.perf_counter() - start
    if states.resumed_at is not None:
        info["resumed_from"] = states.resumed_at
    selected = selection.finish()  # the best-validation checkpoint back in the model
    model.eval()
    meta = {
        "id": trained_model_id(adversarial_id(entry, adversarial), identity),
        "zoo_id": entry.id,
        "description": entry.description,
        "architecture": describe_spec(entry.spec),
        "spec": entry.spec,
        "parameters": count_parameters(model),
        "weight_decay": entry.decay,
        "weight_decay_formula": decay_formula(chosen, str(info.get("optimizer", ""))),
        "protocol": chosen.to_json(),
        "train_split": entry.train_split,
        "split_seed": PAPER_SPLIT_SEED,
        "seed": seed,
        "training": info | {"seconds": round(seconds, 1), "device": str(device)},
        "metrics": {},
        "paper": entry.paper if identity["name"] == "MNIST" else {},  # the paper's figures are MNIST figures
        "data": identity,
        "data_md5": identity["md5s"],  # hashed once, by check_data_fits
        "torch": torch.__version__,
    }
    if hyper:
        meta["hyper"] = dict(hyper)
    if held_out is not None and selected is not None:
        meta |= {"validation": held_out | selected, "validation_error": selected["chosen"]["validation_error"]}
    if held_out is not None:
        meta["train_error_on"] = TRAIN_ERROR_ON.format(split=entry.train_split, size=held_out["size"])
    fitted = FittedModel(model, meta, None)
    if evaluate:
        evaluate_fitted(fitted, data_dir, device, data if held_out is not None else None)
    if out_dir:
        assert evaluate, "a model is saved only once evaluated (its metrics are its sidecar's)"
        fitted.path = save_fitted(model, meta, out_dir)
        if resume is not None:
            resume.clear()
    elif resume is not None:
        resume.keep_finished(key, recipe, model, meta)
    return fitted


def evaluate_fitted(
    fitted: FittedModel, data_dir: str | Path | None, device: torch.device | str, trained_on: Dataset | None = None
) -> None:
    """The test set (and the other splits) read once, on the kept model: its `metrics`; `train_error` on the images
    trained on (`trained_on`, else found again from the sidecar's validation split)."""
    fitted.model.eval()
    if trained_on is None:
        trained_on = training_part(fitted.meta, data_dir)
    fitted.meta["metrics"] = evaluate_splits(fitted.model, data_dir, torch.device(device), trained_on)


def save_fitted(model: nn.Module, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `<out_dir>/<meta id>.safetensors` and its sidecar (atomically, by `save_checkpoint`)."""
    return save_checkpoint(model.to("cpu"), meta, Path(out_dir) / f"{meta['id']}.safetensors")
