"""What an attack run computes (`AttackRequest`): everything that fixes its result, stored in run.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engines.attack.problems import AttackConfig
from engines.core.errors import InputError
from engines.core.models import ModelRef


@dataclass(frozen=True)
class AttackRequest:
    """What to attack and how: everything that fixes the result. Stored in run.json for --resume."""

    model: ModelRef | str
    split: str = "test"
    n: int = 100
    offset: int = 0
    target: str = "random"
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    batch_size: int | None = None
    data_dir: str | None = None
    chunk_images: int | None = None  # images per saved chunk (at most); None: as many as batch_size allows
    image_size: int | None = None  # images resized and centre-cropped to this side; None: the model's own
    classes_file: str | None = None  # folder class names in the model's class order (ImageNet's WordNet ids)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelRef.from_json(self.model))
        if self.image_size is not None and not 1 <= self.image_size <= 16384:
            raise InputError(f"--image-size must lie in 1..16384, got {self.image_size}")
        if self.n < 1:
            raise InputError("--n must be at least 1")
        if self.offset < 0:
            raise InputError("--offset must be at least 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("--batch-size must be at least 1")
        if self.chunk_images is not None and self.chunk_images < 1:
            raise InputError("chunk_images must be at least 1")

    def to_json(self) -> dict[str, Any]:
        extra = {k: v for k, v in (("image_size", self.image_size), ("classes_file", self.classes_file)) if v}
        return {
            "model": self.model.to_json(),
            "split": self.split,
            "n": self.n,
            "offset": self.offset,
            "target": self.target,
            "seed": self.seed,
            "config": self.config.as_dict(),
            "batch_size": self.batch_size,
            "data_dir": self.data_dir,
            "chunk_images": self.chunk_images,
            **extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackRequest:
        try:
            return cls(
                model=ModelRef.from_json(d["model"]),
                split=str(d["split"]),
                n=int(d["n"]),
                offset=int(d["offset"]),
                target=str(d["target"]),
                seed=int(d["seed"]),
                config=AttackConfig.from_dict(d["config"]),
                batch_size=d.get("batch_size"),
                data_dir=d.get("data_dir"),
                chunk_images=d.get("chunk_images"),
                image_size=d.get("image_size"),
                classes_file=d.get("classes_file"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded attack request is damaged ({type(exc).__name__}: {exc})") from None
