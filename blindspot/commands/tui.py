"""`blindspot tui`: the Textual workbench."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from blindspot.console import route_engine_warnings
from engines.core.choices import GRAPHICS_MODES
from engines.core.errors import InputError

NO_TERMINAL = "blindspot tui needs an interactive terminal; use the CLI commands in scripts"


def check_terminal() -> None:
    """Refuse, in one line, to draw where nobody can see it: pipes, files, TERM=dumb, a 0×0 terminal."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()) or os.environ.get("TERM", "") == "dumb":
        raise InputError(NO_TERMINAL)
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        raise InputError(NO_TERMINAL) from None
    if size.columns < 1 or size.lines < 1:
        raise InputError(
            f"the terminal reports a size of {size.columns}×{size.lines}; give it one (e.g. `stty cols 80 rows 24`)"
        )


def run_tui(graphics: str = "auto") -> None:
    check_terminal()
    from blindspot.app import run_app

    route_engine_warnings(to_stderr=False)  # the workbench shows them as toasts

    run_app(graphics=graphics)


def tui(
    graphics: Annotated[str, typer.Option(help="Image rendering: " + ", ".join(GRAPHICS_MODES))] = "auto",
) -> None:
    """Open the terminal workbench."""
    run_tui(graphics)


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)
