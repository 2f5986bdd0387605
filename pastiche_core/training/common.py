"""Pieces every training stage shares: callbacks, results, inputs, and the style images."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..weight_files import first_existing  # noqa: F401 (re-exported)
from ..errors import CheckpointError, InputError

# progress(done_steps, total_steps, info) -- info has at least "loss" (float) and "stage"
Progress = Callable[[int, int, dict], None]
ShouldStop = Callable[[], bool]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class StageResult:
    stage: str
    steps_done: int
    total_steps: int
    stopped: bool
    checkpoint: Path | None
    outputs: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)  # in-memory results: "sampler" (StyleSampler), "bank" (StyleBank)

    @property
    def finished(self) -> bool:
        return not self.stopped and self.steps_done >= self.total_steps


def style_dir(checkpoints: str | os.PathLike, style: str | None) -> Path:
    """The folder with a style's files: ``DIR/<style>`` (official layout) or ``DIR`` itself."""
    root = Path(checkpoints)
    return root / style if style else root


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """Short sha256 of tensors' bytes (to refuse resuming on different data)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(t.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()[:16]


def derived_seed(seed: int, *parts) -> int:
    """A 63-bit seed from ``seed`` and labels (independent streams per image / per net)."""
    text = ":".join([str(int(seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def check_compatible(saved: Mapping, current: Mapping, keys: Sequence[str], path: Path) -> None:
    """Resume only with the settings the checkpoint was made with (those in ``keys``)."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"cannot resume from '{path}': it was made with other settings ({'; '.join(diffs)}); "
                              f"use the same options, or start afresh without --resume in a new --out folder")


def load_style_image(path: str | os.PathLike, size: int = 256) -> torch.Tensor:
    """A style image as the official scripts read it: RGB, ``Resize(size)``, ``CenterCrop(size)``,
    to ``[3, size, size]`` in [-1, 1]."""
    from ..faces.io import load_image, resize_center_crop

    rgb, _, _ = load_image(path)
    x = torch.from_numpy(resize_center_crop(rgb, size)).permute(2, 0, 1).float().div(255.0)
    return (x - 0.5) / 0.5


def find_style_images(data: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """The image file of every bank entry: ``DATA/<name>`` (the bank keys are file names)."""
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"--data '{folder}' is not a folder (expected the style images, e.g. data/<style>/images/train)")
    paths, missing = [], []
    for name in names:
        p = confined(folder, name, "style image named in the bank")
        (paths if p.is_file() else missing).append(p)
    if missing:
        shown = ", ".join(p.name for p in missing[:5])
        raise InputError(f"{len(missing)} of the {len(names)} style images named in the bank are not in '{folder}' "
                         f"(e.g. {shown}); --data must be the folder the bank was made from")
    return paths


def confined(folder: str | os.PathLike, name: str, what: str = "file") -> Path:
    """``folder/name`` for a name read from a file (a bank key): refused when it is absolute,
    has a ``..`` part, or leads through a linked folder outside ``folder``, so a crafted bank
    cannot make training read (or report on) files elsewhere. A file that is itself a symbolic
    link inside ``folder`` is fine (datasets are often linked)."""
    folder = Path(folder)
    text = str(name)
    parts = Path(text.replace("\\", "/")).parts
    if not text or "\x00" in text or Path(text).is_absolute() or text.startswith(("/", "\\")) or \
            ".." in parts or (len(text) > 1 and text[1] == ":"):
        raise InputError(f"{what} {text!r} is not a plain name inside '{folder}'; refusing a path outside --data")
    p = folder / text
    try:
        inside = p.parent.resolve().is_relative_to(folder.resolve())
    except OSError:
        inside = False
    if not inside:
        raise InputError(f"{what} {text!r} leads outside '{folder}'; refusing a path outside --data")
    return p


def pixel_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image L1 at full size and at 1/4 size -> ``[B]`` (the ``loss="pixel"`` fallback of the
    code-optimising stages, when no VGG19 file is at hand)."""
    full = (image - target).abs().mean(dim=(1, 2, 3))
    small = (F.avg_pool2d(image, 4) - F.avg_pool2d(target, 4)).abs().mean(dim=(1, 2, 3))
    return full + small


def to_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """Box-downsample ``[B, 3, H, H]`` to ``size`` (the official reshape-mean for integer factors)."""
    h = image.shape[-1]
    if h == size:
        return image
    if h % size:
        return F.adaptive_avg_pool2d(image, size)
    f = h // size
    b, c = image.shape[:2]
    return image.reshape(b, c, size, f, size, f).mean(dim=(3, 5))


__all__ = ["IMAGE_SUFFIXES", "pixel_loss", "to_size", "Progress", "ShouldStop", "StageResult", "check_compatible",
           "confined", "derived_seed", "find_style_images", "first_existing", "load_style_image", "style_dir",
           "tensor_fingerprint"]
