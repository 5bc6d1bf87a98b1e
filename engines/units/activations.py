"""Activations φ(x) of a named layer over an image set: captured once with a forward hook, cached on disk.

A layer is any named module of the model (``model.named_modules()``), e.g. ``fc1`` or ``pool1``.
φ(x) is the layer's output flattened per image, so for a conv layer it is the C×H×W activation read
as one vector (the paper's φ) with ``pool="none"``; ``"max"``, ``"mean"`` or ``"center"`` instead make a unit
a channel: the spatial max, mean or centre value of its activation map, one value per channel, and random
directions then live in channel space. ``"auto"`` (the default) is ``"max"`` for layers with spatial axes;
no pooling applies to layers without them.
The cache key holds the checkpoint hash, the layer, the pooling and a hash of the images, so a
changed model, layer or image set can never be served a stale entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engines.core.cache import cache_dir, cache_key, cache_load, cache_store
from engines.core.checkpoint import LoadedModel
from engines.core.data import Dataset
from engines.core.distributed import Ranks, gather, on_main_first
from engines.core.errors import Cancelled, InputError, ModelError
from engines.core.events import CancelCheck, EventSink, Step, ignore_events, never_cancel

POOLINGS = ("auto", "none", "max", "mean", "center")
CACHE_KIND = "activations"
CACHE_VERSION = 1


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its name, module class and per-image output shape."""

    name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Length of φ(x) for this layer (the flattened output)."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "size": self.size}


@dataclass
class Activations:
    """φ(x) for every image of a set: ``features`` is (N, D) float32 on the CPU."""

    features: torch.Tensor
    layer: LayerInfo
    pool: str
    key: str
    cached: bool
    note: str = ""  # why the cache could not be used, if it could not (the run goes on without it)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def list_layers(
    model: nn.Module, input_shape: tuple[int, ...] | list[int] = (1, 28, 28), device: torch.device | str = "cpu"
) -> list[LayerInfo]:
    """Every named submodule with the shape of its output for one dummy image, in forward order."""
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and name not in shapes:
                shapes[name] = (type(mod).__name__, tuple(int(s) for s in out.shape[1:]))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    except Exception as exc:  # a user model may reject the input in many ways
        raise ModelError(f"the model rejects inputs of shape {tuple(input_shape)}: {str(exc)[:200]}") from exc
    finally:
        for h in handles:
            h.remove()
    return [LayerInfo(name, kind, shape) for name, (kind, shape) in shapes.items()]


def find_layer(
    model: nn.Module,
    layer: str,
    input_shape: tuple[int, ...] | list[int] = (1, 28, 28),
    device: torch.device | str = "cpu",
) -> LayerInfo:
    """The named layer, or an InputError that lists the names there are."""
    layers = list_layers(model, input_shape, device)
    for info in layers:
        if info.name == layer:
            return info
    raise InputError(f"unknown layer {layer!r}: this model has {', '.join(i.name for i in layers)}")


def effective_pooling(pool: str, shape: tuple[int, ...]) -> str:
    """The pooling a layer of per-image output `shape` gets: none without spatial axes, max for "auto"."""
    if len(shape) < 2:
        return "none"
    return "max" if pool == "auto" else pool


