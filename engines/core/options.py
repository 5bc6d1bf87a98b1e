"""Options declared once, on the request dataclasses: each front end builds its own controls from them.

A request field declared with `option(...)` carries its default, its command-line flags, the label a form
shows, its help text, bounds and offered choices. `blindspot` turns a declaration into a Typer option, the
workbench into an Input, a Select or a Switch (as Harlequin builds its CLI and its settings from one set of option
objects), so both front ends start from the same defaults by construction.

Engines name fields in error messages as `$field` placeholders (`field_error`); an `InputError` reads with
the flags by default (the CLI's words) and with the labels in the workbench (`InputError.worded`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engines.core.errors import FieldName, InputError

OPTION_KEY = "blindspot.option"


@dataclass(frozen=True)
class OptionSpec:
    """One user-facing option of a request: what both front ends need to offer it."""

    name: str  # the request field
    default: Any
    flags: tuple[str, ...]  # command-line flags, the first is the one messages name: ("--n", "-n")
    label: str  # what a form shows beside the field, and workbench messages name
    help: str  # the command's --help text
    min: float | None = None  # inclusive bounds, checked by the workbench's forms
    max: float | None = None
    cli_range: bool = False  # the command line checks min/max itself (and --help shows the range)
    choices: tuple[str, ...] | None = None  # what a form offers (the engine may accept more, e.g. a class label)

    @property
    def flag(self) -> str:
        return self.flags[0].split("/")[0]

    @property
    def field_name(self) -> FieldName:
        return FieldName(self.flag, self.label)


def option(
    default: Any,
    *,
    flags: Sequence[str] = (),
    label: str = "",
    help: str = "",  # noqa: A002 - the word every front end uses
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    cli_range: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    """A dataclass field with its default and its declaration (`flags` default to --field-name)."""
    metadata = {
        OPTION_KEY: {
            "default": default,
            "flags": tuple(flags),
            "label": label,
            "help": help,
            "min": min,
            "max": max,
            "cli_range": cli_range,
            "choices": None if choices is None else tuple(choices),
        }
    }
    return dataclasses.field(default=default, metadata=metadata)


def declared_options(cls: type) -> dict[str, OptionSpec]:
    """Every declared option of a request class, by field name, in field order."""
    specs = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(OPTION_KEY)
        if meta is None:
            continue
        flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
        specs[f.name] = OptionSpec(
            name=f.name, **{**meta, "flags": flags, "label": meta["label"] or f.name.replace("_", " ")}
        )
    return specs


def option_spec(cls: type, name: str) -> OptionSpec:
    """The declaration of one field (a KeyError names the class when the field declares none)."""
    try:
        return declared_options(cls)[name]
    except KeyError:
        raise KeyError(f"{cls.__name__}.{name} declares no option") from None


def field_error(cls: type, message: str, *names: str) -> InputError:
    """An InputError whose message names the fields `names` as `$name`, each front end in its words."""
    return InputError(message, fields={name: option_spec(cls, name).field_name for name in names})
