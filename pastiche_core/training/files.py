"""The official training files: what each stage reads and writes, found and checked up front.

Inputs are looked up, in order, in the run's output folder, the style folder
(``--checkpoints DIR/--style NAME``) and the checkpoints folder itself, so a chain of stages
writing into one folder finds each other's results, and the official layout
(``checkpoint/stylegan2-ffhq-config-f.pt``, ``checkpoint/<style>/finetune-000600.pt``...) works
unchanged. A missing file is an error naming it, what it is for and where it may go.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..checkpoints import (_load_strict, build_generator, check_generator_state, infer_stylegan2_config,
                           is_dualstylegan_state, is_stylegan2_state, safe_torch_load, save_generator_safetensors)
from ..atomic import atomic_write
from ..errors import CheckpointError
from .checkpointing import atomic_torch_save

from .inputs import ENCODER, PRETRAIN, STYLEGAN_FFHQ, find_in  # noqa: F401 (names re-exported: their old home)


def search_folders(out: str | os.PathLike | None, checkpoints: str | os.PathLike,
                   style: str | None) -> list[Path]:
    folders = [Path(out)] if out else []
    root = Path(checkpoints)
    if style:
        folders.append(root / style)
    folders.append(root)
    unique: list[Path] = []
    for f in folders:
        if f not in unique:
            unique.append(f)
    return unique


def find_file(name: str, folders: Sequence[Path], purpose: str) -> Path:
    """``name`` in the first folder that has it, else a :class:`CheckpointError` naming it."""
    return find_in(folders, name, purpose)


def starting_file(start: str | os.PathLike | None, inp, out, checkpoints, style: str | None) -> Path:
    """``start`` as given, else the :class:`~.inputs.Input` ``inp`` in the search folders."""
    return Path(start) if start else find_file(inp.name, search_folders(out, checkpoints, style), inp.what)


def latest_numbered(prefix: str, folders: Sequence[Path]) -> Path | None:
    """The highest ``PREFIX-NNNNNN.pt`` in the first folder that has one (e.g. finetune-000600.pt)."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.pt$")
    for folder in folders:
        if folder.is_dir():
            found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
            if found:
                return found[-1][1]
    return None


def read_training_file(path: Path, expected: str, required: Sequence[str]) -> dict:
    """A training checkpoint dict (weights-only load) that has the ``required`` entries."""
    def check(ckpt):  # generator entries: family and shapes checked before any weight is read
        if isinstance(ckpt, Mapping):
            for key in ("g_ema", "g"):
                state = ckpt.get(key)
                if key in required and isinstance(state, Mapping) and all(isinstance(k, str) for k in state):
                    if is_dualstylegan_state(state):
                        check_generator_state("dualstylegan", state, path)
                    elif is_stylegan2_state(state):
                        check_generator_state("stylegan2", state, path)

    obj = safe_torch_load(path, expected, check)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' is not {expected} (no dict inside)")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"'{path}' has no {', '.join(repr(k) for k in missing)} entr"
                              f"{'y' if len(missing) == 1 else 'ies'}; expected {expected}")
    return dict(obj)


def stylegan2_from_state(state: Mapping[str, torch.Tensor], path: Path, what: str):
    if not is_stylegan2_state(state):
        hint = " (it is a DualStyleGAN)" if is_dualstylegan_state(state) else ""
        raise CheckpointError(f"'{path}': {what} is not a StyleGAN2 generator state dict{hint}")
    return build_generator("stylegan2", state, path)


def discriminator_from_state(state: Mapping[str, torch.Tensor], size: int, path: Path):
    from ..models.discriminator import Discriminator

    if not isinstance(state, Mapping) or "final_linear.1.weight" not in state:
        raise CheckpointError(f"'{path}': 'd' is not a StyleGAN2 discriminator state dict")
    multiplier = 2
    first = state.get("convs.0.0.weight")
    if first is not None:
        from ..models.stylegan2 import channel_counts

        for m in (1, 2, 4):
            if channel_counts(m).get(size) == first.shape[0]:
                multiplier = m
                break
    d = Discriminator(size, multiplier)
    _load_strict(d, state, path, f"a {size}px StyleGAN2 discriminator (the 'd' of {STYLEGAN_FFHQ})")
    return d


def stylegan2_size(state: Mapping[str, torch.Tensor], path: Path) -> int:
    try:
        return int(infer_stylegan2_config(state)["size"])
    except KeyError as exc:
        raise CheckpointError(f"'{path}': cannot infer the generator size: {exc.args[0]}") from None


def save_generator_files(stem: Path, kind: str, state: Mapping[str, torch.Tensor], config: dict,
                         safetensors: bool = True) -> list[Path]:
    """``STEM.pt`` = ``{"g_ema": state}`` (official) and ``STEM.safetensors`` (ours), as one pair."""
    pt = stem.with_suffix(".pt")
    if not safetensors:
        atomic_torch_save({"g_ema": {k: v.detach().cpu() for k, v in state.items()}}, pt)
        return [pt]
    st = stem.with_suffix(".safetensors")
    save_generator_safetensors(st, kind, state, config, twin=pt)
    return [pt, st]


def link_into(src: Path, tmp: Path) -> None:
    """Fill the temporary file ``tmp`` with ``src``: a hard link (no second copy on disk), else a copy."""
    import shutil

    try:
        os.unlink(tmp)
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)


def link_or_copy(src: Path, dst: Path) -> Path:
    """``dst`` as a hard link to ``src`` (a copy where links are not possible), replacing it atomically."""
    return atomic_write(dst, lambda tmp: link_into(src, tmp))


__all__ = ["ENCODER", "PRETRAIN", "STYLEGAN_FFHQ", "discriminator_from_state", "find_file", "latest_numbered",
           "link_into", "link_or_copy", "read_training_file", "save_generator_files", "search_folders", "stylegan2_from_state",
           "stylegan2_size"]
