"""What an attack run found: the typed result (`AttackResult`), the summary of per-image arrays,
and the running tally that lets progress speak for the whole run."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engines.attack.chunks import CHUNKS, chunk_name
from engines.core.events import Event, EventSink, SolverStep
from engines.core.io import read_json

SUMMARY_FILE = "summary.json"  # a run folder's AttackResult.to_json()


@dataclass(frozen=True)
class AttackResult:
    """The outcome of a run: what `--json` prints, what summary.json holds, what the screen shows."""

    model: str
    model_sha256: str
    n: int
    target: str
    split: str
    offset: int
    success_rate: float
    n_success: int
    n_trivial: int
    mean_distortion: float | None
    median_distortion: float | None
    mean_l2: float | None
    mean_linf: float | None
    mean_c: float | None
    seconds: float
    device: str
    seed: int
    config: dict[str, Any]
    run: str = ""
    image_shape: list[int] | None = None  # (C, H, W) of the attacked images, in pixel space
    model_source: str = ""  # a checkpoint, torchvision weights, or "random init": said in every output
    random_init: bool = False
    evaluations_per_image: float | None = None  # forward+backward passes of the model per image (all its targets)
    forward_evaluations_per_image: float | None = None  # forward-only passes (the c search's verdicts)

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "distortion_definition": "sqrt(sum((x'-x)^2)/n), n = C*H*W pixel values in [0,1]; l2 and linf in the same pixel units; statistics over successful images",
            "trivial_definition": "images the model already sends to the target (target all: misclassified), left out",
            "c_convention": "c multiplies the distance term: the largest c whose minimiser reaches the target is kept",
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackResult:
        doc: dict[str, Any] = {k: d.get(k) for k in cls.__dataclass_fields__}
        doc["run"] = doc["run"] or ""
        doc["model_source"] = doc["model_source"] or ""
        doc["random_init"] = bool(doc["random_init"])
        return cls(**doc)


def trivial_mask(samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Images with nothing to attack (see `summarize`); runs saved before the flag existed have none marked."""
    flag = samples.get("trivial")
    return flag.bool() if flag is not None else torch.zeros_like(samples["success"], dtype=torch.bool)


@dataclass
class RunTally:
    """Successes and their distortion over the finished chunks, so that progress speaks for the whole run."""

    images: int = 0
    successes: int = 0
    distortion_sum: float = 0.0

    @classmethod
    def from_chunks(cls, out: Path, ranges: list[tuple[int, int]]) -> RunTally:
        """Read back only the small per-image tensors of a resumed run's finished chunks, not its images."""
        tally = cls()
        for a, b in ranges:
            with safe_open(str(out / CHUNKS / chunk_name(a, b)), "pt") as chunk:
                names = set(chunk.keys())
                tally.add({k: chunk.get_tensor(k) for k in ("success", "distortion", "trivial") if k in names})
        return tally

    def add(self, part: dict[str, torch.Tensor]) -> None:
        ok = part["success"].bool()
        self.images += int(ok.numel()) - int(trivial_mask(part).sum())
        self.successes += int(ok.sum())
        self.distortion_sum += float(part["distortion"][ok].sum())

    def progress(self, sink: EventSink, finished: int, chunk: int, total: int) -> EventSink:
        """Forward a chunk's solver steps with the run's figures: finished chunks plus this one so far."""

        def emit(event: Event) -> None:
            if not isinstance(event, SolverStep):
                sink(event)
                return
            rate, dist = event.success_rate, event.mean_distortion
            mean = self.distortion_sum / self.successes if self.successes else None
            if rate is not None:
                found = rate * chunk
                rate = (self.successes + found) / max(self.images + chunk, 1)
                if dist is not None and math.isfinite(dist) and found:
                    mean = (self.distortion_sum + dist * found) / (self.successes + found)
            sink(
                replace(
                    event,
                    images_done=finished,
                    images_total=total,
                    chunk_images=chunk,
                    success_rate=rate,
                    mean_distortion=mean,
                )
            )

        return emit


def summarize(
    samples: dict[str, torch.Tensor],
    *,
    model_id: str,
    model_sha256: str = "",
    request: Any,
    seconds: float,
    device: torch.device,
    model_source: str = "",
    random_init: bool = False,
) -> AttackResult:
    """Success rate over the images there was something to attack; distortion statistics over the successes.

    Images the model already sends to the target (with --target all: images it misclassifies) are
    counted apart as `n_trivial`: counting them as successes at distortion 0 would flatter both figures.
    """
    ok = samples["success"].bool()
    n = int(ok.numel())
    n_trivial = int(trivial_mask(samples).sum())
    attacked = n - n_trivial

    def stat(key: str, fn: str = "mean") -> float | None:
        v = samples[key][ok]
        v = v[torch.isfinite(v)]  # c is NaN for a success first met at a line-search trial point
        if v.numel() == 0:
            return None
        return float(v.mean() if fn == "mean" else v.median())

    def per_image(key: str) -> float | None:  # chunks saved before the counts existed have none
        return float(samples[key].double().mean()) if key in samples and n else None

    return AttackResult(
        model=model_id,
        model_sha256=model_sha256,
        n=n,
        target=request.target,
        split=request.split,
        offset=request.offset,
        success_rate=int(ok.sum()) / attacked if attacked else 0.0,
        n_success=int(ok.sum()),
        n_trivial=n_trivial,
        mean_distortion=stat("distortion"),
        median_distortion=stat("distortion", "median"),
        mean_l2=stat("l2"),
        mean_linf=stat("linf"),
        mean_c=stat("c"),
        seconds=round(seconds, 3),
        device=str(device),
        seed=request.seed,
        config=request.config.as_dict(),
        image_shape=[int(v) for v in samples["x"].shape[1:]],
        model_source=model_source,
        random_init=random_init,
        evaluations_per_image=per_image("evaluations"),
        forward_evaluations_per_image=per_image("forward_evaluations"),
    )


def read_summary(folder: Path) -> AttackResult | None:
    """A finished run's summary.json as its result (None when it is missing or damaged: the caller rebuilds or says so)."""
    try:
        return replace(AttackResult.from_json(read_json(Path(folder) / SUMMARY_FILE)), run=str(folder))
    except (OSError, ValueError, KeyError, TypeError):
        return None
