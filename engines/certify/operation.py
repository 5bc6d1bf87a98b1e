"""The certify operation: `run_certify(request, ctx)`, both ends of each image's minimum distortion.

The upper end is the L-BFGS attack's distance (the attack operation runs on the same images into the run
folder's attack/, or an earlier attack run is read with `attack_run`). The lower end is certified: the exact
minimum for a model whose logits are affine (`exact`), else a radius proven by bound propagation over the
L2 ball ∩ [0, 1] box (`alpha-crown`, `crown`, `ibp`) or by the global Lipschitz constant (`lipschitz`). A run folder:
    run.json        the request, model identity, status
    attack/         the attack run (unless --attack-run)
    certify.json    per image: index, label, target, lower, upper, exact, lipschitz, method, seconds (rms units)
    summary.json    `CertifyResult.to_json()`, what `--json` prints
    figure.png      the brackets, sorted, and the histogram of upper / lower
certify.json is rewritten after every chunk of images, so a cancelled run keeps the images it finished.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engines.attack.chunks import load_samples
from engines.attack.operation import AttackRequest, load_request_data, run_attack
from engines.attack.results import SUMMARY_FILE, read_summary
from engines.attack.search import AttackConfig
from engines.certify.bracket import checked_network, lower_bounds, net_device
from engines.certify.crown import margin_spec, work_per_image
from engines.certify.events import CertifiedChunk
from engines.certify.figures import certify_figure
from engines.certify.lipschitz import lipschitz_constant
from engines.certify.network import Network
from engines.certify.results import CERTIFY_FILE, CertifyResult, rms, summarize, write_certify
from engines.core.checkpoint import LoadedModel
from engines.core.context import RunContext
from engines.core.distributed import first_error, gather, on_main_first
from engines.core.errors import InputError, ModelError
from engines.core.events import Step
from engines.core.io import write_json_atomic
from engines.core.memory import available_memory
from engines.core.models import ModelRef, load_model
from engines.core.runs import RunFolder, open_run, read_run_record

METHODS = ("auto", "exact", "crown", "alpha-crown", "ibp", "lipschitz")
FIGURE_FILE = "figure.png"


@dataclass(frozen=True)
class CertifyRequest:
    """Which images of which model, which bound, and the attack giving the upper end."""

    model: ModelRef  # a str is turned into a ModelRef on construction
    split: str = "test"
    n: int = 100
    offset: int = 0
    target: str = "all"
    method: str = "auto"  # exact for affine models, alpha-crown otherwise
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    attack_run: str | None = None  # read this attack run instead of attacking
    data_dir: str | None = None
    image_size: int | None = None
    classes_file: str | None = None
    probes: int = 7  # CROWN evaluations per image in the radius search
    chunk_images: int | None = None  # images certified (and saved) at a time; None: as memory allows

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelRef.from_json(self.model))
        if self.method not in METHODS:
            raise InputError(f"unknown --method {self.method!r}: use {', '.join(METHODS)}")
        if self.n < 1 or self.offset < 0 or self.probes < 1 or (self.chunk_images or 1) < 1:
            raise InputError("--n, --probes and chunk_images must be at least 1, --offset at least 0")

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return d | {"model": self.model.to_json(), "config": self.config.as_dict()}

    def attack_request(self) -> AttackRequest:
        return AttackRequest(
            model=self.model,
            split=self.split,
            n=self.n,
            offset=self.offset,
            target=self.target,
            seed=self.seed,
            config=self.config,
            data_dir=self.data_dir,
            image_size=self.image_size,
            classes_file=self.classes_file,
        )


def choose_method(method: str, net: Network, model_id: str) -> str:
    """The method a request runs: auto is exact for affine models, alpha-crown otherwise."""
    if method == "auto":
        return "exact" if net.affine else "alpha-crown"
    if method == "exact" and not net.affine:
        kinds = sorted({type(op).__name__ for op in net.ops if not op.affine})
        raise InputError(
            f"--method exact needs logits affine in the input; {model_id} has {', '.join(kinds)}: use crown"
        )
    return method


def run_certify(request: CertifyRequest, ctx: RunContext) -> CertifyResult:
    """Attack (or read an attack run), then certify the same images chunk by chunk into a new run folder.

    Under torchrun every rank calls it with the same request: rank 0 opens the folder, the attack runs sharded
    (or every rank reads the attack run), each rank certifies its contiguous shard of the images (rank 0 keeps
    its finished rows in certify.json as it goes), and rank 0 gathers every rank's rows and writes the run."""
    device = ctx.torch_device()
    lm = load_model(request.model, device)
    if request.attack_run is None:  # refuse a model certify cannot bound before the attack runs
        images = load_request_data(request.attack_request(), lm)[0].images
    else:
        images = load_samples(Path(request.attack_run).expanduser())["x"]
    net = checked_network(lm.model, images, lm.normalization, device)
    method = choose_method(request.method, net, lm.id)
    lipschitz = _lipschitz(lm, tuple(images.shape[1:]))
    if method == "lipschitz" and lipschitz is None:
        raise InputError(f"the frame-bound engine gives no global Lipschitz bound for {lm.id}: use crown")
    with contextlib.ExitStack() as stack:

        def open_folder() -> RunFolder:  # rank 0 only
            run = stack.enter_context(open_run(ctx, "certify", str(request.model), request.to_json()))
            for name in (CERTIFY_FILE, SUMMARY_FILE, FIGURE_FILE):  # --overwrite: no earlier result passes for ours
                (run.path / name).unlink(missing_ok=True)
            run.update(model=lm.identity(), method=method)
            return run

        opened = on_main_first(ctx.ranks, open_folder, share=lambda run: str(run.path))
        path = opened.path if isinstance(opened, RunFolder) else Path(opened)
        samples, attack_seconds, attack_folder = _attack(request, lm, path, ctx)
        started = time.time()
        rows = _certify_shard(request, lm, net, method, samples, lipschitz, path, ctx)

        def finish() -> CertifyResult:  # rank 0 only
            result = summarize(
                rows,
                model=lm.id,
                method=method,
                target=request.target
                if request.attack_run is None
                else str(samples.get("target_mode", request.target)),
                seconds=time.time() - started,
                attack_seconds=attack_seconds,
                attack_run=str(attack_folder),
                run=str(path),
            )
            if ctx.ranks.sharded:
                opened.update(ranks={"world_size": ctx.ranks.world})
            write_certify(path, request.to_json(), rows, "done")
            write_json_atomic(path / SUMMARY_FILE, result.to_json())
            certify_figure(rows, path / FIGURE_FILE, title=f"{lm.id}: {method} lower bound vs attack")
            return result

        return on_main_first(ctx.ranks, finish)
    raise AssertionError("unreachable")  # pragma: no cover


