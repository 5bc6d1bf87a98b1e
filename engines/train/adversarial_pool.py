"""§4.2's pool of adversarial examples, per layer: its settings, its refresh by the attack, and the draws mixed into
minibatches.

"keeping a pool of adversarial examples a random subset of which is continuously replaced by newly generated
adversarial examples": each refresh attacks (§4.1's box-constrained L-BFGS, the solver of `blindspot attack`) the
upper part of the model above each chosen layer (`engines.train.layer_cuts`) from fresh training images.
The fixes of issue 24 (nearest targets, a distortion cap, hidden examples kept as perturbations) are named
settings whose defaults keep the shipped recipes' behaviour; `mode` "fgm" and "vat" replace the pool by fresh
perturbations per minibatch (`engines.train.fresh_perturbations`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from engines.attack.search import AttackConfig, attack_problems
from engines.attack.targets import choose_targets, parse_target
from engines.core.choices import TARGETS
from engines.core.errors import Cancelled, InputError
from engines.core.evaluate import count_wrong
from engines.core.events import CancelCheck
from engines.core.precision import float32_precision
from engines.train.layer_cuts import LayerCut
from engines.train.pool_fixes import CAP_POLICIES, cap_examples, nearest_targets, rms_distance

REFRESH_CHUNK = 1024  # problems per attack call: bounds the solver's memory and keeps cancel prompt
MODES = ("pool", "fgm", "vat")  # §4.2's pool; fresh one-step L2 gradient perturbations; virtual adversarial
HIDDEN = ("activation", "perturbation")  # a pool example stored as the layer's point, or as r re-applied to φ_k(x)
# `cap = "auto"`: each layer's cap is the median rms distortion of the first fill's first chunk of successful
# examples, i.e. the clean (warm-up) net's own minimum distortions, so later examples cannot grow past what the clean
# net needed.
AUTO_CAP = "auto"
FRESH_SETTINGS = ("mode", "mix", "layers", "warmup", "eps")  # the settings fgm uses (vat: also xi)


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
    cap: float | str | None = None  # rms distortion cap, in each layer's units (None: no cap; "auto": see AUTO_CAP)
    cap_policy: str = "drop"  # above the cap: drop the example, or shrink it onto the cap
    hidden: str = "activation"  # "perturbation": keep r and train on φ_k(x) + r of the current net
    mode: str = "pool"
    eps: float = 0.05  # fgm / vat: the perturbation's rms, in each layer's units
    xi: float = 1e-3  # vat: the rms of the power iteration's probe

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
            raise InputError("--target all gives nine examples per image; the pool takes one: random, nearest, …")
        if self.target not in (*TARGETS, "nearest") and not str(self.target).lstrip("-").isdigit():
            raise InputError(f"unknown --target {self.target!r}: use random, nearest, next, least-likely or a label")
        if self.cap == AUTO_CAP:
            pass
        elif isinstance(self.cap, str):
            try:
                object.__setattr__(self, "cap", float(self.cap))
            except ValueError:
                raise InputError(f"--adv-cap is an rms distortion or {AUTO_CAP!r} (got {self.cap!r})") from None
        if isinstance(self.cap, float | int) and not (math.isfinite(self.cap) and self.cap > 0):
            raise InputError(f"--adv-cap is an rms distortion in the layer's units, above 0 (got {self.cap})")
        if self.cap_policy not in CAP_POLICIES:
            raise InputError(f"unknown --adv-cap-policy {self.cap_policy!r}: choose {' or '.join(CAP_POLICIES)}")
        if self.hidden not in HIDDEN:
            raise InputError(f"unknown --adv-hidden {self.hidden!r}: choose {' or '.join(HIDDEN)}")
        if self.mode not in MODES:
            raise InputError(f"unknown --adversarial-mode {self.mode!r}: choose {', '.join(MODES)}")
        for name, value in (("--adv-eps", self.eps), ("--adv-xi", self.xi)):
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} is an rms perturbation in the layer's units, above 0 (got {value})")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    def record(self) -> dict[str, Any]:
        """What a sidecar records: every setting for the pool; for fgm/vat only those the fresh perturbations use
        (the pool's size, refresh, targets, attack, cap and hidden storage do not apply to them)."""
        d = self.to_json()
        if self.mode == "pool":
            return d
        return {k: d[k] for k in FRESH_SETTINGS + (("xi",) if self.mode == "vat" else ())}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdversarialSettings:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if known.get("layers") is not None:
            known["layers"] = tuple(str(v) for v in known["layers"])
        try:
            return cls(**known)
        except TypeError as exc:
            raise InputError(f"damaged adversarial settings: {exc}") from None


@dataclass
class RefreshStats:
    """One refresh of the pool, per layer: how many slots were attacked, replaced, and how far they moved."""

    epoch: int
    seconds: float
    layers: dict[str, dict[str, float | None]] = field(default_factory=dict)  # cap: None before it is measured

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
        hidden: str = "activation",
    ) -> None:
        self.cuts = cuts
        self.hidden = hidden  # "perturbation": `examples` holds r, re-applied to φ_k(images[sources]) at each use
        self.images: torch.Tensor | None = None  # the training images the examples came from (set by refresh)
        share, extra = divmod(pool_size, len(cuts))
        self.sizes = {c.name: share + (k < extra) for k, c in enumerate(cuts)}
        self.examples = {c.name: torch.zeros((self.sizes[c.name], *shapes[c.name]), device=device) for c in cuts}
        self.labels = {c.name: torch.zeros(self.sizes[c.name], dtype=torch.long, device=device) for c in cuts}
        self.born = {c.name: torch.full((self.sizes[c.name],), -1, dtype=torch.long) for c in cuts}
        self.sources = {  # image index, on the pool's device: re-applying a perturbation gathers its image
            c.name: torch.full((self.sizes[c.name],), -1, dtype=torch.long, device=device) for c in cuts
        }
        self.filled = False
        self.caps: dict[str, float] = {}  # the cap of each layer (fixed, or `AUTO_CAP`'s once measured)

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def state_dict(self) -> dict[str, Any]:
        """The pool's contents, for a resumed training (`engines.train.resume`); the images are the training's own
        and are not kept."""
        return {
            "examples": dict(self.examples),
            "labels": dict(self.labels),
            "born": dict(self.born),
            "sources": dict(self.sources),
            "sizes": dict(self.sizes),
            "caps": dict(self.caps),
            "filled": self.filled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to the pool a resumed training had (`state_dict`'s record); the training re-attaches its images."""
        if dict(state["sizes"]) != self.sizes:
            raise InputError("the saved adversarial pool has other layers or sizes: train without --resume")
        for store in ("examples", "labels", "born", "sources"):
            mine = getattr(self, store)
            for name, value in state[store].items():
                mine[name] = value.to(mine[name].device)
        self.caps = {k: float(v) for k, v in state["caps"].items()}
        self.filled = bool(state["filled"])

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
        self.images = x
        was_training = model.training
        model.eval()
        try:
            for cut in self.cuts:
                size = self.sizes[cut.name]
                count = size if fraction >= 1.0 else max(1, round(fraction * size))
                slots = torch.randperm(size, generator=gen)[:count]
                images = torch.randint(0, len(y), (count,), generator=gen)
                found, moved, capped = self._regenerate(cut, slots, images, x, y, epoch, settings, gen, cancel, task)
                stats.layers[cut.name] = {
                    "attacked": count,
                    "replaced": found,
                    "success_rate": round(found / count, 4),
                    "mean_distortion": round(moved, 5),
                }
                if settings.cap is not None:  # successes above the cap: dropped or shrunk onto it
                    stats.layers[cut.name]["dropped" if settings.cap_policy == "drop" else "shrunk"] = capped
                    stats.layers[cut.name]["cap"] = round(self.caps[cut.name], 5) if cut.name in self.caps else None
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
    ) -> tuple[int, float, int]:
        # the solver the shipped §4.2 recipes were trained with (c = 1, ×10, cross-entropy), so they reproduce
        config = AttackConfig.from_dict({"c_steps": settings.c_steps, "max_iter": settings.max_iter})
        images, labels = x[picked.to(x.device)], y[picked.to(y.device)]
        device = images.device
        with torch.no_grad():
            classes = int(cut.upper(cut.lower(images[:1])).shape[1])
        mode = "nearest" if settings.target == "nearest" else parse_target(settings.target, classes)
        found, moved, capped = 0, 0.0, 0
        for i in range(0, len(slots), REFRESH_CHUNK):
            if cancel():
                raise Cancelled(task)
            part = slice(i, i + REFRESH_CHUNK)
            with torch.no_grad():
                h = cut.lower(images[part]).detach()
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            if mode == "nearest":
                target = nearest_targets(cut.upper, h, labels[part]).to(device)
            else:
                target = choose_targets(mode, labels[part], classes, seed=seed, model=cut.upper, images=h).to(device)
            with float32_precision(False):  # the attack's line search needs float32, not TF32 (see precision.py)
                res = attack_problems(
                    cut.upper, h, target, config, cancel=cancel, task=task, lower=cut.box[0], upper=cut.box[1]
                )
            success, x_adv = res.success, res.x_adv
            if settings.cap is not None:
                cap = self._cap(cut.name, settings.cap, h, x_adv, success)
                x_adv, success, over = cap_examples(h, x_adv, success, cap, settings.cap_policy)
                capped += over
            ok = success.cpu()
            keep = slots[part][ok]
            examples = torch.where(success.view(-1, *[1] * (h.ndim - 1)), x_adv, h)
            if not self.filled:  # the first fill leaves no empty slot: a failed attack's clean point stands in
                keep, ok = slots[part], torch.ones_like(ok)
            stored = examples - h if self.hidden == "perturbation" else examples
            pool_device = self.examples[cut.name].device
            self.examples[cut.name][keep.to(pool_device)] = stored[ok.to(stored.device)].to(pool_device)
            self.labels[cut.name][keep.to(pool_device)] = labels[part][ok.to(labels.device)].to(pool_device)
            self.born[cut.name][keep] = epoch
            self.sources[cut.name][keep.to(pool_device)] = picked[part][ok].to(pool_device)
            found += int(success.sum())
            if bool(success.any()):
                moved += float(rms_distance(x_adv[success], h[success]).sum())
        return found, moved / max(found, 1), capped

    def _cap(
        self, name: str, cap: float | str, clean: torch.Tensor, examples: torch.Tensor, success: torch.Tensor
    ) -> float:
        """Layer `name`'s cap: the given one, or (`AUTO_CAP`) the median distortion of its first successes."""
        if name not in self.caps:
            if cap != AUTO_CAP:
                self.caps[name] = float(cap)
            else:
                # an image the net already gives the target counts 0; a median of 0 (a net that gets most images
                # wrong, as an untrained one does) measures nothing: no cap until a chunk's median is above 0
                moved = rms_distance(examples[success], clean[success])
                median = float(moved.median()) if len(moved) else 0.0
                if median == 0.0:
                    return math.inf
                self.caps[name] = median
        return self.caps[name]

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
        return {name: (self.points(name, idx), self.labels[name][idx]) for name, idx in draw.items()}

    def points(self, name: str, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The examples of layer `name` (the slots `idx`; None: all) as points in that layer's space: stored as
        they are, or (hidden = "perturbation") r re-applied to φ_k(x) of the net as it is now (its layers in eval
        mode, no gradient: the example trains the layers above only), clamped to the layer's box."""
        stored = self.examples[name] if idx is None else self.examples[name][idx]
        if self.hidden != "perturbation":
            return stored
        if self.images is None:
            raise InputError("the pool holds perturbations but was never refreshed: no images to apply them to")
        cut = next(c for c in self.cuts if c.name == name)
        sources = self.sources[name] if idx is None else self.sources[name][idx]
        modes = [(m, m.training) for m in cut.lower.modules()]
        cut.lower.eval()
        try:
            with torch.no_grad():
                base = cut.lower(self.images[sources.to(self.images.device)]).to(stored.device)
        finally:
            for m, mode in modes:
                m.train(mode)
        return (base + stored).clamp(cut.box[0], cut.box[1])

    def age(self, epoch: int) -> float:
        """Mean age of the pool's examples in epochs."""
        born = torch.cat(list(self.born.values())).float()
        return float((epoch - born).mean())

    def error(self, model: nn.Module, device: torch.device | str) -> float:
        """Percent of the pool's examples the model (eval mode) gets wrong: how adversarial the pool still is."""
        was_training = model.training
        model.eval()
        wrong = sum(count_wrong(c.upper, self.points(c.name), self.labels[c.name], device, 4096) for c in self.cuts)
        model.train(was_training)
        return 100.0 * wrong / max(len(self), 1)
