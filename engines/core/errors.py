"""Errors a user can cause. Front ends print them as one line and exit with code 2."""


class BlindspotError(Exception):
    """Base class: bad input, not a bug."""


class DataError(BlindspotError):
    """Missing, corrupt or malformed data files."""


class CheckpointError(BlindspotError):
    """A checkpoint that is missing, unsafe, truncated or does not fit its architecture."""


class ModelError(BlindspotError):
    """A model that cannot be used for the requested job (e.g. not a classifier)."""


class InputError(BlindspotError):
    """Bad arguments or values (shapes, ranges, NaN)."""


class RunInUse(InputError):
    """A run folder locked by another live process."""


class Cancelled(Exception):
    """Raised inside an engine when its cancel check says stop; finished work is kept."""
