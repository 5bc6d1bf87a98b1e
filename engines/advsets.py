"""Adversarial sets for the transfer tables, cached by everything that determines them.

A set is an attack run (see `attack_run`) with `--target all` (Table 1's minimum distortion)
stored in the cache under a key made of the source checkpoint's hash, the data files' md5s,
split, offset, N, seed and every attack setting. A second request is served from the cache; a
changed setting gets another key, so it is never served stale; an interrupted computation
resumes from its finished chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.attack import AttackConfig
from engines.attack_run import SUMMARY_FILE, AttackRequest, load_samples, resume_attack, start_attack
from engines.cache import cache_dir, cache_key
from engines.checkpoint import load_checkpoint
from engines.data import data_fingerprint
from engines.events import CancelCheck, ProgressCallback, never_cancel, no_progress
from engines.io import read_json

ADVSET_VERSION = 2  # bump when the attack's results change for the same settings (2: trivial images apart)


@dataclass
class AdversarialSet:
    source: str
    folder: Path
    samples: dict[str, torch.Tensor]
    summary: dict[str, Any]
    cached: bool


def advset_key(
    model_sha256: str, split: str, n: int, offset: int, seed: int, config: AttackConfig, data_md5: dict[str, str]
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


def adversarial_set(
    model: str,
    split: str,
    n: int,
    *,
    offset: int = 0,
    seed: int = 0,
    config: AttackConfig | None = None,
    device: torch.device | str = "cpu",
    data_dir: str | Path | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: CancelCheck = never_cancel,
) -> AdversarialSet:
    """The minimum-distortion adversarial set of `model` on the first `n` images of `split`."""
    config = config or AttackConfig()
    device = torch.device(device)
    lm = load_checkpoint(model, "cpu")
    key = advset_key(lm.sha256, split, n, offset, seed, config, data_fingerprint(data_dir))
    folder = cache_dir() / "advsets" / key
    cached = (folder / SUMMARY_FILE).is_file()
    if not cached:
        if (folder / "run.json").is_file():
            resume_attack(folder, device, on_progress=on_progress, cancel=cancel)
        else:
            request = AttackRequest(
                model=str(lm.path),
                split=split,
                n=n,
                offset=offset,
                target="all",
                seed=seed,
                config=config,
                data_dir=str(data_dir) if data_dir else None,
            )
            start_attack(request, folder, device, on_progress=on_progress, cancel=cancel)
    summary = read_json(folder / SUMMARY_FILE)
    summary["model"] = lm.id
    return AdversarialSet(source=lm.id, folder=folder, samples=load_samples(folder), summary=summary, cached=cached)
