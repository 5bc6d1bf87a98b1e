"""§4.2's adversarial training: a pool of adversarial examples, per layer, mixed into every minibatch.

The paper: "keeping a pool of adversarial examples a random subset of which is continuously replaced
by newly generated adversarial examples and which is mixed into the original training set all the
time … adversarial examples are generated for each layer output and are used to train all the layers
above." Here a model (an ``nn.Sequential``) is cut after each chosen activation k into a lower part
φ_k and an upper part g_k; an example for layer k is the box-constrained L-BFGS attack (§4.1, the same
solver as `blindspot attack`) run on g_k from φ_k(x), in the box of the activation's range ([0, 1]
for sigmoid, [-1, 1] for tanh, [0, ∞) for ReLU; "input" is the image box [0, 1]). It is fed to g_k
only, so its gradient reaches the layers above k and none below.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engines.attack.problems import LEGACY_SETTINGS, AttackConfig, attack_problems
from engines.attack.targets import choose_targets, parse_target
from engines.core.errors import Cancelled, InputError
from engines.core.events import AdversarialEpoch, CancelCheck, EventSink
from engines.core.precision import float32_precision
from engines.core.zoo import decay_loss

INPUT = "input"
BOXES: dict[type[nn.Module], tuple[float, float]] = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.ReLU: (0.0, math.inf),
}
REFRESH_CHUNK = 1024  # problems per attack call: bounds the solver's memory and keeps cancel prompt


@dataclass(frozen=True)
class AdversarialSettings:
    """The pool and its refresh: what `blindspot train --adversarial` and a zoo recipe fix."""

    pool_size: int = 12000
    refresh: float = 0.2  # fraction of the pool regenerated at each refresh
    refresh_every: int = 1  # epochs between refreshes
    mix: float = 0.25  # pool examples per clean example in a minibatch
    layers: tuple[str, ...] | None = None  # None: the input and every activation
    target: str = "random"
    c_steps: int = 5
    max_iter: int = 40
    warmup: int = 2  # clean epochs before the pool is first filled from the model as it then is

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers:
                raise InputError("--adv-layers names no layer: give input and/or activation names (act1,act2)")
        if self.pool_size < 1:
            raise InputError(f"--pool-size must be at least 1 (got {self.pool_size})")
        if not 0.0 < self.refresh <= 1.0:
            raise InputError(f"--refresh is the fraction of the pool regenerated, in (0, 1] (got {self.refresh})")
        if self.refresh_every < 1:
            raise InputError(f"--refresh-every must be at least 1 epoch (got {self.refresh_every})")
        if not 0.0 < self.mix <= 8.0:
            raise InputError(f"--mix is pool examples per clean example, in (0, 8] (got {self.mix})")
        if self.c_steps < 1 or self.max_iter < 1:
            raise InputError("--adv-c-steps and --adv-max-iter must be at least 1")
        if self.warmup < 0:
            raise InputError(f"--warmup must be 0 or more epochs (got {self.warmup})")
        if self.target == "all":
            raise InputError("--target all gives nine examples per image; the pool takes one: random, next, …")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdversarialSettings:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if known.get("layers") is not None:
            known["layers"] = tuple(str(v) for v in known["layers"])
        try:
            return cls(**known)
        except TypeError as exc:
            raise InputError(f"damaged adversarial settings: {exc}") from None


@dataclass(frozen=True)
class LayerCut:
    """The model cut after one layer: `lower` maps images to the layer's output, `upper` maps it to logits."""

    name: str
    lower: nn.Module
    upper: nn.Module
    box: tuple[float, float]


def layer_cuts(model: nn.Module, layers: tuple[str, ...] | None) -> list[LayerCut]:
    """The cuts for `layers` (None: "input" and every activation of the model), in the model's order."""
    if not isinstance(model, nn.Sequential):
        if layers is None or tuple(layers) == (INPUT,):
            return [LayerCut(INPUT, nn.Identity(), model, (0.0, 1.0))]
        raise InputError("per-layer adversarial examples need an nn.Sequential model: use --adv-layers input")
    children = list(model.named_children())
    acts = [name for name, m in children if type(m) in BOXES]
    wanted = (INPUT, *acts) if layers is None else tuple(layers)
    unknown = [w for w in wanted if w != INPUT and w not in acts]
    if unknown:
        raise InputError(f"unknown layer {unknown[0]!r} for --adv-layers: choose from {', '.join((INPUT, *acts))}")
    cuts = []
    if INPUT in wanted:
        cuts.append(LayerCut(INPUT, nn.Identity(), model, (0.0, 1.0)))
    for i, (name, module) in enumerate(children):
        if name in wanted:
            cuts.append(LayerCut(name, model[: i + 1], model[i + 1 :], BOXES[type(module)]))
    return cuts


@dataclass
class RefreshStats:
    """One refresh of the pool, per layer: how many slots were attacked, replaced, and how far they moved."""

    epoch: int
    seconds: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seconds": round(self.seconds, 2), "layers": self.layers}


