"""Low-level StyleGAN2 ops: equalised layers, fused bias + leaky ReLU, FIR up/down-sampling.

Every hot op has two implementations (the layout of NVlabs' ``torch_utils/ops``):

* a **reference** path that follows the official computation literally (zero insertion,
  padding and a true convolution for ``upfirdn2d``; per-sample modulated weights folded into a
  grouped convolution), obviously right and used by the parity tests;
* a **fast** path that computes the same function with fewer passes over memory
  (transposed/strided convolutions instead of zero insertion, constants folded into weights,
  ``channels_last`` friendly).

``tests/test_ops.py`` holds the two equal for every op on each dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .derived import DerivedWeights
from .winograd import conv3x3_winograd, transform_weight, winograd_wins

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2


# --------------------------------------------------------------------------------------------
# Activation
# --------------------------------------------------------------------------------------------
def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, scale: float = SQRT2) -> torch.Tensor:
    """``scale * leaky_relu(x + bias, 0.2)``; ``bias`` is per channel (dim 1)."""
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.view(shape)
    return F.leaky_relu(x, LRELU_SLOPE) * scale


class FusedLeakyReLU(nn.Module):
    """Per-channel bias then ``sqrt(2) * leaky_relu(., 0.2)``. Key: ``bias``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class PixelNorm(nn.Module):
    """Normalise each feature vector to unit RMS over dim 1 (the 512 latent features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


# --------------------------------------------------------------------------------------------
# Equalised learning-rate layers
# --------------------------------------------------------------------------------------------
class EqualLinear(DerivedWeights):
    """Linear layer with run-time weight scaling ``lr_mul / sqrt(in)``.

    Stored ``weight [out, in]`` and ``bias [out]`` are the official tensors; ``activation``
    ``"fused_lrelu"`` adds the scaled bias inside the fused leaky ReLU. The scaled weight is
    kept where it needs no gradient (:class:`~.derived.DerivedWeights`): a forward pass runs
    some 30 of these 512x512 layers (mapping networks, colour transforms, modulations).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        weight = self.derived("scaled", self.weight, lambda w: w * self.scale)
        if self.activation:
            return fused_leaky_relu(F.linear(x, weight), bias)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(DerivedWeights):
    """Conv2d with run-time weight scaling ``1 / sqrt(in * k * k)``. Keys: ``weight``, ``bias``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.fast = True
        # Opt-in per layer (DualStyleGAN's ModRes blocks): Winograd on the shapes where it wins
        # on a CPU, with the thresholds of the modulated convolutions (stylegan2.ModulatedConv2d).
        self.winograd = False

    def use_winograd(self, x: torch.Tensor) -> bool:
        return (self.fast and self.winograd and self.stride == 1 and self.padding == 1
                and self.weight.shape[2:] == (3, 3) and winograd_wins(x, self.weight.shape[1], self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_winograd(x):
            u = self.derived("winograd", self.weight, transform_weight)
            scale = torch.full((u.shape[2],), self.scale, dtype=x.dtype, device=x.device)
            if not torch.is_grad_enabled():  # one batched matmul; sample by sample where gradients may
                return conv3x3_winograd(x, None, self.bias, transformed=u, out_scale=scale)  # flow (see stylegan2)
            outs = [conv3x3_winograd(x[b: b + 1], None, self.bias, transformed=u, out_scale=scale)
                    for b in range(x.shape[0])]
            return outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        # the scaled weight is kept where it needs no gradient (DerivedWeights): the ModRes convolutions
        # at 4-8 px would otherwise write a 9 MB weight on every call
        weight = self.derived("scaled", self.weight, lambda w: w * self.scale) if self.fast else self.weight * self.scale
        return F.conv2d(x, weight, self.bias, stride=self.stride, padding=self.padding)


# --------------------------------------------------------------------------------------------
# FIR filtering
# --------------------------------------------------------------------------------------------
def make_fir_kernel(taps=(1.0, 3.0, 3.0, 1.0), gain: float = 1.0) -> torch.Tensor:
    """Separable 2-D blur kernel: ``outer(k, k) / sum * gain`` (gain = up-factor**2 after up-sampling)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum() * gain


