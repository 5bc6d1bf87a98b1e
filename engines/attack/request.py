"""What an attack run computes (`AttackRequest`): everything that fixes its result, stored in run.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engines.attack.search import AttackConfig
from engines.core.choices import SPLITS, TARGETS
from engines.core.errors import InputError
from engines.core.models import ModelRef
from engines.core.options import field_error, option


@dataclass(frozen=True)
class AttackRequest:
    """What to attack and how: everything that fixes the result. Stored in run.json for --resume."""

    model: ModelRef  # a str (zoo id, path, torchvision name) is turned into a ModelRef on construction
    split: str = option("test", choices=SPLITS, help=", ".join(SPLITS) + ".")
    n: int = option(
        100,
        flags=("--n", "-n"),
        label="N images",
        min=1,
        help="Number of images (-n under torchrun, whose own options take --n).",
    )
    offset: int = option(0, min=0, help="Index of the first image.")
    target: str = option(
        "random",
        choices=TARGETS,
        help=f"{', '.join(TARGETS)} (random is seeded; all tries every wrong label and keeps the closest), "
        "or a class label.",
    )
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    batch_size: int | None = option(
        None, min=1, cli_range=True, label="batch size", help="Problems solved at once (default: by free memory)."
    )
    data_dir: str | None = None
    chunk_images: int | None = None  # images per saved chunk (at most); None: as many as batch_size allows
    image_size: int | None = None  # images resized and centre-cropped to this side; None: the model's own
    classes_file: str | None = None  # folder class names in the model's class order (ImageNet's WordNet ids)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelRef.from_json(self.model))
        if self.image_size is not None and not 1 <= self.image_size <= 16384:
            raise InputError(f"--image-size must lie in 1..16384, got {self.image_size}")
        if self.n < 1:
            raise field_error(AttackRequest, "$n must be at least 1", "n")
        if self.offset < 0:
            raise field_error(AttackRequest, "$offset must be at least 0", "offset")
        if self.batch_size is not None and self.batch_size < 1:
            raise field_error(AttackRequest, "$batch_size must be at least 1", "batch_size")
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
