"""§4.2's adversarial training: a pool of adversarial examples, per layer, mixed into every minibatch.

The paper: "keeping a pool of adversarial examples a random subset of which is continuously replaced
by newly generated adversarial examples and which is mixed into the original training set all the
time … adversarial examples are generated for each layer output and are used to train all the layers
above." Here a model (an ``nn.Sequential``) is cut after each chosen activation k into a lower part
φ_k and an upper part g_k; an example for layer k is the box-constrained L-BFGS attack (§4.1, the same
solver as `blindspot attack`) run on g_k from φ_k(x), in the box of the activation's range ([0, 1]
for sigmoid, [-1, 1] for tanh, [0, ∞) for ReLU; "input" is the image box [0, 1]). It is fed to g_k
only, so its gradient reaches the layers above k and none below. With `mode` "fgm" or "vat" no pool is kept:
each minibatch gets fresh one-step perturbations at every cut (`engines.train.fresh_perturbations`), the controls
that tell whether the pool or the perturbations do the work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engines.core.errors import Cancelled, InputError
from engines.core.events import AdversarialEpoch, CancelCheck, EventSink
from engines.core.zoo import decay_loss
from engines.train.adversarial_pool import AdversarialPool, AdversarialSettings, RefreshStats
from engines.train.fresh_perturbations import fresh_loss
from engines.train.layer_cuts import LayerCut, layer_cuts, layer_shapes
from engines.train.protocol import WARM_UP, Protocol, adam_optimizer, cosine_schedule, no_check
from engines.train.resume import NO_STATES, EpochStates


def mixed_loss(
    model: nn.Module,
    cuts: list[LayerCut],
    x: torch.Tensor,
    y: torch.Tensor,
    pool_batch: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the clean batch and the pool's examples, each pool example through the part of
    the model above its layer only; also returns the clean logits (for the running error)."""
    logits = model(x)
    total = F.cross_entropy(logits, y, reduction="sum")
    count = len(y)
    by_name = {c.name: c for c in cuts}
    for name, (ex, lab) in pool_batch.items():
        ex, lab = ex.to(x.device), lab.to(x.device)
        total = total + F.cross_entropy(by_name[name].upper(ex), lab, reduction="sum")
        count += len(lab)
    return total / count, logits


def train_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lambdas: list[float],
    settings: AdversarialSettings,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_event: EventSink,
    cancel: CancelCheck,
    task: str,
    protocol: Protocol | None = None,
    check: Callable[[str, int], float] = no_check,
    states: EpochStates = NO_STATES,
) -> dict[str, Any]:
    """Minibatch Adam (cosine learning-rate decay, the paper's weight decay; or the protocol's AdamW and floor) on
    clean batches mixed with pool examples; the pool is filled after `warmup` clean epochs and refreshed every
    `refresh_every`. `x`, `y` are the training part only: the pool is made from them, never from a validation
    split; `check` (model selection) runs at each epoch's end, then `states` keeps the epoch's state (the pool's
    included) for resuming (`engines.train.resume`)."""
    protocol = protocol or Protocol()
    if settings.warmup >= epochs:
        raise InputError(f"--warmup ({settings.warmup}) leaves no adversarial epoch of {epochs}: lower it")
    cuts = layer_cuts(model, settings.layers)
    fresh = settings.mode != "pool"
    pool = AdversarialPool(cuts, settings.pool_size, layer_shapes(cuts, x), device=x.device, hidden=settings.hidden)
    gen = torch.Generator().manual_seed(seed)
    opt, lambdas = adam_optimizer(model, lr, lambdas, protocol)
    n = len(y)
    sched = cosine_schedule(opt, epochs * math.ceil(n / batch_size), protocol.lr_floor)
    per_batch = max(1, round(settings.mix * batch_size))
    refreshes: list[RefreshStats] = []
    start = time.perf_counter()
    loss_value = math.nan
    kept = {"optimizer": opt, "schedule": sched, "generator": gen, "pool": pool}
    saved = states.restore("adversarial", kept)
    if saved is not None:
        loss_value = float(saved["loss"])
        refreshes = [RefreshStats(int(r["epoch"]), float(r["seconds"]), dict(r["layers"])) for r in saved["refreshes"]]
        pool.images = x if pool.filled else None  # the pool's examples were made from these images
    model.train()
    for epoch in range(0 if saved is None else saved["epoch"], epochs):
        refreshed = None
        since = epoch - settings.warmup
        if since >= 0 and since % settings.refresh_every == 0 and not fresh:
            fraction = 1.0 if since == 0 else settings.refresh
            refreshed = pool.refresh(model, x, y, fraction, epoch, settings, gen, cancel, task)
            refreshes.append(refreshed)
        # the loss and the error stay on the device until the epoch ends: no host sync per minibatch
        wrong_t, last = torch.zeros((), dtype=torch.long, device=x.device), torch.full((), math.nan)
        order = _epoch_order(epoch, n, seed).to(x.device)
        batches = math.ceil(n / batch_size)
        draws = pool.epoch_draws(batches, per_batch, gen) if pool.filled else [{}] * batches
        perturbed = fresh and since >= 0
        for b, i in enumerate(range(0, n, batch_size)):
            if cancel():
                raise Cancelled(task)
            idx = order[i : i + batch_size]
            if perturbed:
                loss, logits = fresh_loss(
                    model, cuts, x[idx], y[idx], settings.mode, per_batch, settings.eps, settings.xi, gen
                )
            else:
                loss, logits = mixed_loss(model, cuts, x[idx], y[idx], pool.gather(draws[b]))
            loss = loss + decay_loss(model, lambdas)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last = loss.detach()
            wrong_t += (logits.detach().argmax(1) != y[idx]).sum()
        loss_value, wrong = float(last), int(wrong_t)
        stage = "adversarial" if pool.filled or perturbed else WARM_UP
        validation_error = check(stage, epoch + 1)
        on_event(
            AdversarialEpoch(
                task=task,
                done=epoch + 1,
                total=epochs,
                stage=stage,
                loss=loss_value,
                clean_error=100.0 * wrong / n,
                pool_error=pool.error(model, x.device) if pool.filled else math.nan,
                pool_age=pool.age(epoch) if pool.filled else math.nan,
                refreshed=0 if refreshed is None else sum(int(v["replaced"] or 0) for v in refreshed.layers.values()),
                validation_error=validation_error,
            )
        )
        states.save("adversarial", epoch + 1, kept, {"loss": loss_value, "refreshes": [asdict(r) for r in refreshes]})
    model.eval()
    seconds = time.perf_counter() - start
    refresh_seconds = sum(r.seconds for r in refreshes)
    return {
        "optimizer": "adam with an adversarial pool (§4.2)"
        if not fresh
        else f"adam with fresh {settings.mode} perturbations",
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "final_loss": loss_value,
        "adversarial": settings.record()
        | {"layers_used": [c.name for c in cuts], "pool_examples_per_batch": per_batch},
        "refreshes": [r.to_json() for r in refreshes],
        "refresh_seconds": round(refresh_seconds, 1),
        "refresh_share": round(refresh_seconds / max(seconds, 1e-9), 3),
    }


def _epoch_order(epoch: int, n: int, seed: int) -> torch.Tensor:
    """The clean images' order in `epoch`: its own generator, so the pool's draws do not shift it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
