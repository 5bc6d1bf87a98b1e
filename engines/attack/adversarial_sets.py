"""Adversarial sets for the transfer tables, cached by everything that determines them.

A set is an attack run (`engines.attack.operation`) with `--target all` (Table 1's minimum distortion)
stored in the cache under a key made of the source checkpoint's hash, the data files' md5s,
split, offset, N, seed and every attack setting. A second request is served from the cache; a
changed setting gets another key, so it is never served stale; an interrupted computation
resumes from its finished chunks.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engines.attack.chunks import load_samples
from engines.attack.operation import SUMMARY_FILE, AttackRequest, resume_attack, run_attack
from engines.attack.search import AttackConfig
from engines.core.cache import cache_key, writable_cache_dir
from engines.core.context import RunContext
from engines.core.distributed import on_main_first
from engines.core.errors import InputError, RunInUse
from engines.core.io import read_json
from engines.core.model_data import data_record, open_model_data
from engines.core.models import ModelRef, load_model
from engines.core.runs import RUN_FILE

ADVSET_VERSION = 2  # bump when the attack's results change for the same settings (2: trivial images apart)


@dataclass
class AdversarialSet:
    source: str
    folder: Path | None  # the cache folder; None when computed without a usable cache
    samples: dict[str, torch.Tensor]
    summary: dict[str, Any]
    cached: bool


def advset_key(
    model_sha256: str, split: str, n: int, offset: int, seed: int, config: AttackConfig, data_md5: Any
) -> str:
    return cache_key(
        kind="advset",
        version=ADVSET_VERSION,
        model=model_sha256,
        split=split,
        n=n,
        offset=offset,
        seed=seed,
        config=config.as_dict(),
        target="all",
        data=data_md5,
    )


def adversarial_set(request: AttackRequest, ctx: RunContext) -> AdversarialSet:
    """The minimum-distortion adversarial set (`--target all`) of `request.model` on its images.

    Kept in the cache under a key of everything that fixes it; an interrupted set resumes from its
    finished chunks. The context's output folder does not apply: the cache decides where it lives.
    """
    if request.target != "all":
        raise InputError("adversarial sets use --target all (the closest wrong label of each image)")
    lm = load_model(request.model, "cpu")
    source = open_model_data(lm, request.data_dir, request.split, request.image_size, request.classes_file)
    key = advset_key(
        lm.sha256, request.split, request.n, request.offset, request.seed, request.config, _data_key(source)
    )
    if ctx.tf32:  # TF32 changes the examples: such a set never stands in for a float32 one, nor the reverse
        key += "-tf32"
    # a checkpoint is pinned to its file (a zoo id could point elsewhere later); other models are their reference
    pinned = (
        replace(request, model=ModelRef.from_json(str(lm.path)))
        if lm.kind == "checkpoint" and not lm.normalization
        else request
    )
    if ctx.ranks.sharded:
        return _sharded_set(pinned, key, lm.id, ctx)
    root = writable_cache_dir("advsets")
    if root is None:  # no usable cache (one warning was printed): compute in a temporary folder
        with tempfile.TemporaryDirectory(prefix="blindspot-advset-") as tmp:
            folder = Path(tmp) / key
            run_attack(pinned, replace(ctx, out=folder, overwrite=False))
            summary = read_json(folder / SUMMARY_FILE)
            summary["model"] = lm.id
            samples = load_samples(folder)
        return AdversarialSet(source=lm.id, folder=None, samples=samples, summary=summary, cached=False)
    folder = root / key
    cached = _read_entry(folder)
    if cached is None and not _resumed(folder, replace(ctx, out=folder, overwrite=False)):
        run_attack(pinned, replace(ctx, out=folder, overwrite=True))
    summary, samples = cached or (read_json(folder / SUMMARY_FILE), load_samples(folder))
    summary["model"] = lm.id
    return AdversarialSet(source=lm.id, folder=folder, samples=samples, summary=summary, cached=cached is not None)


def _sharded_set(request: AttackRequest, key: str, model_id: str, ctx: RunContext) -> AdversarialSet:
    """Under torchrun: rank 0 decides (served from the cache, resumed, or computed), every rank takes part in
    the attack, the cache folder (on the file system all ranks share) holds the set."""

    def decide() -> tuple[Path, str]:
        root = writable_cache_dir("advsets")
        if root is None:
            raise InputError(
                "under torchrun the adversarial sets need a cache folder every rank can write: set BLINDSPOT_CACHE"
            )
        folder = root / key
        if _read_entry(folder) is not None:
            return folder, "cached"
        unfinished = (folder / RUN_FILE).is_file() and not (folder / SUMMARY_FILE).is_file()
        return folder, "resume" if unfinished else "new"

    folder, action = on_main_first(ctx.ranks, decide)
    here = replace(ctx, out=folder, overwrite=action == "new")
    if action == "resume":
        try:
            resume_attack(folder, replace(here, overwrite=False))
        except RunInUse:
            raise
        except InputError:  # damaged: computed again, by every rank alike
            action = "new"
    if action == "new":
        run_attack(request, replace(here, overwrite=True))
    summary, samples = read_json(folder / SUMMARY_FILE), load_samples(folder)
    summary["model"] = model_id
    return AdversarialSet(source=model_id, folder=folder, samples=samples, summary=summary, cached=action == "cached")


def _data_key(source: Any) -> Any:
    """The data part of a set's key: the files' md5s for IDX data (as keys have always been), else the
    source's whole record (fingerprint, decoded shape, class mapping)."""
    record = data_record(source)
    if record.get("kind", "idx") == "idx" and "md5" in record and record.get("image_shape", [1])[0] == 1:
        shape = record.get("image_shape")
        return record["md5"] if shape is None or list(shape)[1:] == [28, 28] else {"md5": record["md5"], "shape": shape}
    return record


def _resumed(folder: Path, ctx: RunContext) -> bool:
    """Finish an interrupted entry; False when there is none to finish, or it is damaged (computed again)."""
    if not (folder / RUN_FILE).is_file() or (folder / SUMMARY_FILE).is_file():
        return False  # new, or a finished entry whose files were damaged afterwards
    try:
        resume_attack(folder, ctx)
    except RunInUse:
        raise  # another process is computing it: not ours to overwrite
    except InputError:
        return False
    return True


def _read_entry(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """A finished cache entry's summary and samples, or None when it is missing or damaged."""
    if not (folder / SUMMARY_FILE).is_file():
        return None
    try:
        return read_json(folder / SUMMARY_FILE), load_samples(folder)
    except (InputError, OSError, ValueError):
        return None
