"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engines.core.choices import DEVICES

Device = Annotated[
    str, typer.Option("--device", help=f"{', '.join(DEVICES)} (auto = cuda when present; cuda:N picks a card).")
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for the computation (default: torch's, one per core); recorded in run.json.",
    ),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Write into an --out folder that already holds results (they are replaced).")
]
Seed = Annotated[
    int,
    typer.Option("--seed", min=0, max=2**63 - 1, help="Random seed (results are reproducible for a seed on the CPU)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout; logs go to stderr.")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Folder with MNIST-format IDX files (also MNIST/raw layouts). Default: the shipped sample_data/mnist.",
    ),
]
ModelRef = Annotated[str, typer.Option("--model", "-m", help="A zoo id (see `blindspot models`) or a checkpoint path.")]
OutDir = Annotated[Path | None, typer.Option("--out", help="Run folder for results (created; written atomically).")]
CSteps = Annotated[int, typer.Option("--c-steps", help="Runs of the search over c per image (bracket, then bisect).")]
MaxIter = Annotated[int, typer.Option("--max-iter", help="L-BFGS-B iterations per value of c.")]
Offset = Annotated[int, typer.Option("--offset", help="Index of the first image.")]


SETS_CACHED = "finished adversarial sets stay cached; run the same command again to go on"
