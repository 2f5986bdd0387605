"""IR-SE residual networks: the backbone of the pSp encoder and the ArcFace model of the ID loss.

Module attribute names reproduce the official state-dict keys (the ``model_irse`` /
``encoders/helpers`` layout of pSp and DualStyleGAN), so ``model_ir_se50.pth`` and the
``encoder.*`` part of the pSp checkpoints load with ``strict=True``:

* ``input_layer.{0,1,2}``: 3x3 conv (no bias), BatchNorm, PReLU;
* ``body.N``: one :class:`IRSEUnit` per unit, 24 for the 50-layer net, with
  ``shortcut_layer.{0,1}`` (1x1 conv + BN, only when the channel count changes) and
  ``res_layer.{0..5}`` (BN, 3x3 conv, PReLU, 3x3 conv with the stride, BN, SE with ``fc1``/``fc2``);
* ``output_layer.{0,3,4}`` (ArcFace only): BN, (dropout, flatten,) Linear to 512, BN1d.

Everything here is plain ``nn.Conv2d`` / ``nn.BatchNorm2d``: no equalised-lr scaling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

# Units per stage (depths 64, 128, 256, 512; first unit of each stage has stride 2).
STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_DEPTHS = (64, 128, 256, 512)


class SqueezeExcite(nn.Module):
    """Channel gate: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``. Keys ``fc1.weight``, ``fc2.weight``
    (1x1 convs without bias, ``C -> C/reduction -> C``)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class Subsample(nn.Module):
    """Identity shortcut taken every ``stride`` pixels (the official ``MaxPool2d(1, stride)``,
    which has no tensors)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class IRSEUnit(nn.Module):
    """Improved-residual unit with squeeze-excitation (the official ``bottleneck_IR_SE``).

    ``out = shortcut(x) + SE(BN(conv3x3_s(PReLU(conv3x3(BN(x))))))``; ``s`` is the stride.
    """

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcite(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(in_channels: int = 3) -> nn.Sequential:
    """Stem at full resolution: 3x3 conv to 64 (no bias), BN, PReLU (keys ``input_layer.{0,1,2}``)."""
    return nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def make_body(num_layers: int = 50) -> nn.Sequential:
    """The four IR-SE stages as one flat ``nn.Sequential`` (keys ``body.0`` ... ``body.23`` at 50)."""
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
    units = []
    in_ch = 64
    for n, depth in zip(STAGE_UNITS[num_layers], STAGE_DEPTHS):
        units.append(IRSEUnit(in_ch, depth, 2))
        units += [IRSEUnit(depth, depth, 1) for _ in range(n - 1)]
        in_ch = depth
    return nn.Sequential(*units)


class Backbone(nn.Module):
    """ArcFace IR-SE network of the ID loss: ``Backbone(input_size=112, num_layers=50, mode='ir_se')``.

    Loads ``model_ir_se50.pth`` (a bare state dict) with ``strict=True``. ``forward`` takes
    faces ``[B, 3, input_size, input_size]`` in [-1, 1] and returns L2-normalised 512-d
    embeddings ``[B, 512]``. Use it in eval mode (the official ID loss does).
    For a 256x256 aligned face use :func:`arcface_input` first (crop + pool to 112).
    """

    def __init__(self, input_size: int = 112, num_layers: int = 50, mode: str = "ir_se",
                 drop_ratio: float = 0.6, affine: bool = True):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size}")
        if mode != "ir_se":
            raise ValueError(f"only mode='ir_se' is implemented, got {mode!r}")
        self.input_size = input_size
        self.input_layer = make_input_layer(3)
        self.body = make_body(num_layers)
        side = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * side * side, 512),
            nn.BatchNorm1d(512, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise InputError(f"ArcFace input must be [B, 3, {self.input_size}, {self.input_size}] faces in [-1, 1], "
                             f"got {list(x.shape)} (use arcface_input() on 256x256 aligned faces)")
        x = self.body(self.input_layer(x))
        x = self.output_layer(x)
        return x / torch.norm(x, 2, 1, True)


IRSE50 = Backbone


def arcface_input(x256: torch.Tensor) -> torch.Tensor:
    """The official ID loss's view of an aligned 256x256 face: rows 35:223, columns 32:220
    (188x188 around the eyes, nose and mouth), average-pooled to 112x112."""
    if x256.ndim != 4 or tuple(x256.shape[-2:]) != (256, 256):
        raise InputError(f"expected [B, 3, 256, 256] aligned faces, got {list(x256.shape)}")
    return F.adaptive_avg_pool2d(x256[:, :, 35:223, 32:220], 112)
