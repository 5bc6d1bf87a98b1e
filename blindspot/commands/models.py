"""`blindspot models`: the zoo and any other checkpoints in the models folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from blindspot.console import out, print_json
from blindspot.options import Json
from engines.core.checkpoint import models_dir
from engines.core.errors import InputError
from engines.core.model_rows import model_rows


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def models(
    json_out: Json = False,
    folder: Annotated[
        Path | None, typer.Option("--folder", help="Models folder (default: sample_data/models).")
    ] = None,
) -> None:
    """List the models: id, architecture, parameters, λ, training set and errors (%)."""
    where = folder or models_dir()
    if not Path(where).is_dir():
        raise InputError(f"no models folder at {where} (set BLINDSPOT_MODELS or pass --folder)")
    rows = model_rows(where)
    if json_out:
        print_json(rows)
        return
    table = Table(title="blindspot models (errors in %)")
    for col in ("id", "architecture", "params", "λ", "trained on", "train err", "test err", "P1 err", "P2 err"):
        table.add_column(col, justify="right" if "err" in col or col == "params" else "left", no_wrap=col == "id")
    for r in rows:
        if "error" in r:
            table.add_row(r["id"], f"[red]{r['error']}[/red]", *[""] * 7)
            continue
        lam = ", ".join(f"{v:g}" for v in r["weight_decay"] or [])
        table.add_row(
            r["id"],
            r["architecture"],
            f"{r['parameters']:,}",
            lam,
            r["train_split"],
            _pct(r["train_error"]),
            _pct(r["test_error"]),
            _pct(r["p1_error"]),
            _pct(r["p2_error"]),
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
