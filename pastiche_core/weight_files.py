"""The files weights come in, read and written safely: the guarded ``torch.load``
(:func:`safe_torch_load`), safetensors with a checked header (:func:`read_safetensors`), and
the metadata keys of our own safetensors format.

Below :mod:`pastiche_core.models` (which reads its checkpoint files through it) and
:mod:`pastiche_core.checkpoints` (which builds the generators), so neither imports the other
back.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .errors import CheckpointError, short

FORMAT_KEY = "pastiche.format"
MODEL_KEY = "pastiche.model"
CONFIG_KEY = "pastiche.config"
FORMAT_VERSION = "1"


def first_existing(folder: str | os.PathLike, stems, suffixes) -> Path | None:
    """The first ``folder/<stem><suffix>`` file that exists, trying stems in order, then suffixes.

    A ``.safetensors`` written together with its ``.pt``/``.npy`` twin is skipped when that twin
    has changed since (replaced by another tool, or a crash between the two renames): the
    stale copy must not win over the file next to it."""
    for stem in stems:
        for suffix in suffixes:
            p = Path(folder) / f"{stem}{suffix}"
            if p.is_file():
                if suffix == ".safetensors":
                    from .atomic import twin_is_stale

                    twin = twin_is_stale(p)
                    if twin is not None:
                        warnings.warn(f"'{p}' is older than '{twin.name}' next to it; using '{twin.name}'",
                                      stacklevel=2)
                        continue
                return p
    return None


def _describe(path: Path) -> str:
    return f"'{path}'"


def safe_torch_load(path: str | os.PathLike, expected: str, check=None, *, allow_namespace: bool = True,
                    mmap: bool = True, reader: str = "auto") -> object:
    """Read a ``.pt``/``.pth`` the way ``torch.load(map_location='cpu', weights_only=True)`` would,
    after walking its pickle with the caps and allow-list of :mod:`pastiche_core.safe_pickle`.

    expected: what the file should be, for messages (e.g. "a DualStyleGAN generator.pt").
    check: called with the walked object (tensors as :class:`~pastiche_core.safe_pickle.TensorMeta`)
    before any tensor data is read, to refuse wrong shapes before they are allocated.
    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or
    non-PyTorch file, or one that holds objects other than tensors and plain containers.
    ``argparse.Namespace`` (the 'args' entry of official training checkpoints) is a plain
    attribute bag and allowed unless ``allow_namespace=False``.
    """
    from .safe_pickle import load_torch_file

    return load_torch_file(path, expected, allow_namespace=allow_namespace, check=check, mmap=mmap, reader=reader)


def read_safetensors(path: str | os.PathLike, expected: str, check=None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with clear errors.

    The header is parsed and every entry checked against the file size first; ``check(metas,
    metadata)`` (tensors as :class:`~pastiche_core.safe_pickle.TensorMeta`) can refuse the file
    before any tensor is read."""
    from safetensors import safe_open

    from .safe_pickle import read_safetensors_header

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{_describe(path)} does not exist (expected {expected})")
    metas, meta = read_safetensors_header(path, expected)
    if check is not None:
        check(metas, meta)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # the header was checked; this is I/O or a library-level refusal
        raise CheckpointError(f"{_describe(path)} is not a readable safetensors file ({short(str(exc), 200)}); "
                              f"expected {expected}") from None
    return tensors, meta


__all__ = ["CONFIG_KEY", "FORMAT_KEY", "FORMAT_VERSION", "MODEL_KEY", "first_existing", "read_safetensors",
           "safe_torch_load"]
