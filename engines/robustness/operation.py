"""The robustness operation: per model, the interval in which its true minimum adversarial distortion lies.

For each model: test error; the L-BFGS attack's mean minimum distortion (`--target all`) on the first `n`
correctly classified images of the split (an upper bound per image); a certified radius on the same images
(a lower bound: the exact minimum for affine models, CROWN's otherwise, `engines.certify`; the global
margin/(√2·L) of `engines.certify.lipschitz` is kept beside it, and stands alone for models CROWN cannot walk); the transfer of a reference model's
adversarial examples to it (Table 2 style); its error on Gaussian noise of the same rms as those examples.
Distortions are the paper's rms, sqrt(Σ r² / pixels). The attacks are adversarial sets, cached like
`transfer`'s, so a second call (or `reproduce` after `transfer`) reuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engines.attack.adversarial_sets import adversarial_set
from engines.attack.operation import AttackRequest
from engines.attack.search import AttackConfig
from engines.certify.bracket import checked_network, radii
from engines.certify.lipschitz import certified_radius, lipschitz_constant
from engines.core.checkpoint import LoadedModel
from engines.core.choices import SPLITS
from engines.core.context import RunContext
from engines.core.errors import InputError
from engines.core.evaluate import predict
from engines.core.events import Step
from engines.core.io import write_json_atomic
from engines.core.model_data import open_model_data, take_images
from engines.core.models import ModelRef, load_model
from engines.core.options import field_error, option
from engines.core.runs import open_run
from engines.transfer.operation import run_transfer
from engines.transfer.request import TransferRequest

RESULT_FILE = "robustness.json"


@dataclass(frozen=True)
class RobustnessRequest:
    """Which models, on which images, with which attack: everything that fixes the rows."""

    models: tuple[ModelRef, ...]
    reference: ModelRef | None = option(  # whose adversarial examples are transferred (None: none)
        "n100-100-10",
        help="Model whose adversarial examples are transferred to each (and whose rms the noise takes); "
        "'none' to skip.",
    )
    split: str = option("test", choices=SPLITS, help="train, test, p1 or p2.")
    n: int = option(  # correctly classified images per model
        1000, flags=("--n", "-n"), label="images per model", min=1, help="Correctly classified images per model."
    )
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(ModelRef.from_json(m) for m in self.models))
        if self.reference is not None:
            object.__setattr__(self, "reference", ModelRef.from_json(self.reference))
        if not self.models:
            raise InputError("give at least one model")
        if self.n < 1:
            raise field_error(RobustnessRequest, "$n must be at least 1", "n")

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [m.to_json() for m in self.models],
            "reference": None if self.reference is None else self.reference.to_json(),
            "split": self.split,
            "n": self.n,
            "seed": self.seed,
            "config": self.config.as_dict(),
            "data_dir": self.data_dir,
        }


@dataclass(frozen=True)
class RobustnessRow:
    """One model's figures; distortions in the paper's rms units, errors in %."""

    model: str
    test_error: float
    images: int  # correctly classified images attacked
    attacked_range: int  # the first `attacked_range` images of the split hold them
    success_rate: float  # % of those the attack moved to another label
    distortion: float  # mean minimum distortion over the successes (upper bound per image)
    certified: float  # mean certified radius on the same images: per image the larger of exact/CROWN and the global one
    certified_over_attack: float  # mean per-image ratio certified / attack distortion (≤ 1 always)
    violations: int  # images where the attack found a label change inside a certified radius (must be 0)
    lipschitz: float
    certified_global: float | None = None  # mean of the global bound margin/(√2·L) on the same images
    certified_method: str = "lipschitz"  # how `certified` was obtained: exact, crown, or lipschitz (the global one)
    transfer: float | None = None  # % of the reference's adversarial examples this model misclassifies
    noise: float | None = None  # % misclassified under Gaussian noise of the reference set's rms

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class RobustnessResult:
    """The rows and the run folder they were written to (robustness.json; the transfer matrix in transfer/)."""

    rows: list[RobustnessRow]
    folder: Path

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "rows": [r.to_json() for r in self.rows]}


def run_robustness(request: RobustnessRequest, ctx: RunContext) -> RobustnessResult:
    """One row per model, in the request's order, written to the run folder (`ctx.out`, else a new one under
    the runs root); rows already computed are written as each model finishes, so a cancel keeps them."""
    name = "+".join(m.name for m in request.models)[:60]
    with open_run(ctx, "robustness", name, request.to_json()) as run:
        rows: list[RobustnessRow] = []
        for k, ref in enumerate(request.models):
            ctx.check_cancel()
            ctx.emit(Step(task="robustness", done=k, total=len(request.models), message=f"attack {ref.name}"))
            rows.append(_row(ref, request, ctx))
            _write(run.path, request, rows)
        if request.reference is not None:
            ctx.emit(Step(task="robustness", done=len(rows), total=len(rows), message="transfer and noise"))
            rows = _with_transfer(rows, request, ctx, run.path)
            _write(run.path, request, rows)
    return RobustnessResult(rows, run.path)


def _write(folder: Path, request: RobustnessRequest, rows: list[RobustnessRow]) -> None:
    write_json_atomic(folder / RESULT_FILE, {"request": request.to_json(), "rows": [r.to_json() for r in rows]})


def correct_prefix(right: torch.Tensor, n: int) -> int:
    """The length of the shortest prefix of the images that holds `n` correctly classified ones."""
    where = torch.nonzero(right).squeeze(1)
    if len(where) < n:
        raise InputError(f"only {len(where)} of the {len(right)} images are classified correctly: use --n {len(where)}")
    return int(where[n - 1]) + 1


def _row(ref: ModelRef, request: RobustnessRequest, ctx: RunContext) -> RobustnessRow:
    lm = load_model(ref, "cpu")
    data = take_images(open_model_data(lm, request.data_dir, request.split))
    right_all = predict(lm.model, data.images, "cpu") == data.labels
    stop = correct_prefix(right_all, request.n)
    right = right_all[:stop]
    attack = AttackRequest(
        model=ref,
        split=request.split,
        n=stop,
        target="all",
        seed=request.seed,
        config=request.config,
        data_dir=request.data_dir,
    )
    aset = adversarial_set(attack, ctx)
    s = aset.samples
    x, labels = s["x"][right], s["label"][right]
    found = s["success"].bool()[right]
    dist = s["distortion"][right]
    lipschitz = lipschitz_constant(lm.model, lm.input_shape or tuple(x.shape[1:]))
    pixels = x[0].numel()
    global_cert = certified_radius(lm.model, x, labels, lipschitz) / math.sqrt(pixels)
    upper_l2 = torch.where(found, s["l2"][right].double(), math.nan)
    tight, method = _tight_radii(lm, x, labels, upper_l2)
    cert = global_cert if tight is None else torch.maximum(tight / math.sqrt(pixels), global_cert)
    ratio = (cert[found] / dist[found].double()).mean() if found.any() else torch.tensor(math.nan)
    beaten = cert[found] > dist[found].double() * (1 + 1e-6)  # cert ≥ the global bound already
    return RobustnessRow(
        model=lm.id,
        test_error=round(100.0 * (1.0 - float(right_all.float().mean())), 4),
        images=int(right.sum()),
        attacked_range=stop,
        success_rate=100.0 * float(found.float().mean()),
        distortion=float(dist[found].mean()) if found.any() else math.nan,
        certified=float(cert.mean()),
        certified_over_attack=float(ratio),
        violations=int(beaten.sum()),
        lipschitz=lipschitz,
        certified_global=float(global_cert.mean()),
        certified_method=method,
    )


def _tight_radii(
    lm: LoadedModel, x: torch.Tensor, labels: torch.Tensor, upper_l2: torch.Tensor
) -> tuple[torch.Tensor | None, str]:
    """Per image the exact minimum (affine models) or CROWN's certified radius, L2; (None, "lipschitz") for a
    model bound propagation cannot walk (the global bound stands alone then)."""
    try:
        net = checked_network(lm.model, x, lm.normalization)
    except InputError:
        return None, "lipschitz"
    return radii(net, x, labels.long(), upper_l2)


def _with_transfer(
    rows: list[RobustnessRow], request: RobustnessRequest, ctx: RunContext, out: Path
) -> list[RobustnessRow]:
    """The reference's adversarial set (its first n images) and Gaussian noise of its mean rms on every model."""
    reference = request.reference
    base = TransferRequest(
        sources=(reference,),  # type: ignore[arg-type]
        targets=request.models,
        split=request.split,
        n=request.n,
        seed=request.seed,
        config=request.config,
        data_dir=request.data_dir,
    )
    aset = adversarial_set(base.attack_request(base.sources[0]), ctx)
    rms = float(aset.samples["distortion"][aset.samples["success"].bool()].mean())
    matrix = run_transfer(
        replace(base, noise=(round(rms, 4),)),
        replace(ctx, out=out / "transfer", overwrite=True),
    )
    values = matrix.values
    return [replace(r, transfer=float(values[0, j]), noise=float(values[-1, j])) for j, r in enumerate(rows)]
