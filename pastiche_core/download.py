"""Fetch the official DualStyleGAN files from the Hugging Face Hub, only when asked.

This is the only module of Pastiche that touches the network (``python -m pastiche_core
download``, and Load DualStyleGAN's ``download_missing``); nothing calls it at import.
It needs the optional ``huggingface_hub`` (``pip install "pastiche[download]"``).

The files come from the public model repository :data:`REPO_ID`, folder ``models/``, which is
laid out like the official ``checkpoint/`` folder (``encoder.pt``, ``<style>/generator.pt``,
``<style>/exstyle_code.npy``, ...). For a style, every file its folder lists is fetched, plus the
encoders at the top. Each file:

* streams into ``<name>.part`` next to its destination, and a ``.part`` left by an interrupted
  run (or a connection that dropped) is resumed with an HTTP Range request, not restarted;
* is checked against the Hub's SHA-256 (the ETag of large files) when it has one;
* is opened with our safe loaders (the generator, bank, sampler or encoder loader) before it
  gets its real name, by an atomic rename; a file that fails is deleted;
* never goes through the Hub's cache: the models folder ends up holding the official files only.

The Hub endpoint is ``HF_ENDPOINT`` (default https://huggingface.co); ``HF_HUB_OFFLINE=1``, or
no connection, gives one error naming the folder to fill by hand.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, PasticheError

REPO_ID = "public-data/DualStyleGAN"
REPO_FOLDER = "models"
#: the styles of the official release (its README's table), for a list before anything is fetched
OFFICIAL_STYLES = ("cartoon", "caricature", "anime", "arcane", "comic", "pixar", "slamdunk")
#: top-level files a style needs (z+ encoder for stylize, w+ for --wplus); the training-only
#: files at the top (if the repository has any) are not fetched for a style
SHARED_FILES = ("encoder.pt", "encoder_wplus.pt")
#: what our loaders can check; anything else listed (a README, images) is not fetched
_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")
_CHUNK = 1 << 20
_ATTEMPTS = 4  # connection drops resumed within one run before giving up (the .part stays)

_SAFE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)?")
Progress = Callable[[str, int, int], None]  # (file, bytes done, bytes total)


class DownloadError(CheckpointError):
    """The files could not be fetched or are not valid; the message says what to do by hand."""


def endpoint() -> str:
    # read at call time (huggingface_hub reads HF_ENDPOINT once, at its import)
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_page() -> str:
    return f"https://huggingface.co/{REPO_ID}/tree/main/{REPO_FOLDER}"


def _offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "on", "yes", "true")


def _by_hand(dest: Path, style: str) -> str:
    return (f"download them by hand from {hub_page()} (encoder.pt and the '{style}/' folder) and put them, "
            f"unchanged, in '{dest}' (encoder.pt at the top, the style's files in '{dest / style}')")


@dataclass
class RemoteFile:
    path: str        # in the repository, e.g. models/cartoon/generator.pt
    size: int | None

    @property
    def local(self) -> str:
        """Path relative to the models folder (the repository's models/ is the checkpoint folder)."""
        return self.path[len(REPO_FOLDER) + 1:]


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise DownloadError("downloading needs the huggingface_hub package: pip install \"pastiche[download]\" "
                            "(or pip install huggingface_hub)") from None
    return huggingface_hub


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    """A failure to reach the Hub, as opposed to a bad file: huggingface_hub's offline and HTTP
    errors, and the transport errors of its HTTP client (httpx or httpx2, by version)."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    mods = {c.__module__.split(".")[0] for c in type(exc).__mro__}
    return bool(mods & {"httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "requests", "urllib3"})


def list_style_files(style: str, *, revision: str = "main") -> list[RemoteFile]:
    """The repository's files for ``style``: the shared encoders plus everything in its folder."""
    hub = _hub()
    api = hub.HfApi(endpoint=endpoint())
    entries = api.list_repo_tree(REPO_ID, path_in_repo=REPO_FOLDER, recursive=True, revision=revision)
    files = [RemoteFile(e.path, getattr(e, "size", None)) for e in entries if hasattr(e, "size") and hasattr(e, "blob_id")]
    # names come from a server: only plain relative paths may become paths in the models folder
    files = [f for f in files if f.path.startswith(REPO_FOLDER + "/") and _SAFE_PATH.fullmatch(f.local)]
    shared = [f for f in files if f.local in SHARED_FILES]
    mine = [f for f in files if f.local.startswith(f"{style}/") and f.local.endswith(_SUFFIXES)]
    if not mine:
        remote = sorted({f.local.split("/")[0] for f in files if "/" in f.local})
        raise DownloadError(f"style '{style}' is not in {REPO_ID} (its styles: {', '.join(remote) or 'none'})")
    return shared + mine


def _probe(revision: str) -> None:
    """One HEAD request without retries: an unreachable Hub fails here at once, not after the
    listing's retries with back-off."""
    hub = _hub()
    url = hub.hf_hub_url(REPO_ID, f"{REPO_FOLDER}/{SHARED_FILES[0]}", revision=revision, endpoint=endpoint())
    try:
        hub.get_hf_file_metadata(url, timeout=15)
    except hub.utils.EntryNotFoundError:
        pass  # reachable; the listing says what there is


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def validate(path: Path, name: str) -> None:
    """Open ``path`` (a downloaded ``name``) with the loader that will read it later; raises
    :class:`PasticheError` when it is not that file."""
    if name.endswith(".npy") or name.startswith(("exstyle_code", "refined_exstyle_code", "instyle_code")):
        from .styles import StyleBank

        StyleBank.load(path)
    elif name.startswith("sampler"):
        from .models.sampler import StyleSampler

        StyleSampler.from_checkpoint(path)
    elif name.startswith("encoder"):
        from .models.psp import PSPEncoder

        PSPEncoder.from_checkpoint(path, space="w+" if "wplus" in name else "z+")
    elif name.startswith("generator"):
        from .checkpoints import load_dualstylegan

        load_dualstylegan(path)
    elif name.endswith(".safetensors"):
        from .checkpoints import read_safetensors

        read_safetensors(path, name)
    else:
        from .checkpoints import safe_torch_load

        safe_torch_load(path, f"the official {name}")


def _stream(url: str, f, size: int | None, name: str, progress: Progress | None) -> None:
    """Append the rest of ``url`` to the open ``.part`` file ``f`` (a Range request from its size)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    have = f.seek(0, os.SEEK_END)
    if size is not None and have > size:
        f.truncate(0)
        have = 0
    if size is not None and have == size:
        return
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # byte offsets must be offsets into the file itself
    if have:
        headers["Range"] = f"bytes={have}-"
    session = get_session()
    if callable(getattr(session, "stream", None)):  # httpx / httpx2: huggingface_hub >= 1.0
        response = session.stream("GET", url, headers=headers, follow_redirects=True, timeout=30)
        chunks = lambda r: r.iter_bytes(_CHUNK)  # noqa: E731
    else:  # requests: huggingface_hub 0.x, which ComfyUI installs with transformers < 5
        response = session.get(url, headers=headers, stream=True, allow_redirects=True, timeout=30)
        chunks = lambda r: r.iter_content(_CHUNK)  # noqa: E731
    with response as r:
        if r.status_code == 416:  # the .part is already whole (size unknown beforehand)
            return
        hf_raise_for_status(r)
        if r.status_code != 206:  # the server sent the whole file: start over
            f.truncate(0)
            have = 0
        try:
            for chunk in chunks(r):
                if size is not None and have + len(chunk) > size:
                    raise DownloadError(f"'{name}': the server sent more than the {size} bytes it announced")
                f.write(chunk)
                have += len(chunk)
                if progress is not None:
                    progress(name, have, size or have)
        finally:  # what arrived is kept for the next attempt
            f.flush()
            os.fsync(f.fileno())


def _lock(f, name: str) -> None:
    """One writer per ``.part`` (a CLI run and ComfyUI on the same folder): an exclusive
    ``flock`` on the file itself, so no lock file is left in the models folder."""
    try:
        import fcntl
    except ImportError:  # Windows: not guarded
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        raise DownloadError(f"'{name}' is being downloaded by another process; wait for it to finish") from None


def fetch_file(remote: RemoteFile, dest: Path, *, revision: str = "main", progress: Progress | None = None) -> Path:
    """One file into ``dest`` (resumed, checked, validated, renamed into place)."""
    hub = _hub()
    from .atomic import fsync_dir

    target = dest / remote.local
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = hub.hf_hub_url(REPO_ID, remote.path, revision=revision, endpoint=endpoint())
    meta = hub.get_hf_file_metadata(url)
    size = meta.size if meta.size is not None else remote.size
    checking = target.with_name(f".{target.stem}.pst-check{target.suffix}")
    with open(part, "ab") as f:  # never "wb": that would empty another writer's file before the lock
        _lock(f, remote.local)
        for attempt in range(_ATTEMPTS):
            try:
                _stream(url, f, size, remote.local, progress)
                break
            except Exception as exc:
                if not _is_network_error(exc) or attempt == _ATTEMPTS - 1:
                    raise
        have = f.seek(0, os.SEEK_END)
        if size is not None and have != size:
            raise DownloadError(f"'{remote.local}' stopped at {have} of {size} bytes; run the download again to "
                                f"resume it ('{part.name}' keeps what arrived)")
        etag = (meta.etag or "").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", etag) and _sha256(part) != etag:
            part.unlink()
            raise DownloadError(f"'{remote.local}' arrived damaged (its SHA-256 is not the Hub's); removed it, run "
                                f"the download again")
        # the loaders tell files apart by suffix: check under a hidden name that keeps it; renamed
        # while still locked, so no other writer appends to it meanwhile
        os.replace(part, checking)
    try:
        validate(checking, target.name)
    except PasticheError as exc:
        checking.unlink()
        raise DownloadError(f"the downloaded '{remote.local}' is not a valid {target.name}, removed it: {exc}") from None
    except BaseException:
        checking.unlink()
        raise
    os.replace(checking, target)
    fsync_dir(target.parent)
    return target


def missing_files(style: str, dest: str | os.PathLike) -> list[str]:
    """What the style needs and ``dest`` lacks (``.safetensors`` twins count), without the network."""
    from .pipeline import CheckpointPaths

    paths = CheckpointPaths.find(dest, style)
    need = {"generator": f"{style}/generator.pt", "encoder": "encoder.pt", "bank": f"{style}/exstyle_code.npy"}
    return [name for what, name in need.items() if getattr(paths, what) is None]


def download_style(style: str, dest: str | os.PathLike = "checkpoint", *, revision: str = "main",
                   progress: Progress | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Fetch the official files of ``style`` into the checkpoint folder ``dest`` (files already
    there are kept). Returns the files written. Raises :class:`DownloadError` (offline, not found,
    invalid file) with what to do by hand."""
    dest = Path(dest)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", style) or style.startswith("."):
        raise DownloadError(f"'{style}' is not a style name (official styles: {', '.join(OFFICIAL_STYLES)})")
    if _offline():
        raise DownloadError(f"HF_HUB_OFFLINE is set, so nothing is downloaded: {_by_hand(dest, style)}")
    _hub()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the models folder '{dest}': {exc.strerror or exc}") from None
    if not os.access(dest, os.W_OK):
        raise DownloadError(f"the models folder '{dest}' is not writable")
    for stale in dest.glob("**/.*.pst-check.*"):  # left by a run killed while validating
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:  # not one that a live run is checking now
                stale.unlink()
    written = []
    try:
        _probe(revision)
        todo = [f for f in list_style_files(style, revision=revision) if not (dest / f.local).is_file()]
        for f in todo:
            if log is not None:
                log(f"downloading {f.local}" + (f" ({f.size / 2 ** 20:.1f} MiB)" if f.size else ""))
            written.append(fetch_file(f, dest, revision=revision, progress=progress))
    except PasticheError:
        raise
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        hub = _hub()
        if isinstance(exc, hub.utils.RepositoryNotFoundError):
            reason = f"{REPO_ID} was not found at {endpoint()}"
        else:
            reason = f"cannot download from {endpoint()} ({_reason(exc)})"
        raise DownloadError(f"{reason}: {_by_hand(dest, style)}") from None
    return written
