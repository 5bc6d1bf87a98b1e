"""Form fields built from the requests' option declarations (`engines.core.options`), and read back.

A screen names the request fields it offers; each gets the declaration's label, its default (or the value the
workbench remembered, when it has the field's type and fits its bounds), a Select over its choices, a Switch for
a yes/no field or an Input typed for whole or real numbers or text, and is parsed back with the declaration's
bounds. A field of any other type (a shape, a model reference) cannot be offered: building its form raises
TypeError. The CLI builds its options from the same declarations, so both front ends start
from the same defaults; messages name a field by its label here, by its flag on the command line.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.dom import DOMNode
from textual.widgets import Input, Select, Static, Switch

from engines.core.errors import InputError
from engines.core.options import OptionSpec, field_error, option_spec

FORM_TYPES = (str, int, float, bool)  # what a form's widgets hold and parse_value parses


def value_type(request: type, name: str) -> type:
    """The field's type without None (`int | None` → int), one of FORM_TYPES: any other type would come back
    from a form as raw text, so it is refused (TypeError, a programming error) when the form is built."""
    hint = full = typing.get_type_hints(request)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kept = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = kept[0] if len(kept) == 1 else None
    if hint not in FORM_TYPES:
        raise TypeError(
            f"{request.__name__}.{name} is {full}: a form offers only {', '.join(t.__name__ for t in FORM_TYPES)}"
        )
    return hint


def _fits(spec: OptionSpec, kind: type, value: Any) -> bool:
    """Whether a remembered value can stand in the field: the field's type (a bool only where a yes/no field is,
    an int or float where a number is), a finite number within the bounds, one of the choices (else the declared
    default stands)."""
    if value is None:
        return spec.default is None
    if spec.choices is not None:
        return isinstance(value, str) and value in spec.choices
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is str:
        return isinstance(value, str)
    if not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        return False
    return math.isfinite(value) and _within(spec, value)


def initial_value(request: type, name: str, remembered: Mapping[str, Any] | None = None) -> Any:
    """What the field shows first: the remembered value when it fits the declaration, else the declared default."""
    spec = option_spec(request, name)
    value = (remembered or {}).get(name, spec.default)
    return value if _fits(spec, value_type(request, name), value) else spec.default


def field_widget(request: type, name: str, value: Any) -> Input | Select | Switch:
    """The widget of one declared field (id = the field's name): a Select over its choices, a Switch for a yes/no
    field, or an Input typed as the field is."""
    spec = option_spec(request, name)
    wid = name
    if spec.choices is not None:
        return Select([(c, c) for c in spec.choices], value=value, allow_blank=False, compact=True, id=wid)
    kind = value_type(request, name)
    if kind is bool:
        return Switch(bool(value), id=wid)
    input_type = "integer" if kind is int else "number" if kind is float else "text"
    return Input("" if value is None else str(value), id=wid, compact=True, type=input_type)  # type: ignore[arg-type]


def form_fields(
    request: type, names: Iterable[str], remembered: Mapping[str, Any] | None = None, classes: str = "field"
) -> ComposeResult:
    """One row per field (its label, then its widget, id = the field's name), for a screen's compose().

    A field of a type no widget parses raises TypeError here, when the screen builds the form."""
    names = list(names)
    for name in names:
        value_type(request, name)
    return _rows(request, names, remembered, classes)


def _rows(request: type, names: list[str], remembered: Mapping[str, Any] | None, classes: str) -> ComposeResult:
    for name in names:
        with Horizontal(classes=classes):
            yield Static(option_spec(request, name).label)
            yield field_widget(request, name, initial_value(request, name, remembered))


def parse_value(request: type, name: str, text: str) -> Any:
    """A field's text parsed as the field's type and checked against its declared bounds and choices.

    Bad text raises an InputError naming the field (`worded("label")` says its label)."""
    spec = option_spec(request, name)
    kind = value_type(request, name)
    text = text.strip()
    if text == "" and spec.default is None:
        return None
    if kind is bool:
        if text.lower() in ("yes", "true", "on", "1"):
            return True
        if text.lower() in ("no", "false", "off", "0"):
            return False
        raise field_error(request, f"${name} is yes or no, got {_quoted(text)}", name)
    if spec.choices is not None and text not in spec.choices:
        raise field_error(request, f"${name} must be one of {', '.join(spec.choices)}, got {_quoted(text)}", name)
    if kind is int:
        try:
            value: Any = int(text)  # "+5" and "1_000" too; "--5", "1.5", "²" raise
        except ValueError:
            value = None
        if value is None or not _within(spec, value):
            raise field_error(request, f"${name} must be a whole number{_bounds(spec)}, got {_quoted(text)}", name)
        return value
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not _within(spec, value):  # inf, nan, 1e400 refused
            raise field_error(request, f"${name} must be a number{_bounds(spec)}, got {_quoted(text)}", name)
        return value
    return text


def _within(spec: OptionSpec, value: float) -> bool:
    return not (spec.min is not None and value < spec.min) and not (spec.max is not None and value > spec.max)


def _quoted(text: str) -> str:
    return repr(text).replace("$", "$$")  # user text is never read as a field placeholder


def _bounds(spec: OptionSpec) -> str:
    low, high = spec.min, spec.max
    if low is not None and high is not None:
        return f" in {low:g}..{high:g}"
    if low is not None:
        return f" ≥ {low:g}"
    return f" ≤ {high:g}" if high is not None else ""


def read_field(screen: DOMNode, request: type, name: str) -> Any:
    """The parsed value of the field's widget (id = the field's name) on `screen`."""
    widget = screen.query_one(f"#{name}")
    if isinstance(widget, Switch):
        return widget.value
    text = str(widget.value) if isinstance(widget, Select) else widget.value  # type: ignore[attr-defined]
    return parse_value(request, name, text)


def read_fields(screen: DOMNode, request: type, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of several fields, by name (the first bad one raises)."""
    return {name: read_field(screen, request, name) for name in names}


def in_words(exc: BaseException) -> str:
    """An error as the workbench says it: request fields by their labels."""
    return exc.worded("label") if isinstance(exc, InputError) else str(exc)
