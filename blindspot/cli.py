"""The `blindspot` command. Thin: parses options, calls engines, renders results.

Exit codes: 0 ok, 2 bad input or usage (one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import sys

import typer

from blindspot.commands import attack, bounds, data, models, reproduce, train, transfer, tui, units
from blindspot.console import err
from engines.errors import BlindspotError, Cancelled

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130

app = typer.Typer(
    name="blindspot",
    help="Find and explain the blind spots of neural networks (Szegedy et al., Intriguing properties of neural networks).",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
    rich_markup_mode=None,
)

for module in (data, models, train, attack, transfer, bounds, units, reproduce, tui):
    module.register(app)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    """Without a command: open the workbench in a terminal, print help otherwise."""
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            tui.run_tui()
        else:
            typer.echo(ctx.get_help())


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes so scripts can rely on them."""
    try:
        app(args=argv, prog_name="blindspot")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else 1)
    except BlindspotError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True, markup=True)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Cancelled):
        err.print("interrupted: finished results were kept", highlight=False)
        return EXIT_INTERRUPTED
    return EXIT_OK
