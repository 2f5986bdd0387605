"""The one way Pastiche writes a file: nothing half-written, nothing lost, nobody else's file removed.

Every output (images, generators, banks, samplers, training states) goes through
:func:`atomic_write` (or :func:`write_pair` for a ``.pt``/``.npy`` + ``.safetensors`` pair):

* the bytes go to a temporary file **in the target folder** (a rename across file systems is
  not atomic) with a short name, ``.pst-<pid>-<host>-<random>.tmp``, so a target whose own name
  is at the file system's limit (255 bytes) still works;
* the temporary file is created like a plain ``open()`` would create the target: mode 0666
  minus the umask (``mkstemp`` would give 0600), or the old file's mode when it is replaced;
* file contents are ``fsync``-ed, renamed over the target, and the folder entry is
  ``fsync``-ed, so after a crash or ``kill -9`` the target is either the old complete file or
  the new complete one;
* on any failure the temporary file is removed and the old target is untouched.

The pid and host token in the temporary name let :func:`remove_dead_temps` delete leftovers of
a writer that died (``kill -9``, power loss) while never touching the in-flight file of a live
process, here or on another host sharing the folder.

:func:`check_output` is the up-front check every command runs before any work: the output
name is valid, its folder exists and is writable, and it is not one of the inputs (same path,
or the same file through a hard or symbolic link).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import InputError

TEMP_PREFIX = ".pst-"
TEMP_SUFFIX = ".tmp"
#: safetensors metadata keys naming the twin file written with it (see :func:`write_pair`)
TWIN_KEY = "pastiche.twin"
_TEMP_RE = re.compile(r"^\.pst-(\d+)-([0-9a-f]{8})-[0-9a-z]+\.tmp$")
_LEGACY_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)$")  # `.NAME.tmp-PID` of earlier versions


def _host_token() -> str:
    """8 hex digits that differ between hosts sharing a folder (pids are only unique per host)."""
    ident = ""
    for src in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            ident = Path(src).read_text().strip()
            break
        except OSError:
            continue
    ident += "|" + socket.gethostname()
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


HOST = _host_token()


def temp_name() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{HOST}-{secrets.token_hex(3)}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we could have written: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def temp_owner(name: str) -> tuple[int, str] | None:
    """``(pid, host)`` of one of our temporary file names, else None."""
    m = _TEMP_RE.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    m = _LEGACY_TEMP_RE.match(name)
    if m:
        return int(m.group(1)), HOST
    return None


def remove_dead_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``folder`` left by writers on this host that are no longer
    running; a live process's in-flight file and other hosts' files are kept. Returns the removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is None or owner[1] != HOST or owner[0] == os.getpid() or _pid_alive(owner[0]):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def fsync_dir(folder: str | os.PathLike) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Staged:
    """A temporary file next to ``target``, created empty with the target's future mode;
    :meth:`commit` renames it into place, :meth:`discard` removes it."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        folder = self.target.parent
        folder.mkdir(parents=True, exist_ok=True)
        try:
            mode = os.stat(self.target).st_mode & 0o7777  # a replaced file keeps its mode, as with open()
        except OSError:
            mode = None
        while True:
            self.tmp = folder / temp_name()
            try:
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask
                break
            except FileExistsError:
                continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)
        self.done = False

    def sync(self) -> None:
        _fsync_file(self.tmp)

    def commit(self) -> Path:
        os.replace(self.tmp, self.target)
        self.done = True
        return self.target

    def discard(self) -> None:
        if not self.done:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _disk_error(exc: BaseException, target: Path, hint: str = "try again") -> BaseException:
    """A full disk as a clear error (the old file is untouched); anything else unchanged."""
    from .errors import CheckpointError

    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, RuntimeError) and ("No space left" in str(exc) or "file write failed" in str(exc)))
    if not full:
        return exc
    kept = "the previous one is intact" if target.exists() else "nothing was written"
    return CheckpointError(f"the disk is full: could not write '{target}' ({kept}); free some space and {hint}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, hint: str = "try again") -> Path:
    """``write(tmp_path)`` fills a temporary file that then atomically replaces ``path``.
    ``hint`` ends the message of a full disk (what to do once space is freed)."""
    return write_group([(path, write)], hint=hint)[0]


def write_group(items: Sequence[tuple[str | os.PathLike, Callable[[Path], None]]], *,
                hint: str = "try again") -> list[Path]:
    """Write several files: every temporary file is written and synced before the first rename,
    so a failure in any of them leaves all the old files in place."""
    staged: list[Staged] = []
    try:
        for target, write in items:
            s = Staged(target)
            staged.append(s)
            write(s.tmp)
            s.sync()
        for s in staged:
            s.commit()
        for folder in {s.target.parent for s in staged}:
            fsync_dir(folder)
    except (OSError, RuntimeError) as exc:
        err = _disk_error(exc, staged[-1].target if staged else Path(items[0][0]), hint)
        if err is exc:
            raise
        raise err from None
    finally:
        for s in staged:
            s.discard()
    return [s.target for s in staged]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_pair(twin: str | os.PathLike, write_twin: Callable[[Path], None], st: str | os.PathLike,
               write_st: Callable[[Path, dict], None]) -> list[Path]:
    """An official file (``.pt``/``.npy``) and its ``.safetensors`` copy that cannot disagree.

    Both are written to temporary files first; ``write_st(tmp, metadata)`` must store
    ``metadata`` in the safetensors header: it records the twin's name, size and sha256.
    The twin is renamed first, the safetensors last, and loading (:func:`twin_is_stale`)
    ignores a safetensors whose recorded twin is no longer the file next to it -- whatever
    happened in between (a crash between the renames, the ``.pt`` replaced by another tool)."""
    twin, st = Path(twin), Path(st)
    staged: list[Staged] = []
    try:
        s1 = Staged(twin)
        staged.append(s1)
        write_twin(s1.tmp)
        s1.sync()
        st1 = s1.tmp.stat()  # the rename keeps size and mtime: a quick "unchanged" when both match
        meta = {TWIN_KEY: json.dumps({"name": twin.name, "size": st1.st_size, "mtime_ns": st1.st_mtime_ns,
                                      "sha256": file_sha256(s1.tmp)})}
        s2 = Staged(st)
        staged.append(s2)
        write_st(s2.tmp, meta)
        s2.sync()
        s1.commit()
        s2.commit()
        fsync_dir(st.parent)
        if twin.parent != st.parent:
            fsync_dir(twin.parent)
    except (OSError, RuntimeError) as exc:
        err = _disk_error(exc, staged[-1].target if staged else twin)
        if err is exc:
            raise
        raise err from None
    finally:
        for s in staged:
            s.discard()
    return [twin, st]


def twin_is_stale(st_path: str | os.PathLike) -> Path | None:
    """The twin file when the ``.safetensors`` at ``st_path`` was written with a twin
    (:func:`write_pair`) that is still next to it but no longer has the recorded contents;
    else None (no twin recorded, twin gone, or twin unchanged)."""
    st_path = Path(st_path)
    try:  # the header only (8-byte length + JSON), without torch: the node pack calls this at listing time
        with open(st_path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= 100_000_000:
                return None
            meta = json.loads(fh.read(n)).get("__metadata__") or {}
        twin = json.loads(meta[TWIN_KEY]) if TWIN_KEY in meta else None
    except Exception:  # unreadable: the loader reports it properly
        return None
    if not isinstance(twin, dict) or not isinstance(twin.get("name"), str):
        return None
    path = st_path.with_name(Path(twin["name"]).name)
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_size != twin.get("size"):
        return path
    if st.st_mtime_ns == twin.get("mtime_ns"):
        return None  # untouched since the pair was written (no need to read a large file)
    if file_sha256(path) != twin.get("sha256"):  # copied (new mtime) or rewritten: the contents decide
        return path
    return None


# --------------------------------------------------------------------------------------------
# Up-front output checks
# --------------------------------------------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 what: str = "output", option: str = "--out") -> Path:
    """Refuse, before any work, an output that could not be written or would replace an input."""
    out = Path(path)
    name = out.name
    if not name or name in (".", ".."):
        raise InputError(f"{what} '{out}' is not a file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{what} '{out}': folder '{folder}' does not exist")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if len(os.fsencode(name)) > limit or "\x00" in name:
        raise InputError(f"{what} '{out}': the file name is too long ({len(os.fsencode(name))} bytes; "
                         f"this file system allows {limit})")
    if out.is_dir():
        raise InputError(f"{what} '{out}' is a folder; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} '{out}': folder '{folder}' is not writable")
    for src in inputs:
        if src is None or str(src) == "":
            continue
        src = Path(src)
        if (out.exists() or out.is_symlink()) and src.exists() and _same(src, out) or \
                os.path.abspath(src) == os.path.abspath(out):
            raise InputError(f"{what} '{out}' is the input '{src}' (the same file): writing it would destroy the "
                             f"input; choose another {option}")
    return out


__all__ = ["HOST", "Staged", "TWIN_KEY", "atomic_write", "check_output", "file_sha256", "fsync_dir",
           "remove_dead_temps", "temp_name", "temp_owner", "twin_is_stale", "write_group", "write_pair"]