def _certify_shard(
    request: CertifyRequest,
    lm: LoadedModel,
    net: Network,
    method: str,
    samples: dict[str, Any],
    lipschitz: float | None,
    out: Path,
    ctx: RunContext,
) -> list[dict[str, Any]]:
    """This rank's rows (all of them in one process); under torchrun every rank's, in image order, on every
    rank (a rank that failed makes every rank fail, with its one line)."""
    if not ctx.ranks.sharded:
        return _certify_all(request, lm, net, method, samples, lipschitz, out, ctx)
    shard = ctx.ranks.shard(len(samples["label"]))
    status: dict[str, Any] = {}
    failed: BaseException | None = None
    try:
        status["rows"] = _certify_all(request, lm, net, method, samples, lipschitz, out, ctx, shard)
    except Exception as exc:  # the partners wait in the gather below: they must hear of it
        failed, status["error"] = exc, str(exc)
    statuses = gather(status, ctx.ranks)
    if failed is not None:
        raise failed
    error = first_error(statuses)
    if error is not None:
        raise InputError(error)
    return [row for s in statuses for row in s["rows"]]


def _attack(
    request: CertifyRequest, lm: LoadedModel, out: Path, ctx: RunContext
) -> tuple[dict[str, Any], float | None, Path]:
    """The attack's per-image arrays for the request's images: run now into out/attack, or read."""
    if request.attack_run is None:
        result = run_attack(request.attack_request(), replace(ctx, out=out / "attack"))
        return load_samples(out / "attack"), result.seconds, out / "attack"
    folder = Path(request.attack_run).expanduser()
    record = read_run_record(folder)
    if record.get("kind") != "attack":
        raise InputError(f"{folder} holds a {record.get('kind')} run, not an attack run")
    recorded = (record.get("model") or {}).get("sha256")
    if recorded and recorded != lm.sha256:
        raise InputError(f"{folder} attacked another model than {lm.id} (weights hash differs)")
    summary = read_summary(folder)
    if summary is None:
        raise InputError(f"{folder} is not finished: finish it with `blindspot attack --resume {folder}`")
    samples = dict(load_samples(folder))
    samples["target_mode"] = record["request"].get("target", "all")
    return samples, summary.seconds, folder


