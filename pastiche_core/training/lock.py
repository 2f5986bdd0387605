"""One training run per output folder at a time.

Two runs writing into the same folder would overwrite each other's checkpoints and outputs
(and a fresh one would replace a finished state). :func:`run_lock` takes an exclusive
``fcntl.flock`` on ``OUT/.pastiche-train.lock`` for the whole run; a second run, in this
process or any other, gets one clear error instead of waiting. The kernel drops the lock when
the holder exits, ``kill -9`` included, so a stale lock never blocks the next run; the file
itself stays (removing it would let two runs lock two different files).

Under torchrun only rank 0 takes the lock: the other ranks are the same run. Stages run one
after another into the same folder (the usual chain) each take it in turn.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from ..errors import InputError

LOCK_NAME = ".pastiche-train.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _remove_if_unused(made: list[Path], lock: Path) -> None:
    """Remove the folders this run created when nothing but the lock file is in them (done
    while the lock is still held, so no other run is inside)."""
    try:
        if [e.name for e in os.scandir(made[0])] != [LOCK_NAME]:
            return
        lock.unlink()
        for folder in made:  # innermost first
            folder.rmdir()
    except OSError:
        pass


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, stage: str):
    """Hold the output folder's training lock for the block (rank 0 only; see the module doc)."""
    out = Path(out)
    if fcntl is None or _rank() != 0:
        yield None
        return
    made = [] if out.is_dir() else [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise InputError(f"output folder '{out}' is not writable: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise InputError(f"another training run is using the output folder '{out}'"
                             + (f" ({holder})" if holder else "")
                             + "; wait for it to finish (or stop it), or choose another --out") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"stage {stage}, pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            if made:  # a run that failed before writing anything leaves no folder behind
                _remove_if_unused(made, path)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["LOCK_NAME", "run_lock"]