def upfirdn2d_reference(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
                        pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Literal upfirdn2d: zero-insert ``up``, pad ``(pad0, pad1)`` on both axes (negative crops),
    convolve every channel with ``kernel`` (true convolution: flipped), keep every ``down``-th
    sample. ``x`` is ``[B, C, H, W]``; output side ``(in*up + pad0 + pad1 - kh + down) // down``.
    """
    assert x.ndim == 4 and kernel.ndim == 2, (x.shape, kernel.shape)
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    pad0, pad1 = pad
    out = x.reshape(b * c, 1, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])
    out = out.reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)])
    out = out[:, :, max(-pad0, 0): out.shape[2] - max(-pad1, 0), max(-pad0, 0): out.shape[3] - max(-pad1, 0)]
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(out)
    out = F.conv2d(out, weight)
    out = out[:, :, ::down, ::down]
    return out.reshape(b, c, out.shape[2], out.shape[3])


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    kh, kw = kernel.shape
    return torch.flip(kernel, [0, 1]).to(like).view(1, 1, kh, kw).expand(channels, 1, kh, kw)


def blur_fast(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int],
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """upfirdn2d with up = down = 1, as one depthwise convolution (plus an optional per-channel
    bias, added for free by the convolution)."""
    pad0, pad1 = pad
    if pad0 != pad1:
        x = F.pad(x, [pad0, pad1, pad0, pad1])
        pad0 = 0
    return F.conv2d(x, _depthwise(kernel, x.shape[1], x), bias, padding=pad0, groups=x.shape[1])


def upsample2x_fast(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(up=2, pad=(2, 1)) with a symmetric 4x4 kernel, as a strided transposed
    depthwise convolution (no zero insertion): output exactly ``2H x 2W``."""
    assert kernel.shape == (4, 4), kernel.shape
    c = x.shape[1]
    return F.conv_transpose2d(x, _depthwise(kernel, c, x), stride=2, padding=1, groups=c)


class Blur(nn.Module):
    """FIR blur with fixed padding. Buffer key: ``kernel`` (saved in official checkpoints)."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(gain=upsample_factor ** 2))
        self.pad = pad
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return blur_fast(x, self.kernel, self.pad)
        return upfirdn2d_reference(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip. Buffer key: ``kernel`` (x4 gain)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        assert factor == 2, "the official generators only up-sample by 2"
        self.register_buffer("kernel", make_fir_kernel(gain=factor ** 2))
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return upsample2x_fast(x, self.kernel)
        return upfirdn2d_reference(x, self.kernel, up=2, pad=(2, 1))


def set_fast_path(module: nn.Module, enabled: bool) -> nn.Module:
    """Switch every op under ``module`` between its fast and its reference implementation."""
    for m in module.modules():
        if hasattr(m, "fast"):
            m.fast = enabled
    return module


# --------------------------------------------------------------------------------------------
# Up-sampling convolution (stride-2 transposed 3x3 conv + [1, 3, 3, 1] blur), phase-decomposed
# --------------------------------------------------------------------------------------------
# A stride-2 transposed convolution is four ordinary convolutions on the low-resolution input,
# one per output phase (row parity, column parity), interleaved. CPU libraries run transposed
# convolutions far below dense-convolution speed (oneDNN AVX2: ~3-4x slower per multiply-add),
# so computing the four phases as ONE dense convolution with 4 x C_out outputs and
# interleaving them (a pixel shuffle) is faster even though the phases share a 2x2 window
# (16 taps for the 9 of the 3x3 kernel: 1.8x the multiply-adds).
#
# 1-D, kernel taps w0 w1 w2, transposed output T (2H + 1 samples): T[2m] = x[m] w0 + x[m-1] w2
# and T[2m+1] = x[m] w1. With the input padded by one on each side, the 2-tap window at m sees
# (x[m-1], x[m]): even phase taps (w2, w0), odd phase taps (0, w1), H + 1 positions, i.e.
# 2H + 2 samples of which the last is T[2H + 1] = 0 -- so the blur's (1, 1) padding of the
# 2H + 1 official samples is a (1, 0) padding of ours.

def upconv_phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """Conv weights ``[..., O, I, 3, 3]`` -> phase weights ``[..., 4 * O, I, 2, 2]`` for
    :func:`upconv_phase` (output channel ``(ry * 2 + rx) * O + o``: phase-major, so that a
    ``channels_last`` result interleaves by whole pixels)."""
    assert weight.shape[-2:] == (3, 3), weight.shape
    taps = [[2, 0], [None, 1]]  # phase r: low-res tap t (0: x[m-1], 1: x[m]) -> kernel index
    zero = torch.zeros_like(weight[..., :1, :1])
    phases = []
    for ry in (0, 1):
        for rx in (0, 1):
            rows = []
            for ty in taps[ry]:
                cols = [zero if ty is None or tx is None else weight[..., ty: ty + 1, tx: tx + 1] for tx in taps[rx]]
                rows.append(torch.cat(cols, -1))
            phases.append(torch.cat(rows, -2))
    return torch.cat(phases, -4)


def interleave_phases(y: torch.Tensor) -> torch.Tensor:
    """``[B, 4 * C, h, w]`` phase-major channels -> ``[B, C, 2h, 2w]`` (a pixel shuffle for
    phase-major channel order), keeping ``y``'s memory format."""
    b, c4, h, w = y.shape
    c = c4 // 4
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        nhwc = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, c)
        out = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)
        return out.permute(0, 3, 1, 2)
    out = y.reshape(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return out.reshape(b, c, 2 * h, 2 * w)


def upconv_phase(x: torch.Tensor, phase_weight: torch.Tensor, kernel: torch.Tensor,
                 bias: torch.Tensor | None = None, out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``blur(conv_transpose2d(x, W, stride=2), kernel, pad=(1, 1))`` (+ per-channel bias) for a
    3x3 ``W``, given ``phase_weight = upconv_phase_kernels(W)`` (``[4 * O, I, 2, 2]``): one dense
    convolution, a phase interleave and the blur. ``out_scale`` ``[B, O]`` scales each sample's
    output channels before the blur (the demodulation of a shared weight).
    ``[B, I, H, W]`` -> ``[B, O, 2H, 2W]``."""
    b, _, h, w = x.shape
    o = phase_weight.shape[0] // 4
    assert phase_weight.shape[1:] == (x.shape[1], 2, 2) and phase_weight.shape[0] == 4 * o, (phase_weight.shape, x.shape)
    y = F.conv2d(x, phase_weight, padding=1)                           # [B, 4 * O, H + 1, W + 1]
    if out_scale is not None:
        y = y.mul_(out_scale.to(y.dtype).repeat(1, 4)[:, :, None, None])
    out = blur_fast(interleave_phases(y), kernel, (1, 0), bias)        # [B, O, 2H + 2, 2W + 2] -> 2H x 2W
    assert out.shape == (b, o, 2 * h, 2 * w), (out.shape, x.shape)
    return out
