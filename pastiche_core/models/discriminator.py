"""The StyleGAN2 residual discriminator (rosinality's ``Discriminator(size, channel_multiplier)``),
the ``d`` of ``stylegan2-ffhq-config-f.pt`` and of ``generator-pretrain.pt``.

Key names and order match the official state dict (``manifests/discriminator_1024.json``):
``convs.0`` (1x1 from RGB), ``convs.1..`` residual blocks that halve the resolution down to
4x4, then the minibatch-stddev feature, ``final_conv`` and ``final_linear``. Down-sampling is
the FIR blur followed by a stride-2 convolution, as in the official code.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops import Blur, EqualConv2d, EqualLinear, FusedLeakyReLU
from .stylegan2 import channel_counts


def conv_layer(in_channels: int, out_channels: int, kernel_size: int, *, downsample: bool = False,
               bias: bool = True, activate: bool = True) -> nn.Sequential:
    """``[Blur] + EqualConv2d [+ FusedLeakyReLU]`` with the official padding; the Sequential
    indices give the official keys (``0.kernel``, ``1.weight``, ``2.bias`` when down-sampling)."""
    layers: list[nn.Module] = []
    if downsample:
        p = (4 - 2) + (kernel_size - 1)  # 4-tap FIR, factor 2
        layers.append(Blur(((p + 1) // 2, p // 2)))
        stride, padding = 2, 0
    else:
        stride, padding = 1, kernel_size // 2
    layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              bias=bias and not activate))
    if activate:
        layers.append(FusedLeakyReLU(out_channels) if bias else nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second halves the resolution) plus a blurred 1x1 skip, summed / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_layer(in_channels, in_channels, 3)
        self.conv2 = conv_layer(in_channels, out_channels, 3, downsample=True)
        self.skip = conv_layer(in_channels, out_channels, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """``Discriminator(size, channel_multiplier=2)``: image ``[B, 3, size, size]`` -> logits ``[B, 1]``.

    The minibatch-stddev feature groups ``min(B, 4)`` samples, so ``B`` must be a multiple of
    ``min(B, 4)`` (as in the official code).
    """

    stddev_group = 4
    stddev_feat = 1

    def __init__(self, size: int, channel_multiplier: int = 2):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"discriminator size must be a power of two >= 8, got {size}")
        ch = channel_counts(channel_multiplier)
        self.size, self.channel_multiplier = size, channel_multiplier
        convs: list[nn.Module] = [conv_layer(3, ch[size], 1)]
        in_ch = ch[size]
        for i in range(log_size, 2, -1):
            out_ch = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.final_conv = conv_layer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
                                          EqualLinear(ch[4], 1))

    @property
    def config(self) -> dict:
        return {"size": self.size, "channel_multiplier": self.channel_multiplier}

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        """Append the std over groups of samples, averaged over features and pixels, as one channel."""
        b, c, h, w = x.shape
        group = min(b, self.stddev_group)
        if b % group:
            raise ValueError(f"the discriminator batch ({b}) must be a multiple of {group} (its stddev group)")
        y = x.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        return torch.cat([x, y.repeat(group, 1, h, w)], 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"the {self.size}px discriminator takes [B, 3, {self.size}, {self.size}] images, "
                             f"got {list(image.shape)}")
        out = self.minibatch_stddev(self.convs(image))
        out = self.final_conv(out)
        return self.final_linear(out.flatten(1))


__all__ = ["Discriminator", "ResBlock", "conv_layer"]
