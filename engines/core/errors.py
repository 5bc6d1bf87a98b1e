"""Errors a user can cause. Front ends print them as one line and exit with code 2."""

from __future__ import annotations

from collections.abc import Mapping
from string import Template
from typing import Literal, NamedTuple


class BlindspotError(Exception):
    """Base class: bad input, not a bug."""


class DataError(BlindspotError):
    """Missing, corrupt or malformed data files."""


class CheckpointError(BlindspotError):
    """A checkpoint that is missing, unsafe, truncated or does not fit its architecture."""


class ModelError(BlindspotError):
    """A model that cannot be used for the requested job (e.g. not a classifier)."""


class FieldName(NamedTuple):
    """How each front end names a request field: the CLI by its flag, the workbench by its label."""

    flag: str
    label: str


class InputError(BlindspotError):
    """Bad arguments or values (shapes, ranges, NaN).

    The message may name request fields as `$name` placeholders, with `fields` saying how each front end names
    them (`engines.core.options.field_error` fills it from the declarations): `str()` reads with the flags,
    `worded("label")` with the workbench's labels."""

    def __init__(self, message: str = "", fields: Mapping[str, FieldName] | None = None) -> None:
        self.template = message
        self.fields = dict(fields or {})
        super().__init__(self.worded("flag"))

    def worded(self, style: Literal["flag", "label"]) -> str:
        """The message naming each field by its flag (the CLI) or its label (the workbench)."""
        if not self.fields:
            return self.template
        return Template(self.template).safe_substitute({k: getattr(v, style) for k, v in self.fields.items()})


class RunInUse(InputError):
    """A run folder locked by another live process."""


class Cancelled(Exception):
    """Raised inside an engine when its cancel check says stop; finished work is kept."""
