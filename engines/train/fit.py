"""Training the zoo: full-batch L-BFGS (the paper's choice) or minibatch Adam, with the paper's decay.

Objective = mean cross-entropy + Σ_layers λ Σ w² / k (see `zoo.decay_loss`). Deterministic for a
seed on the CPU. Progress goes out as typed events (`EpochDone`); cancellation is checked between steps.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engines.core.checkpoint import check_classifier, save_checkpoint
from engines.core.choices import OPTIMIZERS
from engines.core.data import IDX_NAME, PAPER_SPLIT_SEED, Dataset, dataset_identity, load_split
from engines.core.device import cpu_speed_settings
from engines.core.errors import Cancelled, DataError, InputError, ModelError
from engines.core.events import CancelCheck, EpochDone, EventSink, ignore_events, never_cancel
from engines.core.zoo import ZooEntry, build_model, count_parameters, decay_loss, describe_spec, zoo_entry
from engines.train.adversarial import AdversarialSettings, train_adversarial


@dataclass
class FittedModel:
    """One trained model, its sidecar metadata and (when saved) its weights file."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path | None


def error_rate(model: nn.Module, data: Dataset, device: torch.device | str = "cpu", batch: int = 4096) -> float:
    """Percent of `data` that `model` misclassifies."""
    model.eval()
    wrong = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = data.images[i : i + batch].to(device)
            y = data.labels[i : i + batch].to(device)
            wrong += (model(x).argmax(1) != y).sum()
    return 100.0 * int(wrong) / max(len(data), 1)


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lambdas: list[float]) -> torch.Tensor:
    return F.cross_entropy(model(x), y) + decay_loss(model, lambdas)


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
) -> dict[str, Any]:
    """Full-batch L-BFGS with a strong-Wolfe line search until convergence or `max_iter`.

    Runs in blocks of `chunk` iterations (one `EpochDone` each); the cancel check runs at every
    function evaluation, since one block of a large net on the full training set takes many seconds.
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
        on_event(EpochDone(task=task, done=done, total=max_iter, stage="L-BFGS", loss=loss_value))
        if abs(last - loss_value) <= 1e-10 * max(1.0, abs(loss_value)):
            break
        last = loss_value
    model.eval()
    return {"optimizer": "lbfgs", "iterations": done, "final_loss": loss_value}


def _adam_epochs(
    opt: torch.optim.Optimizer,
    n: int,
    batch_size: int,
    epochs: int,
    gen: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    epoch_done: Callable[[int, float], None],
    cancel: CancelCheck,
    task: str,
) -> float:
    """Epochs of shuffled minibatches under a cosine learning-rate decay; the last batch's loss.

    Cancel is checked per batch: an epoch of a large net takes longer than a user should wait."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(n / batch_size))
    loss_value = math.nan
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        last = torch.full((), math.nan)
        for i in range(0, n, batch_size):
            if cancel():
                raise Cancelled(task)
            loss = batch_loss(perm[i : i + batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last = loss.detach()  # read once per epoch: a float() here would wait for the GPU every batch
        if cancel():
            raise Cancelled(task)
        loss_value = float(last)
        epoch_done(epoch + 1, loss_value)
    return loss_value


def train_adam(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lambdas: list[float],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_event: EventSink,
    cancel: CancelCheck,
    task: str,
) -> dict[str, Any]:
    """Minibatch Adam with a cosine learning-rate decay; the decay term is added per batch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss_value = _adam_epochs(
        opt,
        len(y),
        batch_size,
        epochs,
        gen,
        lambda idx: objective(model, x[idx.to(x.device)], y[idx.to(y.device)], lambdas),
        lambda epoch, loss: on_event(EpochDone(task=task, done=epoch, total=epochs, stage="Adam", loss=loss)),
        cancel,
        task,
    )
    model.eval()
    return {"optimizer": "adam", "epochs": epochs, "batch_size": batch_size, "lr": lr, "final_loss": loss_value}


def pretrain_sparse_autoencoder(
    encoder: nn.Linear,
    x: torch.Tensor,
    recipe: dict[str, Any],
    seed: int,
    on_event: EventSink,
    cancel: CancelCheck,
    task: str,
) -> dict[str, Any]:
    """Unsupervised sparse autoencoder (sigmoid, KL sparsity penalty), trained then frozen."""
    hidden, visible = encoder.out_features, encoder.in_features
    decoder = nn.Linear(hidden, visible).to(x.device)
    rho, beta, lam = recipe["sparsity"], recipe["sparsity_weight"], recipe["ae_decay"]
    gen = torch.Generator().manual_seed(seed + 1)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=recipe["lr"])
    flat = x.flatten(1)
    epochs, bs = recipe["ae_epochs"], recipe["batch_size"]

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        v = flat[idx.to(flat.device)]
        h = torch.sigmoid(encoder(v))
        recon = torch.sigmoid(decoder(h))
        rho_hat = h.mean(0).clamp(1e-6, 1 - 1e-6)
        kl = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
        loss = 0.5 * (recon - v).pow(2).sum(1).mean() + beta * kl
        return loss + lam / 2 * (encoder.weight.pow(2).sum() + decoder.weight.pow(2).sum())

    loss_value = _adam_epochs(
        opt,
        len(flat),
        bs,
        epochs,
        gen,
        batch_loss,
        lambda epoch, loss: on_event(EpochDone(task=task, done=epoch, total=epochs, stage="autoencoder", loss=loss)),
        cancel,
        task,
    )
    return {
        "autoencoder_epochs": epochs,
        "sparsity": rho,
        "sparsity_weight": beta,
        "ae_decay": lam,
        "ae_final_loss": loss_value,
    }


def _fit(
    entry: ZooEntry,
    model: nn.Module,
    data: Dataset,
    optimizer: str,
    seed: int,
    device: torch.device,
    on_event: EventSink,
    cancel: CancelCheck,
    max_iter: int | None,
    epochs: int | None,
    adversarial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    recipe = dict(entry.recipe)
    x, y = data.images.to(device), data.labels.to(device)
    task = f"train {entry.id}"
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
        )
    if optimizer == "autoencoder":
        encoder = model.fc1
        info = pretrain_sparse_autoencoder(encoder, x, recipe, seed, on_event, cancel, task)
        for p in encoder.parameters():
            p.requires_grad_(False)
        with torch.no_grad():  # the encoder is frozen: compute its features once
            features = torch.sigmoid(encoder(x.flatten(1)))
        head = nn.Sequential(model.fc2)  # shares its parameters with the model
        iters = max_iter or recipe["softmax_max_iter"]
        info |= train_lbfgs(head, features, y, entry.decay[1:], iters, on_event, cancel, task)
        info["optimizer"] = "sparse autoencoder (adam), frozen; softmax by full-batch lbfgs"
        info["frozen"] = ["fc1"]
        return info
    if optimizer == "lbfgs":
        return train_lbfgs(model, x, y, entry.decay, max_iter or recipe.get("max_iter", 500), on_event, cancel, task)
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
        )
        polish = recipe.get("polish_lbfgs", 0) if max_iter is None else max_iter
        if polish:
            info |= {"polish": train_lbfgs(model, x, y, entry.decay, polish, on_event, cancel, task)}
            info["optimizer"] = "adam, then full-batch lbfgs"
        return info
    raise InputError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def evaluate_splits(model: nn.Module, data_dir: str | Path | None, device: torch.device) -> dict[str, float]:
    """Error (%) on train, test, P1 and P2."""
    return {
        f"{s}_error": round(error_rate(model, load_split(s, data_dir), device), 4)
        for s in ("train", "test", "p1", "p2")
    }


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
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> FittedModel:
    """Train one zoo model from scratch and (if `out_dir`) save it as `out_dir/<id>.safetensors`
    (`trained_model_id`: the zoo id on MNIST, `<id>-adv` when `adversarial` makes a plain model adversarial).
    `adversarial` holds the user's pool options (None: train as the recipe says).

    A recipe's own "seed" (the §4.2 seed-spread model) is added to `seed`."""
    entry = zoo_entry(model_id)
    device = torch.device(device)
    seed = seed + int(entry.recipe.get("seed", 0))
    torch.manual_seed(seed)
    model = build_model(entry.spec).to(device)
    identity = check_data_fits(model, data_dir, device)
    data = load_split(entry.train_split, data_dir)
    start = time.perf_counter()
    info = _fit(entry, model, data, optimizer, seed, device, on_event, cancel, max_iter, epochs, adversarial)
    seconds = time.perf_counter() - start
    model.eval()
    metrics = evaluate_splits(model, data_dir, device)
    meta = {
        "id": trained_model_id(adversarial_id(entry, adversarial), identity),
        "zoo_id": entry.id,
        "description": entry.description,
        "architecture": describe_spec(entry.spec),
        "spec": entry.spec,
        "parameters": count_parameters(model),
        "weight_decay": entry.decay,
        "weight_decay_formula": "mean cross-entropy + sum_layers lambda * sum(w^2) / k, k = units in the layer",
        "train_split": entry.train_split,
        "split_seed": PAPER_SPLIT_SEED,
        "seed": seed,
        "training": info | {"seconds": round(seconds, 1), "device": str(device)},
        "metrics": metrics,
        "paper": entry.paper if identity["name"] == "MNIST" else {},  # the paper's figures are MNIST figures
        "data": identity,
        "data_md5": identity["md5s"],  # hashed once, by check_data_fits
        "torch": torch.__version__,
    }
    path = save_checkpoint(model.to("cpu"), meta, Path(out_dir) / f"{meta['id']}.safetensors") if out_dir else None
    return FittedModel(model, meta, path)
