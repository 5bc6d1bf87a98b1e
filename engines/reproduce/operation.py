"""The reproduce operation: Tables 1–5 of Szegedy et al. (2013) recomputed with the shipped zoo.

`run_reproduce(ReproduceRequest, RunContext)` is what `blindspot reproduce` calls. Its run folder:
    run.json                 format, kind, the request, status, seconds
    table2/, table4/         the transfer matrices (each a transfer run folder of its own)
    table1.json, table3.json, table5.json, section42.json   each table's rows as soon as it is finished
    section42/               the §4.2 section's transfer matrix
    tables.json              settings and all five tables (`ReproduceResult.to_json()` minus the report path)
    report.md, figures/      the Markdown report with heatmaps and Fig. 5/7-style example grids
Progress: a `Step` when a stage starts, a `TableDone` when a table is written. A cancel stops
within one model (Tables 1–4) or one layer (Table 5) and keeps the tables already written.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engines.attack.operation import FIGURE_FILE, AttackRequest, run_attack
from engines.attack.search import AttackConfig
from engines.core import paper
from engines.core.context import RunContext
from engines.core.distributed import Ranks, on_main_first
from engines.core.errors import InputError
from engines.core.events import Step, TableDone
from engines.core.io import write_json_atomic, write_text_atomic
from engines.core.models import ModelRef, as_model_ref
from engines.core.options import field_error, option
from engines.core.runs import open_run, redo_interrupted
from engines.reproduce.kind import (
    REPORT_FILE,
    SECTION42_FILE,
    TABLE1_FILE,
    TABLE3_FILE,
    TABLE5_FILE,
    TABLE_FILES,
    TABLES_FILE,
)
from engines.reproduce.markdown import render_report
from engines.reproduce.section42 import section42
from engines.reproduce.tables import matrix_vs_paper, table1, table2_key, table3, table4_key, table5
from engines.transfer.matrix import TransferMatrix
from engines.transfer.operation import run_transfer
from engines.transfer.request import TransferRequest
from engines.transfer.store import HEATMAP_FILE

QUICK_N, FULL_N = 20, 500
TABLES = len(TABLE_FILES)  # Tables 1–5 and the §4.2 section
SECTION42_QUICK_N, SECTION42_FULL_N = 20, 1000  # correctly classified test images per §4.2 model
EXAMPLE_SOURCES = ("softmax1", "n200-200-10", "m1")  # whose Fig. 5/7 grids the report shows


@dataclass(frozen=True)
class ReproduceRequest:
    """How large and with which attack: everything that fixes the tables. Stored in run.json."""

    quick: bool = option(False, help=f"Smoke run with N={QUICK_N} images per set.")
    n: int | None = option(  # images per adversarial set; None: QUICK_N with quick, else FULL_N
        None,
        flags=("--n", "-n"),
        label="images per set",
        min=1,
        help=f"Images per adversarial set (default {FULL_N}, quick {QUICK_N}).",
    )
    seed: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)
    data_dir: str | None = None
    imagenet_dir: str | None = option(  # the user's ImageNet images: Fig. 5 on AlexNet
        None,
        help="Your ImageNet images (e.g. the validation folder, DIR/<wnid>/*.JPEG): adds Fig. 5 on AlexNet.",
    )
    alexnet_weights: str | None = option(  # a trained AlexNet state dict: Table 5 and Fig. 5 on it
        None,
        flags=("--weights",),
        label="AlexNet weights",
        help="A trained AlexNet state dict (torchvision layout): Table 5 and Fig. 5 on it.",
    )
    classes_file: str | None = None  # the ImageNet folder's class ids in AlexNet's output order
    figure5_n: int = 8

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 1:
            raise field_error(ReproduceRequest, "$n must be at least 1", "n")
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        if self.imagenet_dir is not None and self.alexnet_weights is None:
            raise field_error(
                ReproduceRequest,
                "$imagenet_dir needs $alexnet_weights (a trained AlexNet state dict): Fig. 5 on random weights says "
                "nothing",
                "imagenet_dir",
                "alexnet_weights",
            )

    def alexnet(self) -> ModelRef:
        """AlexNet as Table 5 and Fig. 5 use it: torchvision's, with the user's weights when given."""
        return ModelRef("alexnet", weights=self.alexnet_weights)

    @property
    def images(self) -> int:
        """Images per adversarial set."""
        return self.n or (QUICK_N if self.quick else FULL_N)

    def to_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "n": self.n,
            "seed": self.seed,
            "config": self.config.as_dict(),
            "data_dir": self.data_dir,
            **{
                k: v
                for k, v in (
                    ("imagenet_dir", self.imagenet_dir),
                    ("alexnet_weights", self.alexnet_weights),
                    ("classes_file", self.classes_file),
                )
                if v is not None
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReproduceRequest:
        try:
            return cls(
                quick=bool(d["quick"]),
                n=d.get("n"),
                seed=int(d["seed"]),
                config=AttackConfig.from_dict(d["config"]),
                data_dir=d.get("data_dir"),
                imagenet_dir=d.get("imagenet_dir"),
                alexnet_weights=d.get("alexnet_weights"),
                classes_file=d.get("classes_file"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded reproduce request is damaged ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class ReproduceResult:
    """The five tables beside the paper's, the settings they were made with, and where the report is."""

    report: Path
    folder: Path
    settings: dict[str, Any]
    table1: list[dict[str, Any]]
    table2: list[dict[str, Any]]
    table3: list[dict[str, Any]]
    table4: list[dict[str, Any]]
    table5: dict[str, Any]
    section42: dict[str, Any]
    figures: dict[str, str]
    seconds: float

    def tables(self) -> dict[str, Any]:
        return {
            "table1": self.table1,
            "table2": self.table2,
            "table3": self.table3,
            "table4": self.table4,
            "table5": self.table5,
            "section42": self.section42,
        }

    def to_json(self) -> dict[str, Any]:
        """What `--json` prints: the report's path, the seconds and every table."""
        return {"report": str(self.report), "seconds": self.seconds, **self.tables()}


