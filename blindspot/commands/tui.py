"""`blindspot tui`: the Textual workbench."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from blindspot.console import route_engine_warnings
from blindspot.options import DataDir
from engines.core.choices import GRAPHICS_MODES
from engines.core.errors import InputError
from screens.state import Settings, remembered_settings, settings_file

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


def run_tui(graphics: str = "auto", session: Session | None = None) -> None:
    check_terminal()
    from blindspot.app import run_app

    route_engine_warnings(to_stderr=False)  # the workbench shows them as toasts
    session = session or session_settings(None, None, None, None)
    run_app(graphics=graphics, settings=session.settings, store=session.store, notes=session.notes)


@dataclass(frozen=True)
class Session:
    settings: Settings
    store: Path
    notes: tuple[str, ...]


def check_model(value: str | dict[str, Any]) -> None:
    """A model the workbench can load later: a zoo id or checkpoint that exists, a torchvision name, a factory,
    with a weights file that exists (the factory's module is imported only when the model is loaded)."""
    from engines.core.checkpoint import resolve_model_path
    from engines.core.models import as_model_ref

    ref = as_model_ref(value)
    if ref.kind == "checkpoint":
        resolve_model_path(ref.name)
    if ref.weights is not None and not Path(ref.weights).expanduser().is_file():
        raise InputError(f"weights file not found: {ref.weights}")


def check_data(path: str | Path) -> None:
    """Any data the CLI's --data takes (IDX, image folders, CIFAR binaries), its listing checked."""
    from engines.core.sources import DataRef, open_data

    open_data(DataRef(path=str(Path(path).expanduser())), "test")


def session_settings(
    model: str | None, data: Path | None, device: str | None, runs: Path | None, weights: Path | None = None
) -> Session:
    """The last session's choices, then this session's options, each checked before the terminal is taken over.

    A remembered model or data folder that no longer exists is dropped with a note, not an error."""
    from engines.core.device import resolve_device
    from engines.core.errors import BlindspotError
    from engines.core.models import parse_model_text

    store = settings_file()
    settings, note = remembered_settings(store)
    notes = [note] if note else []
    defaults = Settings()
    for key, check in (("model", check_model), ("data_dir", check_data), ("device", resolve_device)):
        value = getattr(settings, key)
        if value != getattr(defaults, key) and value is not None:
            try:
                check(value)
            except (BlindspotError, TypeError, ValueError, AttributeError) as exc:  # a hand-edited file, too
                notes.append(
                    f"the saved {key.replace('_dir', '')} {value} is not usable here ({exc}); using the default"
                )
                setattr(settings, key, getattr(defaults, key))
    if weights is not None and model is None:
        raise InputError("--weights needs --model (a torchvision name or a factory)")
    if model is not None:
        ref = parse_model_text(model, str(weights) if weights else None)
        check_model(ref.to_json())  # an unknown id or a missing file: one line now, not an error screen later
        settings.model = ref.to_json()
    if data is not None:
        data = data.expanduser()
        check_data(data)  # missing or damaged files: one line now
        settings.data_dir = str(data)
    if device is not None:
        resolve_device(device)
        settings.device = device
    if runs is not None:
        settings.runs_dir = runs.expanduser()
    return Session(settings, store, tuple(notes))


def tui(
    graphics: Annotated[str, typer.Option(help="Image rendering: " + ", ".join(GRAPHICS_MODES))] = "auto",
    model: Annotated[
        str | None,
        typer.Option("--model", help="Active model at start: zoo id, checkpoint, torchvision name or MODULE:FUNCTION."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Weights file for a torchvision --model or a factory.")
    ] = None,
    data: DataDir = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda for every job.")] = None,
    runs: Annotated[Path | None, typer.Option("--runs", help="Runs folder (default: runs).")] = None,
) -> None:
    """Open the terminal workbench (--model, --data, --device and --runs set this session's choices)."""
    run_tui(graphics, session_settings(model, data, device, runs, weights))


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)
