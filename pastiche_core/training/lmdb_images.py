"""Official lmdb training sets as ``--data``, beside folders of image files.

The format is the one ``prepare_data.py`` writes (DualStyleGAN's ``model/stylegan/`` copy of
rosinality's stylegan2-pytorch script; the official FFHQ and style datasets come this way): a
folder holding an lmdb environment (``data.mdb``, ``lock.mdb``) with

* ``b"length"``: the number of images, as decimal text;
* ``f"{size}-{index:05d}"`` (UTF-8) for every ``size`` given to its ``--size`` (default
  128,256,512,1024) and ``index`` in ``0 .. length-1`` (the sorted file order of the source
  folder): that image resized (shorter side) and centre-cropped to ``size`` x ``size``, stored
  as a JPEG of quality 100. The official ``MultiResolutionDataset`` decodes the record of the
  asked resolution and only flips and normalises it.

:class:`LmdbImageSet` reads one as :class:`~.gan.ImageSet` reads a folder. The environment is
opened once, read-only and without the lock file (``lock=False``: a dataset on a read-only disk
or shared between runs is never written to), and checked before training: ``length``, the
asked resolution (an error lists the resolutions it holds), its first and last records. Images
are streamed: only the records of a batch are read and decoded, never the whole database, and
each goes through the decoder image files go through (:func:`~..faces.io.load_image_bytes`:
the same format allow-list and pixel limit), so a hostile record is refused the same way a
hostile file is, with an error naming its key.

The ``lmdb`` package is optional (the ``train`` extra) and imported only when an lmdb is read.
"""
from __future__ import annotations

import os
import re
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InputError, PasticheError, short
from .gan import ImageSet

LMDB_INSTALL = 'pip install lmdb (or pip install -e ".[train]")'
LENGTH_KEY = b"length"
#: Keys a resolution listing looks at, at most: one per resolution found, one per other key.
MAX_LISTED_KEYS = 256


def lmdb_folder(path: str | os.PathLike | None) -> Path | None:
    """The lmdb folder ``path`` names (the folder holding ``data.mdb``, or that file itself),
    or ``None`` when it is no lmdb (a folder of image files, or nothing)."""
    if not path:
        return None
    p = Path(path)
    if p.name == "data.mdb" and p.is_file():
        return p.parent
    return p if p.is_dir() and (p / "data.mdb").is_file() else None


def open_images(data: str | os.PathLike, size: int, what: str = "--data") -> ImageSet:
    """``data`` as training images at ``size`` px: an lmdb made by ``prepare_data.py`` or a
    folder of image files; either streams its images one batch at a time."""
    folder = lmdb_folder(data)
    if folder is not None:
        return LmdbImageSet(folder, size, what)
    if not Path(data).is_dir():
        raise InputError(f"{what} '{data}' is not a folder (expected a folder of images, or an lmdb folder made "
                         f"by prepare_data.py, holding data.mdb)")
    return ImageSet(data, size, what)


def record_key(size: int, index: int) -> str:
    """The key of image ``index`` at ``size`` px (``prepare_data.py``: ``f"{size}-{str(i).zfill(5)}"``)."""
    return f"{int(size)}-{int(index):05d}"


def _import_lmdb(folder: Path, what: str):
    try:
        import lmdb
    except ImportError:
        raise InputError(f"{what} '{folder}' is an lmdb dataset; reading it needs the lmdb package: "
                         f"{LMDB_INSTALL}") from None
    return lmdb


class _SharedEnv:
    """An open read-only environment, shared by every reader of the same ``data.mdb`` in this
    process and closed when the last one is gone: lmdb opens an environment once per process
    (py-lmdb refuses a second open of the same files), and a stage may still hold its images
    when the next stage or a test opens them again."""

    def __init__(self, env):
        self.env = env

    def __del__(self):
        try:
            self.env.close()
        except Exception:  # interpreter shutdown
            pass


#: (st_dev, st_ino) of a data.mdb -> its open environment, while someone reads it.
_OPEN: weakref.WeakValueDictionary[tuple[int, int], _SharedEnv] = weakref.WeakValueDictionary()


def _open_env(lmdb, folder: Path) -> _SharedEnv:
    st = (folder / "data.mdb").stat()
    key = (st.st_dev, st.st_ino)
    shared = _OPEN.get(key)
    if shared is None:
        # readonly + lock=False: nothing is written next to the data (no lock.mdb), so a dataset
        # on a read-only disk or shared between runs works; readahead off as the official reader
        # (random access over a database larger than memory).
        shared = _SharedEnv(lmdb.open(str(folder), readonly=True, lock=False, readahead=False, meminit=False,
                                      subdir=True, max_readers=32))
        _OPEN[key] = shared
    return shared


def _describe(folder: Path) -> str:
    s = str(folder)
    return f"'{s}'" if len(s) <= 160 else f"'{s[:60]}...{s[-90:]}'"


