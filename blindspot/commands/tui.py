"""`blindspot tui`: the Textual workbench."""

from __future__ import annotations

from typing import Annotated

import typer

from engines.core.choices import GRAPHICS_MODES as GRAPHICS


def run_tui(graphics: str = "auto") -> None:
    from blindspot.app import run_app

    run_app(graphics=graphics)


def tui(graphics: Annotated[str, typer.Option(help="Image rendering: " + ", ".join(GRAPHICS))] = "auto") -> None:
    """Open the terminal workbench."""
    run_tui(graphics)


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)
