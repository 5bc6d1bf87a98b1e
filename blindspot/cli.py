"""The `blindspot` command. Thin: parses options, calls engines, renders results.

Exit codes: 0 ok, 2 bad input or usage (one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import sys

import typer
from rich.text import Text

try:  # Typer >= 0.20 carries its own copy of click, and its own Abort
    from typer import Abort
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # older Typer runs on click itself
    from click.exceptions import Abort, ClickException, UsageError  # type: ignore[assignment]

from blindspot.commands import attack, bounds, certify, data, models, reproduce, robustness, train, transfer, tui, units
from blindspot.console import err, route_engine_warnings
from engines.core.errors import BlindspotError, Cancelled

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130

app = typer.Typer(
    name="blindspot",
    help="Find and explain the blind spots of neural networks (Szegedy et al., Intriguing properties of neural networks).",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
    rich_markup_mode=None,
)

for module in (data, models, train, attack, certify, transfer, robustness, bounds, units, reproduce, tui):
    module.register(app)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    """Without a command: open the workbench in a terminal, print help otherwise."""
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            tui.run_tui()
        else:
            typer.echo(ctx.get_help())


def _error_line(message: str) -> None:
    # the message may hold user text such as paths with brackets: never read it as Rich markup
    err.print(Text.assemble(("error: ", "red"), " ".join(message.split())), soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes so scripts can rely on them."""
    route_engine_warnings()
    try:
        code = app(args=argv, prog_name="blindspot", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else 1)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "blindspot"
        _error_line(f"{exc.format_message()} (see {command} --help)")
        return EXIT_BAD_INPUT
    except (ClickException, BlindspotError) as exc:
        _error_line(exc.format_message() if isinstance(exc, ClickException) else str(exc))
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Abort, Cancelled):
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:  # Typer turns Ctrl-C inside a command into exit code 130
        err.print("interrupted: finished results were kept", highlight=False)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_OK
