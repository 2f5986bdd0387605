"""User-facing errors: each names the input and what was expected, never a torch traceback.

:func:`describe_exception` is the one wording of *any* exception for a user (the CLI's
``error:`` line, a ComfyUI node's message): one line, at most :data:`MAX_MESSAGE` characters
(:data:`MAX_OWN_MESSAGE` for our own :class:`PasticheError` wording).
``PASTICHE_DEBUG=1`` makes both boundaries re-raise the unexpected ones (anything but a
:class:`PasticheError`: a bug) instead, with the traceback.
"""
from __future__ import annotations

import os

#: Longest text shown from an exception we do not word ourselves: a library's error dump or
#: a crafted file name quoted in it must not flood the terminal or the node's error box.
MAX_MESSAGE = 300
#: Our own messages are written to be read whole (a missing file may name where to put it and
#: where to get it); they are still one line and bounded.
MAX_OWN_MESSAGE = 1000
DEBUG_ENV = "PASTICHE_DEBUG"


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
            args = (short(args[0], MAX_OWN_MESSAGE),)  # a hostile file must not make a megabyte-long line
        super().__init__(*args)


class CheckpointError(PasticheError, ValueError):
    """A weights file is missing, unreadable, unsafe, or not the model that was asked for."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (" ".join(args[0].splitlines()),)  # one line: the CLI prints exactly one 'error:' line
        super().__init__(*args)


class InputError(PasticheError, ValueError):
    """A user input (image, code, option value) is not what the operation needs."""


def debug_enabled() -> bool:
    """``PASTICHE_DEBUG`` set to anything but empty/0/false/no/off: let tracebacks through."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, shortened in the middle (the start says what, the end often says
    what to do) when longer than ``limit``."""
    s = " ".join(str(text).split())
    if len(s) <= limit:
        return s
    head = (limit - 5) * 2 // 3
    return f"{s[:head]} ... {s[len(s) - (limit - 5 - head):]}"


_OOM_WORDS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def describe_exception(exc: BaseException) -> str:
    """One line for the user. Our own errors keep their wording; the rest say what kind of
    failure it was (file system, memory) or that it is unexpected (a bug to report)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, PasticheError):
        return one_line(text or type(exc).__name__, MAX_OWN_MESSAGE)
    if isinstance(exc, MemoryError) or any(w in first.lower() for w in _OOM_WORDS):
        detail = f" ({first})" if first else ""
        return one_line(f"out of memory{detail}: try a smaller image or batch, or a device with more memory")
    if isinstance(exc, OSError):
        what = exc.strerror or first or type(exc).__name__
        names = [repr(os.fsdecode(n)) for n in (exc.filename, exc.filename2) if n is not None]
        return one_line(f"{what}: {' -> '.join(names)}" if names else what)
    detail = f": {first}" if first else ""
    return one_line(f"unexpected {type(exc).__name__}{detail} (set {DEBUG_ENV}=1 for the traceback and please report it)")
