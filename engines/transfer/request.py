"""What fixes a transfer matrix (`TransferRequest`), and the text both front ends type it in.

Models, per-model options (`NAME=VALUE`, a bare VALUE for every torchvision or factory model) and number lists
are parsed here once, so that `blindspot transfer` and the Transfer screen accept and refuse the same input.
Error messages name the field by the label the caller passes (the CLI passes its flags); by default the
request's field name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.attack.request import AttackRequest
from engines.attack.search import AttackConfig
from engines.core.choices import SPLITS
from engines.core.errors import FieldName, InputError
from engines.core.models import ModelRef
from engines.core.options import field_error, option

# fields the request takes as typed lists rather than declared options: how each front end names them in messages
LISTS = {
    "sources": FieldName("--sources", "sources"),
    "targets": FieldName("--targets", "targets"),
    "noise": FieldName("--noise", "noise"),
    "scaled": FieldName("--scale-to", "scaled"),
}


def list_error(message: str, *names: str) -> InputError:
    """An InputError naming the list fields `names` as `$name`: flags on the command line, labels in the workbench."""
    return InputError(message, fields={name: LISTS[name] for name in names})


@dataclass(frozen=True)
class TransferRequest:
    """Which sets are fed to which models: everything that fixes the matrix. Stored in run.json.

    `targets` defaults to the sources. Each source's set is its minimum-distortion attack
    (`--target all`) on images [offset, offset + n) of `split`, with `config` and `seed`.
    `split` defaults to `test`, the one split that no zoo model was trained on (Table 3's m1, m1-prime and m2
    each saw a half of `train`); Table 2's training-set matrix asks for `train` by name.
    """

    sources: tuple[ModelRef, ...] = ()
    targets: tuple[ModelRef, ...] = ()
    split: str = option("test", choices=SPLITS, help="train, test, p1 or p2.")
    n: int = option(100, flags=("--n", "-n"), label="N", min=1, help="Images per set (-n under torchrun).")
    offset: int = option(0, min=0, help="Index of the first image.")
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    data_dir: str | None = None
    noise: tuple[float, ...] = ()  # clipped Gaussian-noise rows at these rms values
    unclipped: tuple[float, ...] = ()  # x + N(0, sd²) rows left outside [0, 1]
    amplify_rms: float | None = option(  # also each set amplified to this rms (Table 4)
        None,
        flags=("--amplify",),
        label="amplify to rms",
        help="Also rows of each set amplified to this rms (Table 4).",
    )
    scaled: tuple[tuple[str, float], ...] = ()  # (source id, rms): that source's set also scaled to the rms
    classes_file: str | None = None  # folder class names in the models' class order

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise once, here
        fix(self, "sources", tuple(ModelRef.from_json(s) for s in self.sources))
        fix(self, "targets", tuple(ModelRef.from_json(t) for t in self.targets) or self.sources)
        fix(self, "noise", tuple(float(v) for v in self.noise))
        fix(self, "unclipped", tuple(float(v) for v in self.unclipped))
        fix(self, "scaled", tuple((str(src), float(rms)) for src, rms in self.scaled))
        if self.data_dir is not None:
            fix(self, "data_dir", str(self.data_dir))
        if not self.sources and not self.noise and not self.unclipped:
            raise list_error("nothing to evaluate: give $sources and/or $noise", "sources", "noise")
        if not self.targets:
            raise list_error("give at least one target model ($targets)", "targets")
        if self.n < 1:
            raise field_error(TransferRequest, "$n must be at least 1", "n")
        if self.offset < 0:
            raise field_error(TransferRequest, "$offset must be at least 0", "offset")
        amplified = [self.amplify_rms] if self.amplify_rms is not None else []
        names = {src.name for src in self.sources}
        for src, _ in self.scaled:
            if src not in names:
                raise list_error(f"$scaled {src}=…: {src} is not one of the sources", "scaled")
        for sd in [*self.noise, *self.unclipped, *amplified, *(rms for _, rms in self.scaled)]:
            if not 0 < sd < 1:
                raise InputError(f"rms/stddev {sd} must lie in (0, 1)")

    def attack_request(self, source: ModelRef) -> AttackRequest:
        """The attack that makes `source`'s adversarial set."""
        return AttackRequest(
            model=source,
            split=self.split,
            n=self.n,
            offset=self.offset,
            target="all",
            seed=self.seed,
            config=self.config,
            data_dir=self.data_dir,
            classes_file=self.classes_file,
        )

    def to_json(self) -> dict[str, Any]:
        extra = {"classes_file": self.classes_file} if self.classes_file else {}
        return {
            "sources": [s.to_json() for s in self.sources],
            "targets": [t.to_json() for t in self.targets],
            "split": self.split,
            "n": self.n,
            "offset": self.offset,
            "seed": self.seed,
            "config": self.config.as_dict(),
            "data_dir": self.data_dir,
            "noise": list(self.noise),
            "unclipped": list(self.unclipped),
            "amplify_rms": self.amplify_rms,
            **({"scaled": [list(p) for p in self.scaled]} if self.scaled else {}),
            **extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TransferRequest:
        try:
            return cls(
                sources=tuple(d["sources"]),
                targets=tuple(d["targets"]),
                split=str(d["split"]),
                n=int(d["n"]),
                offset=int(d["offset"]),
                seed=int(d["seed"]),
                config=AttackConfig.from_dict(d["config"]),
                data_dir=d.get("data_dir"),
                noise=tuple(d.get("noise", ())),
                unclipped=tuple(d.get("unclipped", ())),
                amplify_rms=d.get("amplify_rms"),
                scaled=tuple((str(a), float(b)) for a, b in d.get("scaled", ())),
                classes_file=d.get("classes_file"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded transfer request is damaged ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------------ typed text
def csv_items(text: str | None) -> list[str]:
    """The non-empty entries of a comma-separated field."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def numbers(text: str | None, label: str) -> list[float]:
    """A comma-separated list of numbers (`0.1,0.3`)."""
    try:
        return [float(t) for t in csv_items(text)]
    except ValueError:
        raise InputError(f"{label} takes comma-separated numbers, got {text!r}") from None


def per_model(values: Iterable[str] | None, label: str) -> dict[str | None, str]:
    """`NAME=VALUE` entries of a repeatable option, by model name; a bare VALUE (key None) applies to every
    torchvision or factory model without its own."""
    found: dict[str | None, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        key, val = (name.strip(), value.strip()) if sep else (None, item.strip())
        if key in found:
            raise InputError(f"{label} is given twice for {key or 'every model'}")
        found[key] = val
    return found


MODEL_OPTIONS = ("weights", "num_classes", "normalize")  # the per-model options, by field name


def model_refs(
    names: Iterable[str],
    weights: Iterable[str] = (),
    num_classes: Iterable[str] = (),
    normalize: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
) -> tuple[ModelRef, ...]:
    """One reference per listed model, with its own `NAME=VALUE` weights, head size and normalisation.

    `pkg.module:function` entries name the user's factories; a bare VALUE applies to every torchvision or
    factory model without its own (zoo models and checkpoints carry theirs, so a NAME=VALUE for one is refused).
    `labels` says what the caller calls each of MODEL_OPTIONS in its messages (default: the field name).
    """
    said = {key: (labels or {}).get(key, key) for key in MODEL_OPTIONS}
    weights_by = per_model(weights, said["weights"])
    classes_by = per_model(num_classes, said["num_classes"])
    norms_by = per_model(normalize, said["normalize"])
    refs = []
    for name in names:
        is_factory = ":" in name and not Path(name).exists()
        plain = ModelRef(factory=name) if is_factory else ModelRef(name)
        own = plain.kind != "checkpoint"
        weight = weights_by.get(name, weights_by.get(None) if own else None)
        k = classes_by.get(name, classes_by.get(None) if own else None)
        try:
            head = int(k) if k is not None else None
        except ValueError:
            raise InputError(f"{said['num_classes']} takes a number (or NAME=NUMBER), got {k!r}") from None
        for key, given in (("weights", weights_by), ("num_classes", classes_by)):
            if name in given and not own:  # refused now, not when the job loads the model
                raise InputError(
                    f"{name} is a zoo model or checkpoint file with its own weights and head: "
                    f"{said[key]} applies to torchvision names and factories"
                )
        refs.append(
            ModelRef(
                name="" if is_factory else name,
                factory=name if is_factory else None,
                weights=str(Path(weight).expanduser()) if weight else None,
                num_classes=head,
                normalize=norms_by.get(name, norms_by.get(None) if own else None),
            )
        )
    return tuple(refs)


def named_models(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """A model list whose entries may carry their weights (`resnet18=~/w/resnet18.pth`): the model names and the
    `NAME=FILE` pairs, each pair once. An entry that is an existing file is a checkpoint, whatever it holds."""
    names: list[str] = []
    pairs: list[str] = []
    for item in items:
        name, sep, weight = item.partition("=")
        if not sep or Path(item).expanduser().exists():
            names.append(item.strip())
            continue
        if not name.strip() or not weight.strip():
            raise InputError(f"{item!r}: give a model and its weights file as NAME=FILE")
        names.append(name.strip())
        pair = f"{name.strip()}={weight.strip()}"
        if pair not in pairs:
            pairs.append(pair)
    return names, pairs


def scaled_pairs(values: Iterable[str] | None, label: str = "scaled") -> tuple[tuple[str, float], ...]:
    """`SOURCE=RMS` entries: the sources whose set is also scaled to an rms."""
    out = []
    for name, value in per_model(values, label).items():
        if name is None:
            raise InputError(f"{label} takes SOURCE=RMS, e.g. softmax2=0.1")
        rms = numbers(value, label)
        if len(rms) != 1:
            raise InputError(f"{label} takes one number per source (SOURCE=RMS), got {name}={value!r}")
        out.append((name, rms[0]))
    return tuple(out)