def _reduce(out: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "none" or out.ndim <= 2:
        return out.flatten(1)
    if pool == "center":
        centre = out
        for axis in range(2, out.ndim):
            centre = centre.select(2, out.shape[axis] // 2)
        return centre
    spatial = out.flatten(2)
    return spatial.amax(2) if pool in ("max", "auto") else spatial.mean(2)


def images_digest(images: torch.Tensor) -> str:
    """sha256 of the image tensor's bytes: identifies the image set in cache keys."""
    data = images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def capture(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    *,
    pool: str = "none",
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
) -> torch.Tensor:
    """Run `images` through `model` in batches and keep the output of `layer` as (N, D) float32 (CPU)."""
    if pool not in POOLINGS:
        raise InputError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLINGS)}")
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        names = [n for n in modules if n]
        raise InputError(f"unknown layer {layer!r}: this model has {', '.join(names)}")
    grabbed: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"layer {layer!r} does not output a tensor")
        grabbed.append(_reduce(out.detach(), pool).to("cpu", torch.float32))

    handle = modules[layer].register_forward_hook(hook)
    chunks: list[torch.Tensor] = []
    task = f"activations {layer}"
    n = int(images.shape[0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                if cancel():
                    raise Cancelled(task)
                grabbed.clear()
                model(images[start : start + batch_size].to(device))
                if not grabbed:
                    raise ModelError(f"layer {layer!r} was not reached by the forward pass")
                chunks.append(grabbed[0])
                on_event(Step(task=task, done=min(start + batch_size, n), total=n))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def layer_activations(
    loaded: LoadedModel,
    layer: str,
    data: Dataset,
    *,
    pool: str = "auto",
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    use_cache: bool = True,
    on_event: EventSink = ignore_events,
    cancel: CancelCheck = never_cancel,
    ranks: Ranks = Ranks(),
) -> Activations:
    """φ(x) of `layer` for every image of `data`, from the cache when the same model/layer/images were seen.

    Under torchrun (`ranks`) each rank runs its contiguous shard of the images and every rank gets the whole
    (N, D) features; rank 0 decides about the cache and writes it."""
    if pool not in POOLINGS:
        raise InputError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLINGS)}")
    input_shape = tuple(int(s) for s in data.images.shape[1:])
    info = find_layer(loaded.model, layer, input_shape, device)
    effective_pool = effective_pooling(pool, info.shape)
    parts = {
        "version": CACHE_VERSION,
        "checkpoint_sha256": loaded.sha256,
        "layer": layer,
        "pool": effective_pool,
        "data": {"name": data.name, "n": len(data), "images_sha256": images_digest(data.images)},
    }
    key = cache_key(**parts)
    note, feats = on_main_first(ranks, lambda: _cached(key, len(data), use_cache), share=_hit_only)
    if feats is True:  # rank 0 found it: the other ranks read it from the shared cache themselves
        feats = _cached(key, len(data), use_cache)[1]
    if feats is not None:
        on_event(Step(task=f"activations {layer}", done=len(data), total=len(data), message="from cache"))
        return Activations(feats.float(), info, effective_pool, key, cached=True)
    lo, hi = ranks.shard(len(data))
    feats = capture(
        loaded.model,
        layer,
        data.images[lo:hi],
        pool=effective_pool,
        device=device,
        batch_size=batch_size,
        on_event=on_event,
        cancel=cancel,
    )
    if ranks.sharded:
        feats = torch.cat([part for part in gather(feats, ranks) if part.numel()])
    if use_cache and not note and ranks.main:
        try:
            cache_store(CACHE_KIND, key, {"features": feats}, parts | {"shape": list(info.shape)})
        except OSError as exc:  # an unwritable cache must not cost the computed result
            note = _cache_note(exc)
    return Activations(feats, info, effective_pool, key, cached=False, note=note)


def _cached(key: str, n: int, use_cache: bool) -> tuple[str, torch.Tensor | None]:
    """A cache entry's features for n images, or None; a note when the cache could not be read."""
    if not use_cache:
        return "", None
    try:
        hit = cache_load(CACHE_KIND, key)
    except OSError as exc:  # an unreadable cache folder is a miss, not a failure
        return _cache_note(exc), None
    if hit is not None and "features" in hit[0] and hit[0]["features"].shape[0] == n:
        return "", hit[0]["features"]
    return "", None


def _hit_only(found: tuple[str, torch.Tensor | None]) -> tuple[str, bool | None]:
    """What the other ranks need to hear of a cache lookup: a hit (they read it themselves) or not."""
    return found[0], None if found[1] is None else True


def _cache_note(exc: OSError) -> str:
    return f"activations not cached: cannot use {cache_dir()} ({exc.strerror or exc}); set BLINDSPOT_CACHE"