def _chunk_size(net: Network, spec_rows: int, method: str, device: torch.device) -> int:
    floats = work_per_image(net, spec_rows, "ibp" if method == "ibp" else "crown") * (
        24 if method == "alpha-crown" else 12
    )
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4
    else:
        budget = min(available_memory() // 6, 3 << 30)
    return int(max(1, min(250, budget // (8 * max(floats, 1)))))


def _certify_all(
    request: CertifyRequest,
    lm: LoadedModel,
    net: Network,
    method: str,
    samples: dict[str, Any],
    lipschitz: float | None,
    out: Path,
    ctx: RunContext,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The rows of images [shard) (all by default), chunk by chunk; rank 0 saves its rows after each chunk."""
    x, labels = samples["x"], samples["label"].long()
    first, b = shard or (0, len(labels))
    classes = net.classes
    mode = str(samples.get("target_mode", request.target))
    targets = None if mode == "all" else samples["target"].long()
    pixels = int(x[0].numel())
    with torch.no_grad():
        logits = net.forward(x.to(net_device(net), torch.float64)).cpu()
    spec = margin_spec(labels, classes, targets)
    margins = torch.einsum("bsk,bk->bs", spec, logits).amin(1)  # ≤ 0: already wrong (or at the target)
    chunk = request.chunk_images or _chunk_size(net, spec.shape[1], method, net_device(net))
    rows: list[dict[str, Any]] = []
    for start in range(first, b, chunk):
        ctx.check_cancel()
        stop = min(start + chunk, b)
        done, total = start - first, b - first
        ctx.emit(Step(task=f"certify {lm.id}", done=done, total=total, message=f"{method} on images {start}–{stop}"))
        began = time.time()
        part = _chunk_bounds(net, method, request, samples, targets, start, stop, ctx)
        ctx.check_cancel()  # a cancelled search returns its best so far: sound, but not the method's result
        each = (time.time() - began) / (stop - start)
        for i in range(start, stop):
            rows.append(_row(i, samples, part, i - start, margins[i], lipschitz, method, pixels, each, targets))
        if ctx.ranks.main:
            write_certify(out, request.to_json(), rows, "running")
        new = rows[done:]
        ctx.emit(
            CertifiedChunk(task=f"certify {lm.id}", done=stop - first, total=total, start=start, stop=stop, rows=new)
        )
    return rows


def _lipschitz(lm: LoadedModel, shape: tuple[int, ...]) -> float | None:
    """The global Lipschitz constant of the logits (None where the frame-bound engine has none)."""
    try:
        return lipschitz_constant(lm.model, lm.input_shape or shape)
    except (ModelError, InputError):
        return None


def _chunk_bounds(
    net: Network,
    method: str,
    request: CertifyRequest,
    samples: dict[str, Any],
    targets: torch.Tensor | None,
    start: int,
    stop: int,
    ctx: RunContext,
) -> dict[str, torch.Tensor]:
    if method == "lipschitz":  # filled in per row
        return {"lower": torch.full((stop - start,), math.nan, dtype=torch.float64)}
    success = samples["success"][start:stop].bool()
    upper = torch.where(success, samples["l2"][start:stop].double(), math.nan)
    return lower_bounds(
        net,
        method,
        samples["x"][start:stop],
        samples["label"][start:stop].long(),
        None if targets is None else targets[start:stop],
        upper,
        request.probes,
        ctx.cancelled,
    )


def _row(
    i: int,
    samples: dict[str, Any],
    part: dict[str, torch.Tensor],
    j: int,
    margin: torch.Tensor,
    lipschitz: float | None,
    method: str,
    pixels: int,
    seconds: float,
    targets: torch.Tensor | None,
) -> dict[str, Any]:
    """certify.json's record of image i (position j of its chunk), distortions in rms."""
    wrong = float(margin) <= 0
    success = bool(samples["success"][i])
    lip = None if lipschitz is None else max(0.0, float(margin)) / (math.sqrt(2.0) * lipschitz)
    if method == "lipschitz":
        assert lip is not None, "the lipschitz method always computes the global constant"
        lower = lip
    else:
        lower = float(part["lower"][j])
    exact = float(part["exact"][j]) if "exact" in part else None
    row = {
        "index": int(samples["index"][i]),
        "label": int(samples["label"][i]),
        "target": int(samples["target"][i]) if targets is not None or success else None,
        "lower": 0.0 if wrong else rms(lower, pixels),
        "upper": rms(float(samples["l2"][i]), pixels) if success else (0.0 if wrong else None),
        "exact": None if exact is None else (0.0 if wrong else rms(exact, pixels)),
        "lipschitz": None if lip is None else rms(lip, pixels),
        "method": method,
        "seconds": round(seconds, 5),
    }
    if "gap" in part:
        row["exact_gap"] = float(part["gap"][j])
    return row