def run_reproduce(request: ReproduceRequest, ctx: RunContext) -> ReproduceResult:
    """Run Tables 1–5 into a run folder (`runs/reproduce-paper-<time>` unless the context names
    one) and write report.md; adversarial sets are cached, so a second run reuses them."""
    ctx.torch_device()  # an unusable device fails now, before a folder is made
    start = time.perf_counter()
    ranks = ctx.ranks
    alone = replace(ctx, ranks=Ranks())  # what rank 0 does by itself under torchrun (tables 1, 3, 5, the report)
    with contextlib.ExitStack() as stack:

        def open_folder() -> Path:
            here = redo_interrupted(ctx, "reproduce")
            return stack.enter_context(open_run(here, "reproduce", "paper", request.to_json())).path

        out = on_main_first(ranks, open_folder)
        stage = _Stages(ctx)

        def transfer_table(
            name: str, models: list[str], split: str, noise: list[float], **extra: Any
        ) -> TransferMatrix:
            # noise rows both ways: clipped at the rms (as specified) and unclipped (the paper's likely setting)
            transfer = TransferRequest(
                sources=tuple(as_model_ref(m) for m in models),
                targets=tuple(as_model_ref(m) for m in models),
                split=split,
                n=request.images,
                seed=request.seed,
                config=request.config,
                data_dir=request.data_dir,
                noise=tuple(noise),
                unclipped=tuple(noise),
                **extra,
            )
            # the reproduce run owns its table folders: a redo writes over them (all ranks attack the sets)
            return run_transfer(transfer, replace(ctx, out=out / name, overwrite=True))

        def on_main(step: Any) -> Any:
            return on_main_first(ranks, step)

        stage.start("Table 2: transfer across models (train set)")
        # each source also scaled to the paper's own mean distortion: do the paper's higher rates come from size?
        at_paper = {mid: paper.TABLE1[mid][2] for mid in paper.TABLE1_MODELS}
        t2 = transfer_table("table2", paper.TABLE1_MODELS, "train", [0.1, 0.3], scaled=tuple(at_paper.items()))
        stage.done("Table 2")
        stage.start("Table 1: errors and minimum distortion")
        t1 = on_main(lambda: _written(out / TABLE1_FILE, table1(t2, alone, request.data_dir)))
        stage.done("Table 1")
        stage.start("Table 3: errors on P1, P2 and test")
        t3 = on_main(lambda: _written(out / TABLE3_FILE, table3(alone, request.data_dir)))
        stage.done("Table 3")
        stage.start("Table 4: transfer across training sets (test set)")
        at_paper = {mid: paper.TABLE3[mid][3] for mid in paper.TABLE3_MODELS}
        t4 = transfer_table(
            "table4", paper.TABLE3_MODELS, "test", [0.06, 0.1], amplify_rms=0.1, scaled=tuple(at_paper.items())
        )
        stage.done("Table 4")
        stage.start("Table 5: frame bounds of AlexNet")
        t5 = on_main(lambda: _written(out / TABLE5_FILE, table5(alone, request.alexnet())))
        stage.done("Table 5")
        stage.start("§4.2: adversarial training, robustness and ablation")
        n42 = request.n or (SECTION42_QUICK_N if request.quick else SECTION42_FULL_N)

        def robustness() -> dict[str, Any]:
            rows = section42(n42, request.seed, request.config, request.data_dir, alone, out / "section42")
            return _written(out / SECTION42_FILE, rows)

        s42 = on_main(robustness)
        stage.done("§4.2")
        stage.start("report")  # done = total: the tables are finished

        def report() -> ReproduceResult:
            figures = collect_figures(out, t2, t4)
            if request.imagenet_dir is not None and (fig5 := figure5(request, alone, out)) is not None:
                figures["figure5-alexnet"] = fig5
            seconds = time.perf_counter() - start
            settings = {
                "n": request.images,
                "quick": request.quick,
                "seed": request.seed,
                "attack": request.config.as_dict(),
                "device": str(ctx.torch_device()),
                "seconds": round(seconds, 1),
                "torch": torch.__version__,
                **({"world_size": ranks.world} if ranks.sharded else {}),
            }
            result = ReproduceResult(
                report=out / REPORT_FILE,
                folder=out,
                settings=settings,
                table1=t1,
                table2=matrix_vs_paper(t2, paper.TABLE2, table2_key),
                table3=t3,
                table4=matrix_vs_paper(t4, paper.TABLE4, table4_key),
                table5=t5,
                section42=s42,
                figures=figures,
                seconds=round(seconds, 3),
            )
            write_json_atomic(out / TABLES_FILE, {"settings": settings, **result.tables()})
            write_text_atomic(result.report, render_report(result.tables(), settings, figures))
            return result

        return on_main(report)
    raise AssertionError("unreachable")  # pragma: no cover


