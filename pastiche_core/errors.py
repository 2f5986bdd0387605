"""User-facing errors: each names the input and what was expected, never a torch traceback."""


class PasticheError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2."""


class CheckpointError(PasticheError, ValueError):
    """A weights file is missing, unreadable, unsafe, or not the model that was asked for."""


class InputError(PasticheError, ValueError):
    """A user input (image, code, option value) is not what the operation needs."""
