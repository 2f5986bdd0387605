"""LPIPS (Zhang et al. 2018, v0.1, VGG variant): the perceptual distance of the official
destylize.py and refine_exstyle.py (``lpips.PerceptualLoss(model="net-lin", net="vgg")``).

For images ``x, y`` in [-1, 1] (``[B, 3, H, W]``):

1. the scaling layer: ``(x - shift) / scale`` per channel (shift -0.030, -0.088, -0.188; scale
   0.458, 0.448, 0.450: ImageNet statistics mapped to [-1, 1]);
2. VGG16 features (torchvision's ``vgg16().features``, ``vgg16-397923af.pth``) after relu1_2,
   relu2_2, relu3_3, relu4_3 and relu5_3 (modules ``[0:4]``, ``[4:9]``, ``[9:16]``, ``[16:23]``,
   ``[23:30]``);
3. each position's channel vector divided by its L2 norm (+ 1e-10);
4. the squared difference weighted per channel by the learned linear head of its layer (a 1x1
   conv to one channel, no bias; LPIPS v0.1 ``vgg.pth``), averaged over positions;
5. summed over the five layers -> one distance per image ``[B]``.

The heads ship with the package (``weights/lpips_vgg_v0.1.pth``, BSD-2-Clause, see
``weights/LPIPS_LICENSE.txt``): byte for byte the ``lpips`` package's ``weights/v0.1/vgg.pth``,
which the official repository ships too; the file is checked against its SHA-256 before it is
read. The VGG16 backbone is the user's (like VGG19): :func:`load_lpips` finds it with
:func:`~.losses.find_loss_network` and fails before training, naming the file, when it is
missing.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import safe_torch_load
from ..errors import CheckpointError
from .losses import VGG16_FILE, find_loss_network, vgg_layers

HEADS_FILE = Path(__file__).with_name("weights") / "lpips_vgg_v0.1.pth"
HEADS_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"
# torchvision's VGG16 'features' config: conv widths, "M" = max-pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# (start, end) module ranges ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_layers() -> nn.Sequential:
    """torchvision's ``vgg16().features`` up to relu5_3 (30 modules, the same indices)."""
    return vgg_layers(VGG16_CFG, LPIPS_SLICES[-1][1])


def vgg16_feature_shapes() -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the ``features.N.*`` tensors LPIPS uses (torchvision key names)."""
    with torch.device("meta"):
        return {f"features.{k}": tuple(v.shape) for k, v in vgg16_layers().state_dict().items()}


def heads_shapes() -> dict[str, tuple[int, ...]]:
    """The v0.1 heads file's keys (``linK.model.1.weight``: index 1 because a Dropout is module 0)."""
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(CHANNELS)}


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