def _written(path: Path, table: Any) -> Any:
    write_json_atomic(path, table)
    return table


class _Stages:
    """Step and TableDone events of the reproduce task, counted over its five tables."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.finished = ctx, 0

    def start(self, message: str) -> None:
        self.ctx.check_cancel()
        self.ctx.emit(Step(task="reproduce", done=self.finished, total=TABLES, message=message))

    def done(self, name: str) -> None:
        self.finished += 1
        self.ctx.emit(TableDone(task="reproduce", done=self.finished, total=TABLES, name=name))


def figure5(request: ReproduceRequest, ctx: RunContext, out: Path) -> str | None:
    """Fig. 5 on the user's trained AlexNet and ImageNet images: the attack's own run, its figure beside the report."""
    attack = AttackRequest(
        model=request.alexnet(),
        n=request.figure5_n,
        target="random",
        seed=request.seed,
        config=request.config,
        data_dir=request.imagenet_dir,
        classes_file=request.classes_file,
    )
    result = run_attack(attack, replace(ctx, out=out / "figure5", overwrite=True))
    if not (Path(result.run) / FIGURE_FILE).is_file():  # no image reached its target within the budget
        return None
    (out / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(result.run) / FIGURE_FILE, out / "figures" / "figure5-alexnet.png")
    return "figures/figure5-alexnet.png"


def collect_figures(out: Path, t2: TransferMatrix, t4: TransferMatrix) -> dict[str, str]:
    """Heatmaps and Fig. 7-style example grids, copied next to the report."""
    figures = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, m in (("table2", t2), ("table4", t4)):
        src = Path(m.folder or out) / HEATMAP_FILE
        if src.is_file():
            shutil.copyfile(src, out / "figures" / f"{name}-heatmap.png")
            figures[f"{name}-heatmap"] = f"figures/{name}-heatmap.png"
    for src_id in EXAMPLE_SOURCES:
        for m in (t2, t4):
            info = m.settings.get("sources", {}).get(src_id)
            if info and (Path(info["cache"]) / FIGURE_FILE).is_file():
                shutil.copyfile(Path(info["cache"]) / FIGURE_FILE, out / "figures" / f"examples-{src_id}.png")
                figures[f"examples-{src_id}"] = f"figures/examples-{src_id}.png"
    return figures
