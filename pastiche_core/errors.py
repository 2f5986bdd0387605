"""User-facing errors: each names the input and what was expected, never a torch traceback."""

MAX_MESSAGE = 900  # a hostile file must not turn into a megabyte-long error line


def short(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    text = str(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def brief(obj, limit: int = 80) -> str:
    """A bounded ``repr`` of an untrusted object: never walks or prints more than a few items."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxstring, r.maxother, r.maxlong = 2, 6, 6, 4, 60, 60, 40
    try:
        return short(r.repr(obj), limit)
    except Exception:  # a repr that fails is no reason to lose the real error
        return f"<{type(obj).__name__}>"


class PasticheError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (short(args[0], MAX_MESSAGE),)
        super().__init__(*args)


class CheckpointError(PasticheError, ValueError):
    """A weights file is missing, unreadable, unsafe, or not the model that was asked for."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (" ".join(args[0].splitlines()),)  # one line: the CLI prints exactly one 'error:' line
        super().__init__(*args)


class InputError(PasticheError, ValueError):
    """A user input (image, code, option value) is not what the operation needs."""
