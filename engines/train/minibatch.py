"""Minibatch training: Adam epochs under a cosine schedule, the zoo's Adam recipe, and the sparse autoencoder's
pre-training. The protocol (`engines.train.protocol`) fixes the optimizer, the schedule's floor and the checkpoint
hook that model selection reads at each epoch's end."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from engines.core.errors import Cancelled
from engines.core.events import CancelCheck, EpochDone, EventSink
from engines.core.zoo import decay_loss
from engines.train.protocol import Protocol, adam_optimizer, cosine_schedule, no_check
from engines.train.resume import NO_STATES, EpochStates

CheckpointHook = Callable[[str, int], float]  # (stage, done) -> validation error (%), nan without a split


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lambdas: list[float]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y) + decay_loss(model, lambdas)


def adam_epochs(
    opt: torch.optim.Optimizer,
    n: int,
    batch_size: int,
    epochs: int,
    gen: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    epoch_done: Callable[[int, float], None],
    cancel: CancelCheck,
    task: str,
    lr_floor: float = 0.0,
    states: EpochStates = NO_STATES,
    stage: str = "Adam",
    parts: dict[str, Any] | None = None,
) -> float:
    """Epochs of shuffled minibatches under a cosine learning-rate decay (to `lr_floor` × the initial rate);
    the last batch's loss.

    Cancel is checked per batch: an epoch of a large net takes longer than a user should wait. After each epoch
    `states` keeps what resuming needs (the optimizer, the schedule, `gen` and `parts`: other modules trained) and,
    when resuming, the loop starts after the saved epoch (`engines.train.resume`)."""
    sched = cosine_schedule(opt, epochs * math.ceil(n / batch_size), lr_floor)
    kept = {"optimizer": opt, "schedule": sched, "order": gen} | (parts or {})
    saved = states.restore(stage, kept)
    first, loss_value = (0, math.nan) if saved is None else (saved["epoch"], float(saved["loss"]))
    for epoch in range(first, epochs):
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
        states.save(stage, epoch + 1, kept, {"loss": loss_value})
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
    protocol: Protocol | None = None,
    check: CheckpointHook = no_check,
    states: EpochStates = NO_STATES,
) -> dict[str, Any]:
    """Minibatch Adam (or AdamW) with a cosine learning-rate decay; the paper's decay term is added per batch.
    `check` runs at each epoch's end (model selection); its error goes out with the epoch's event; `states` keeps
    each epoch's state for resuming."""
    protocol = protocol or Protocol()
    gen = torch.Generator().manual_seed(seed)
    opt, loss_lambdas = adam_optimizer(model, lr, lambdas, protocol)
    model.train()

    def epoch_done(epoch: int, loss: float) -> None:
        error = check("Adam", epoch)
        on_event(EpochDone(task=task, done=epoch, total=epochs, stage="Adam", loss=loss, validation_error=error))

    loss_value = adam_epochs(
        opt,
        len(y),
        batch_size,
        epochs,
        gen,
        lambda idx: objective(model, x[idx.to(x.device)], y[idx.to(y.device)], loss_lambdas),
        epoch_done,
        cancel,
        task,
        protocol.lr_floor,
        states,
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
    states: EpochStates = NO_STATES,
) -> dict[str, Any]:
    """Unsupervised sparse autoencoder (sigmoid, KL sparsity penalty), trained then frozen (`states`: each epoch's
    state for resuming; the decoder is kept beside the model)."""
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

    loss_value = adam_epochs(
        opt,
        len(flat),
        bs,
        epochs,
        gen,
        batch_loss,
        lambda epoch, loss: on_event(EpochDone(task=task, done=epoch, total=epochs, stage="autoencoder", loss=loss)),
        cancel,
        task,
        states=states,
        stage="autoencoder",
        parts={"decoder": decoder},
    )
    return {
        "autoencoder_epochs": epochs,
        "sparsity": rho,
        "sparsity_weight": beta,
        "ae_decay": lam,
        "ae_final_loss": loss_value,
    }