class LmdbImageSet(ImageSet):
    """The images of an official lmdb at ``size`` px, with :class:`~.gan.ImageSet`'s interface
    (``len``, ``names``, ``load``, ``batch``); ``names`` are the record keys."""

    def __init__(self, folder: str | os.PathLike, size: int, what: str = "--data"):
        # Not ImageSet.__init__: there is no file index to build.
        self.folder = Path(folder)
        self.size = int(size)
        self.what = what
        self.where = f"lmdb {_describe(self.folder)}"
        lmdb = _import_lmdb(self.folder, what)
        try:
            self._shared = _open_env(lmdb, self.folder)
        except (lmdb.Error, OSError) as exc:
            raise InputError(f"{what} '{self.folder}' has a data.mdb that lmdb cannot open "
                             f"({short(str(exc), 200)}); expected an lmdb made by prepare_data.py") from None
        self.length = self._check()

    @property
    def env(self):
        """The open lmdb environment (shared with other readers of the same database)."""
        if self._shared is None:
            raise InputError(f"{self.what}: {self.where} was closed")
        return self._shared.env

    # -- checks made once, before training ---------------------------------------------------
    def _check(self) -> int:
        lmdb = _import_lmdb(self.folder, self.what)
        try:
            with self.env.begin(buffers=False) as txn:
                raw = txn.get(LENGTH_KEY)
                has_first = txn.get(record_key(self.size, 0).encode()) is not None
                entries = int(self.env.stat()["entries"])
            if raw is None:
                raise InputError(f"{self.what}: {self.where} has no 'length' record, so it was not made by "
                                 f"prepare_data.py (or its writing was interrupted before the end)")
            try:
                length = int(raw.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                raise InputError(f"{self.what}: {self.where} has a 'length' record that is not a number "
                                 f"({short(repr(raw[:40]), 60)})") from None
            if length < 1:
                raise InputError(f"{self.what}: {self.where} holds no images (length {length})")
            if length >= entries:  # every image has a record per resolution, besides 'length'
                raise InputError(f"{self.what}: {self.where} says it holds {length} images but has only "
                                 f"{entries - 1} image records")
            if not has_first:
                found = self.resolutions()
                held = ", ".join(f"{r} px" for r in found) if found else "none"
                raise InputError(f"{self.what}: {self.where} has no {self.size} px images (it holds: {held}); "
                                 f"this stage trains at {self.size} px: make the lmdb with prepare_data.py "
                                 f"--size {self.size}")
            last = record_key(self.size, length - 1)
            with self.env.begin(buffers=False) as txn:
                has_last = txn.get(last.encode()) is not None
            if not has_last:
                raise InputError(f"{self.what}: {self.where} says it holds {length} images but has no record "
                                 f"'{last}' (its last {self.size} px image)")
        except lmdb.Error as exc:
            raise InputError(f"{self.what}: {self.where} cannot be read ({short(str(exc), 200)})") from None
        return length

    def resolutions(self) -> list[int]:
        """The sizes of the records (``"<size>-<index>"`` keys), in a bounded walk: after the first
        key of a size the cursor jumps past all of that size's keys ('.' sorts right after '-')."""
        found: set[int] = set()
        with self.env.begin(buffers=False) as txn, txn.cursor() as cursor:
            more = cursor.first()
            for _ in range(MAX_LISTED_KEYS):
                if not more:
                    break
                m = re.fullmatch(rb"(\d{1,6})-\d+", cursor.key())
                if m:
                    found.add(int(m.group(1)))
                    more = cursor.set_range(m.group(1) + b".")
                else:
                    more = cursor.next()
        return sorted(found)

    # -- the ImageSet interface --------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    @property
    def names(self) -> list[str]:
        return [record_key(self.size, i) for i in range(self.length)]

    def select(self, names: Sequence[str]) -> None:
        raise InputError(f"{self.what}: {self.where} keeps no file names, and this stage pairs each image with the "
                         f"style code of its file name: give the folder of image files instead")

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 ``[3, size, size]``, read and decoded now."""
        from ..faces.io import load_image_bytes

        if not 0 <= int(i) < self.length:
            raise IndexError(f"image {i} of {self.length}")
        key = record_key(self.size, i)
        lmdb = _import_lmdb(self.folder, self.what)
        try:
            with self.env.begin(buffers=False) as txn:
                data = txn.get(key.encode())
        except lmdb.Error as exc:
            raise InputError(f"{self.what}: record '{key}' of {self.where} cannot be read "
                             f"({short(str(exc), 200)})") from None
        if data is None:
            raise InputError(f"{self.what}: {self.where} has no record '{key}' although it says it holds "
                             f"{self.length} images")
        try:
            rgb, _, _ = load_image_bytes(data, f"record '{key}' of {self.where}")
        except PasticheError as exc:
            raise InputError(f"{self.what}: {exc}") from None
        h, w = rgb.shape[:2]
        if (h, w) != (self.size, self.size):
            raise InputError(f"{self.what}: record '{key}' of {self.where} is a {w}x{h} px image; the records "
                             f"'{self.size}-...' of prepare_data.py are {self.size}x{self.size}")
        return torch.from_numpy(rgb).permute(2, 0, 1)

    def close(self) -> None:
        """Let go of the database (closed once no other reader in this process holds it)."""
        self._shared = None


__all__ = ["LENGTH_KEY", "LMDB_INSTALL", "LmdbImageSet", "lmdb_folder", "open_images", "record_key"]