def _check_state(state, shapes: dict, path, what: str) -> None:
    """Refuse a state dict without these keys/shapes (works on TensorMeta too); extra keys are fine."""
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a state dict (expected {what})")
    missing = [k for k in shapes if k not in state]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(s)})" for k, s in shapes.items()
             if k in state and tuple(state[k].shape) != tuple(s)]
    if missing or wrong:
        detail = (f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})" if missing
                  else f"tensors of the wrong shape: {'; '.join(wrong[:2])}")
        raise CheckpointError(f"'{path}' is not {what}: {detail}")


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG: ``forward(x, y) -> [B]`` distances for images in [-1, 1].

    For a fixed target, :meth:`features` once and :meth:`distance` per step gives the same
    values as ``forward``. Parameters never require grad; gradients flow to the inputs.
    """

    def __init__(self):
        super().__init__()
        self.features_net = vgg16_layers()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # the official heads' Dropout is inactive in eval; we have none

    def load_backbone(self, state: dict, path: str | os.PathLike = "<state dict>") -> "LPIPS":
        """torchvision's VGG16 state dict (``features.N.*``; ``classifier.*`` is ignored)."""
        shapes = {f"features.{k}": tuple(v.shape) for k, v in self.features_net.state_dict().items()}
        _check_state(state, shapes, path, f"torchvision's VGG16 state dict ({VGG16_FILE})")
        self.features_net.load_state_dict({k[len("features."):]: state[k].float() for k in shapes}, strict=True)
        return self

    def load_heads(self, state: dict, path: str | os.PathLike = "<state dict>") -> "LPIPS":
        """The LPIPS v0.1 VGG heads (``linK.model.1.weight``)."""
        shapes = heads_shapes()
        _check_state(state, shapes, path, "the LPIPS v0.1 VGG linear heads (vgg.pth)")
        for k, head in enumerate(self.heads):
            head.weight.copy_(state[f"lin{k}.model.1.weight"].float())
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised VGG16 activations of images ``x`` in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs [B, 3, H, W] images, got {list(x.shape)}")
        h = (x - self.shift.to(x)) / self.scale.to(x)
        out = []
        for start, end in LPIPS_SLICES:
            for i in range(start, end):
                h = self.features_net[i](h)
            out.append(_unit(h))
        return out

    def distance(self, fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor], per_layer: bool = False):
        """``[B]`` distances between :meth:`features` outputs (``per_layer``: the list of five terms)."""
        terms = [head((a - b).pow(2)).mean(dim=(1, 2, 3)) for head, a, b in zip(self.heads, fx, fy)]
        return terms if per_layer else sum(terms)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of one shape, got {list(x.shape)} and {list(y.shape)}")
        return self.distance(self.features(x), self.features(y))

    @classmethod
    def from_files(cls, backbone: str | os.PathLike, heads: str | os.PathLike = HEADS_FILE) -> "LPIPS":
        from ..safe_pickle import TensorMeta

        def check(state):  # keys and shapes before the 528 MB of weights are read
            if not isinstance(state, dict) or not all(isinstance(v, (torch.Tensor, TensorMeta)) for v in state.values()):
                raise CheckpointError(f"'{backbone}' is not a bare state dict of tensors (expected torchvision's "
                                      f"{VGG16_FILE})")
            _check_state(state, vgg16_feature_shapes(), backbone, f"torchvision's VGG16 state dict ({VGG16_FILE})")

        state = safe_torch_load(backbone, f"torchvision's VGG16 state dict ({VGG16_FILE})", check,
                                allow_namespace=False)
        return cls().load_backbone(state, backbone).load_heads(load_heads_file(heads), heads)


def load_heads_file(path: str | os.PathLike = HEADS_FILE) -> dict[str, torch.Tensor]:
    """The LPIPS v0.1 VGG heads. The file is a Python-2-era legacy pickle (str keys stored as
    byte strings, storages tagged 'cuda'), which only torch's own reader decodes as intended; it
    is read only when its SHA-256 is the one pinned here (a 7 KB file, hashing it is free)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the LPIPS heads '{path}' ({exc.strerror or exc}); reinstall pastiche")
    if hashlib.sha256(data).hexdigest() != HEADS_SHA256:
        raise CheckpointError(f"'{path}' is not the LPIPS v0.1 VGG heads file (SHA-256 mismatch); reinstall pastiche")
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    _check_state(state, heads_shapes(), path, "the LPIPS v0.1 VGG linear heads (vgg.pth)")
    return state


def load_lpips(folders: Sequence[str | os.PathLike] = (), *, purpose: str = "training",
               use_hub_cache: bool = True) -> LPIPS:
    """Find ``vgg16-397923af.pth`` (see :func:`~.losses.find_loss_network`) and build :class:`LPIPS`."""
    return LPIPS.from_files(find_loss_network("vgg16", folders, purpose=purpose, use_hub_cache=use_hub_cache))


__all__ = ["CHANNELS", "HEADS_FILE", "HEADS_SHA256", "LPIPS", "LPIPS_SLICES", "heads_shapes", "load_heads_file",
           "load_lpips", "vgg16_feature_shapes", "vgg16_layers"]
