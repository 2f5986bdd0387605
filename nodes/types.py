"""Custom socket types and the Python objects that travel on them (never serialised)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io

#: a loaded style: generator, encoders, style bank, sampler (see models.DualStyleGANBundle)
DualStyleGANModel = io.Custom("DUALSTYLEGAN_MODEL")
#: one or more extrinsic style codes (z+), see StyleCodes
DualStyleGANStyle = io.Custom("DUALSTYLEGAN_STYLE")
#: one or more sets of per-layer weights (+ preserve colour), see LayerWeights
DualStyleGANWeights = io.Custom("DUALSTYLEGAN_WEIGHTS")
#: where each aligned crop came from, for paste-back, see FaceInfo
PasticheFaces = io.Custom("PASTICHE_FACES")


@dataclass
class StyleCodes:
    """Extrinsic style codes in z+ (bank space): ``latent`` float32 CPU ``[N, n_latent, 512]``."""

    latent: Any
    names: list[str]
    source: str  # "bank", "exemplar", "sampler", "interpolation"
    style: str = ""  # the model style they belong to

    def __len__(self) -> int:
        return int(self.latent.shape[0])


@dataclass
class LayerWeights:
    """``sets``: one tuple of 18 per-layer weights per entry (0-6 structure, 7-17 colour);
    ``preserve_color``: one flag per entry (official --preserve_color)."""

    sets: list[tuple[float, ...]]
    preserve_color: list[bool]
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sets)


@dataclass
class FaceInfo:
    """``image_sizes[b]`` = (H, W) of photo b; ``faces[i]`` = (b, AlignedFace) of crop i."""

    image_sizes: list[tuple[int, int]]
    faces: list[tuple[int, Any]]
    crop_size: int = 256

    def __len__(self) -> int:
        return len(self.faces)