class AdversarialPool:
    """Fixed-size pool: for each cut, a tensor of examples in that layer's space, their true labels and the
    epoch each was generated in. `pool_size` is split evenly over the cuts. Examples and labels live on the
    training's device (no copy per minibatch); the bookkeeping on the CPU."""

    def __init__(
        self,
        cuts: list[LayerCut],
        pool_size: int,
        shapes: dict[str, tuple[int, ...]],
        device: torch.device | str = "cpu",
    ) -> None:
        self.cuts = cuts
        share, extra = divmod(pool_size, len(cuts))
        self.sizes = {c.name: share + (k < extra) for k, c in enumerate(cuts)}
        self.examples = {c.name: torch.zeros((self.sizes[c.name], *shapes[c.name]), device=device) for c in cuts}
        self.labels = {c.name: torch.zeros(self.sizes[c.name], dtype=torch.long, device=device) for c in cuts}
        self.born = {c.name: torch.full((self.sizes[c.name],), -1, dtype=torch.long) for c in cuts}
        self.sources = {c.name: torch.full((self.sizes[c.name],), -1, dtype=torch.long) for c in cuts}  # image index
        self.filled = False

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def refresh(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        fraction: float,
        epoch: int,
        settings: AdversarialSettings,
        gen: torch.Generator,
        cancel: CancelCheck,
        task: str,
    ) -> RefreshStats:
        """Regenerate a random `fraction` of each layer's slots from fresh random training images, with the
        model as it is now (eval mode). A slot whose attack fails keeps its old example (none: the clean one)."""
        start = time.perf_counter()
        stats = RefreshStats(epoch, 0.0)
        was_training = model.training
        model.eval()
        try:
            for cut in self.cuts:
                size = self.sizes[cut.name]
                count = size if fraction >= 1.0 else max(1, round(fraction * size))
                slots = torch.randperm(size, generator=gen)[:count]
                images = torch.randint(0, len(y), (count,), generator=gen)
                found, moved = self._regenerate(cut, slots, images, x, y, epoch, settings, gen, cancel, task)
                stats.layers[cut.name] = {
                    "attacked": count,
                    "replaced": found,
                    "success_rate": round(found / count, 4),
                    "mean_distortion": round(moved, 5),
                }
        finally:
            model.train(was_training)
        self.filled = True
        stats.seconds = time.perf_counter() - start
        return stats

    def _regenerate(
        self,
        cut: LayerCut,
        slots: torch.Tensor,
        picked: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        epoch: int,
        settings: AdversarialSettings,
        gen: torch.Generator,
        cancel: CancelCheck,
        task: str,
    ) -> tuple[int, float]:
        # the solver the shipped §4.2 recipes were trained with (c = 1, ×10, cross-entropy), so they reproduce
        config = AttackConfig(c_steps=settings.c_steps, max_iter=settings.max_iter, **LEGACY_SETTINGS)
        images, labels = x[picked.to(x.device)], y[picked.to(y.device)]
        device = images.device
        with torch.no_grad():
            classes = int(cut.upper(cut.lower(images[:1])).shape[1])
        mode = parse_target(settings.target, classes)
        found, moved = 0, 0.0
        for i in range(0, len(slots), REFRESH_CHUNK):
            if cancel():
                raise Cancelled(task)
            part = slice(i, i + REFRESH_CHUNK)
            with torch.no_grad():
                h = cut.lower(images[part]).detach()
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            target = choose_targets(mode, labels[part], classes, seed=seed, model=cut.upper, images=h).to(device)
            with float32_precision(False):  # the attack's line search needs float32, not TF32 (see precision.py)
                res = attack_problems(
                    cut.upper, h, target, config, cancel=cancel, task=task, lower=cut.box[0], upper=cut.box[1]
                )
            ok = res.success.cpu()
            keep = slots[part][ok]
            examples = torch.where(res.success.view(-1, *[1] * (h.ndim - 1)), res.x_adv, h)
            if not self.filled:  # the first fill leaves no empty slot: a failed attack's clean point stands in
                keep, ok = slots[part], torch.ones_like(ok)
            pool_device = self.examples[cut.name].device
            self.examples[cut.name][keep.to(pool_device)] = examples[ok.to(examples.device)].to(pool_device)
            self.labels[cut.name][keep.to(pool_device)] = labels[part][ok.to(labels.device)].to(pool_device)
            self.born[cut.name][keep] = epoch
            self.sources[cut.name][keep] = picked[part][ok]
            found += int(res.success.sum())
            if bool(res.success.any()):
                n = h[0].numel()
                moved += float((res.sq_dist[res.success] / n).sqrt().sum())
        return found, moved / max(found, 1)

    def sample(self, count: int, gen: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """`count` examples drawn uniformly (with replacement) from the whole pool, grouped by layer."""
        return self.gather(self.epoch_draws(1, count, gen)[0])

    def epoch_draws(self, batches: int, count: int, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
        """The pool slots of an epoch's `batches` minibatches, `count` each, per layer: the draws one `randint`
        per minibatch would make, made at once on the CPU and sent to the pool's device in one copy per
        layer, so that a minibatch's mixing waits for no transfer and no host sync (see `gather`)."""
        names = [c.name for c in self.cuts]
        offsets = torch.tensor([0] + [self.sizes[n] for n in names]).cumsum(0)
        picks = torch.randint(0, len(self), (batches, count), generator=gen)
        draws: list[dict[str, torch.Tensor]] = [{} for _ in range(batches)]
        for k, name in enumerate(names):
            mine = (picks >= offsets[k]) & (picks < offsets[k + 1])
            sizes = mine.sum(1).tolist()
            flat = (picks[mine] - offsets[k]).to(self.examples[name].device)
            for b, part in enumerate(flat.split(sizes)):
                if sizes[b]:
                    draws[b][name] = part
        return draws

    def gather(self, draw: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One minibatch's pool examples and labels from its `epoch_draws` entry, grouped by layer."""
        return {name: (self.examples[name][idx], self.labels[name][idx]) for name, idx in draw.items()}

    def age(self, epoch: int) -> float:
        """Mean age of the pool's examples in epochs."""
        born = torch.cat(list(self.born.values())).float()
        return float((epoch - born).mean())

    def error(self, model: nn.Module, device: torch.device | str) -> float:
        """Percent of the pool's examples the model (eval mode) gets wrong: how adversarial the pool still is."""
        wrong, total = torch.zeros((), dtype=torch.long, device=device), 0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for cut in self.cuts:
                for i in range(0, self.sizes[cut.name], 4096):
                    ex = self.examples[cut.name][i : i + 4096].to(device)
                    lab = self.labels[cut.name][i : i + 4096].to(device)
                    wrong += (cut.upper(ex).argmax(1) != lab).sum()
                    total += len(lab)
        model.train(was_training)
        return 100.0 * int(wrong) / max(total, 1)


def layer_shapes(cuts: list[LayerCut], example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    with torch.no_grad():
        return {c.name: tuple(c.lower(example[:1]).shape[1:]) for c in cuts}


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
) -> dict[str, Any]:
    """Minibatch Adam (cosine learning-rate decay, the paper's weight decay) on clean batches mixed with
    pool examples; the pool is filled after `warmup` clean epochs and refreshed every `refresh_every`."""
    if settings.warmup >= epochs:
        raise InputError(f"--warmup ({settings.warmup}) leaves no adversarial epoch of {epochs}: lower it")
    cuts = layer_cuts(model, settings.layers)
    pool = AdversarialPool(cuts, settings.pool_size, layer_shapes(cuts, x), device=x.device)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(y)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    per_batch = max(1, round(settings.mix * batch_size))
    refreshes: list[RefreshStats] = []
    start = time.perf_counter()
    loss_value = math.nan
    model.train()
    for epoch in range(epochs):
        refreshed = None
        since = epoch - settings.warmup
        if since >= 0 and since % settings.refresh_every == 0:
            fraction = 1.0 if since == 0 else settings.refresh
            refreshed = pool.refresh(model, x, y, fraction, epoch, settings, gen, cancel, task)
            refreshes.append(refreshed)
        # the loss and the error stay on the device until the epoch ends: no host sync per minibatch
        wrong, last = torch.zeros((), dtype=torch.long, device=x.device), torch.full((), math.nan)
        order = _epoch_order(epoch, n, seed).to(x.device)
        batches = math.ceil(n / batch_size)
        draws = pool.epoch_draws(batches, per_batch, gen) if pool.filled else [{}] * batches
        for b, i in enumerate(range(0, n, batch_size)):
            if cancel():
                raise Cancelled(task)
            idx = order[i : i + batch_size]
            loss, logits = mixed_loss(model, cuts, x[idx], y[idx], pool.gather(draws[b]))
            loss = loss + decay_loss(model, lambdas)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last = loss.detach()
            wrong += (logits.detach().argmax(1) != y[idx]).sum()
        loss_value, wrong = float(last), int(wrong)
        on_event(
            AdversarialEpoch(
                task=task,
                done=epoch + 1,
                total=epochs,
                stage="adversarial" if pool.filled else "warm-up",
                loss=loss_value,
                clean_error=100.0 * wrong / n,
                pool_error=pool.error(model, x.device) if pool.filled else math.nan,
                pool_age=pool.age(epoch) if pool.filled else math.nan,
                refreshed=0 if refreshed is None else sum(int(v["replaced"]) for v in refreshed.layers.values()),
            )
        )
    model.eval()
    seconds = time.perf_counter() - start
    refresh_seconds = sum(r.seconds for r in refreshes)
    return {
        "optimizer": "adam with an adversarial pool (§4.2)",
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "final_loss": loss_value,
        "adversarial": settings.to_json()
        | {"layers_used": [c.name for c in cuts], "pool_examples_per_batch": per_batch},
        "refreshes": [r.to_json() for r in refreshes],
        "refresh_seconds": round(refresh_seconds, 1),
        "refresh_share": round(refresh_seconds / max(seconds, 1e-9), 3),
    }


def _epoch_order(epoch: int, n: int, seed: int) -> torch.Tensor:
    """The clean images' order in `epoch`: its own generator, so the pool's draws do not shift it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
