"""StyleGAN2 generator (rosinality layout, as vendored by the official DualStyleGAN code).

Module attribute names reproduce the official state-dict keys (``style.1.weight``,
``convs.3.conv.modulation.bias``, ``noises.noise_5`` ...), so an official ``g_ema`` state dict
loads with ``strict=True``. Shapes in docstrings: ``B`` batch, ``n`` = ``n_latent``
(``2*log2(size) - 2``: 14 at 256, 18 at 1024), ``D`` = ``style_dim`` (512).

Latent spaces:

* ``z``  ``[B, D]``     -- input of the mapping network;
* ``z+`` ``[B, n, D]``  -- one z per layer, mapped row by row (DualStyleGAN's encoder space);
* ``w``  ``[B, D]``     -- output of the mapping network, broadcast to every layer;
* ``w+`` ``[B, n, D]``  -- one w per layer (what the synthesis network consumes).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import LRELU_SLOPE, SQRT2, Blur, EqualLinear, FusedLeakyReLU, PixelNorm, Upsample, blur_fast, \
    set_fast_path, upconv_phase, upconv_phase_kernels
from .bands import blocks_in_bands
from .workers import worker_count
from .derived import DerivedWeights
from .winograd import conv3x3_winograd, transform_weight, winograd_wins

# Fast-path implementations of the up-sampling modulated convolution (transposed conv + blur):
# "transposed": the library's stride-2 transposed convolution then the blur;
# "phase": one dense convolution computing the four output phases (ops.upconv_phase).
# Which is faster depends on the library's kernels for the CPU/GPU at hand: see
# benchmarks/bench_generator.py (paths "fast" and "fast-phase").
UPSAMPLE_IMPLS = ("transposed", "phase")
DEFAULT_UPSAMPLE_IMPL = "transposed"

# Noise argument of the generators: "stored" (the checkpoint's buffers, deterministic),
# "random" (fresh N(0, 1) maps, from ``generator`` if given), or one tensor per layer
# (``[1 or B, 1, r, r]``; None entries are drawn at random).
NoiseSpec = str | Sequence[torch.Tensor | None]


def channel_counts(channel_multiplier: int = 2) -> dict[int, int]:
    """Feature channels per resolution of the official generators."""
    m = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * m, 128: 128 * m, 256: 64 * m,
            512: 32 * m, 1024: 16 * m, 2048: 8 * m}


def mapping_network(n_mlp: int, style_dim: int = 512, lr_mul: float = 0.01) -> nn.Sequential:
    """PixelNorm + ``n_mlp`` equalised linears with fused leaky ReLU (keys ``1..n_mlp``)."""
    layers: list[nn.Module] = [PixelNorm()]
    layers += [EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activation="fused_lrelu") for _ in range(n_mlp)]
    return nn.Sequential(*layers)


def map_rows(mapping: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Apply a per-vector MLP to ``[..., D]`` codes (a z+ code maps row by row into w+)."""
    return mapping(codes.reshape(-1, codes.shape[-1])).reshape(codes.shape)


class ModulatedConv2d(DerivedWeights):
    """Style-modulated convolution. Keys: ``weight [1, out, in, k, k]``, ``modulation.*``,
    ``blur.kernel`` (up-sampling only).

    Per sample b: ``W_b = weight * modulation(w_b) / sqrt(in*k*k)`` (scaling input channels),
    demodulated per output channel when ``demodulate``. Up-sampling: stride-2 transposed conv
    then a [1, 3, 3, 1] blur, giving exactly ``2H x 2W``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            p = (4 - 2) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.fast = True
        self.upsample_impl = DEFAULT_UPSAMPLE_IMPL
        self.winograd = True

    def modulated_weight(self, style: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """``[B, D]`` styles -> per-sample weights ``[B, out, in, k, k]`` (demodulated, times gain)."""
        s = self.modulation(style)
        weight = self.weight * (self.scale * s)[:, None, :, None, None]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * (demod * gain if gain != 1.0 else demod)[:, :, None, None, None]
        elif gain != 1.0:
            weight = weight * gain
        return weight

    def modulated_weight_fast(self, style: torch.Tensor, gain: float = 1.0, transposed: bool = False) -> torch.Tensor:
        """:meth:`modulated_weight` in one pass over the weight: the demodulation is
        ``rsqrt(sum_i s_i^2 * sum_kk w_oikk^2)``, the same sum regrouped, so the ``[B, out, in]``
        factor is built first and multiplied in once (the literal form takes four passes over a
        2.4M-element tensor per 512-channel layer). ``transposed``: laid out ``[B, in, out, k, k]``,
        as a transposed convolution takes it (made in that layout from the kept
        :meth:`transposed_weight`, not copied into it on every call)."""
        s, d = self.activation_scales(style, gain)                            # [B, in], [B, out]
        if transposed:
            return self.transposed_weight() * (s[:, :, None] * d[:, None, :])[..., None, None]
        return self.weight * (d[:, :, None] * s[:, None, :])[..., None, None]

    def transposed_weight(self) -> torch.Tensor:
        """The shared weight as ``[in, out, k, k]``, contiguous (kept: :class:`~.derived.DerivedWeights`)."""
        return self.derived("transposed", self.weight[0], lambda w: w.transpose(0, 1).contiguous())

    def weight_square_sums(self) -> torch.Tensor:
        """``sum over the kernel of weight^2``, ``[out, in]`` (kept: :class:`~.derived.DerivedWeights`)."""
        return self.derived("square_sums", self.weight[0], lambda w: w.pow(2).sum([2, 3]))

    # Batches at or below this many output pixels run as one shared-weight convolution with the
    # style applied to the activations (one big GEMM beats B small ones); above it, per sample.
    BATCHED_MAX_PIXELS = 64 * 64

    def use_batched(self, x: torch.Tensor) -> bool:
        """The shared-weight form (style on the activations): for batches of small maps, and for
        one sample wherever scaling the input and output maps touches fewer values than building
        the modulated weight (the coarse 512-channel layers)."""
        side = x.shape[-1] * (2 if self.upsample else 1)
        if x.shape[0] > 1:
            return side * side <= self.BATCHED_MAX_PIXELS
        maps = x.shape[-1] * x.shape[-2] * self.in_channels + side * side * self.out_channels
        return maps < self.in_channels * self.out_channels * self.kernel_size ** 2

    def activation_scales(self, style: torch.Tensor, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The modulated weight regrouped as ``W_b = diag(out_b) W diag(in_b)``: (``in [B, in]``,
        ``out [B, out]``), so the shared weight ``W`` is applied to ``x * in_b`` and the result
        scaled by ``out_b`` (demodulation times ``gain``)."""
        s = self.modulation(style) * self.scale                      # [B, in]
        if self.demodulate:
            scale = torch.rsqrt((s * s) @ self.weight_square_sums().t() + 1e-8) * gain   # [B, out]
        else:
            scale = torch.full_like(s[:, :1], gain).expand(-1, self.out_channels)
        return s, scale

    # Winograd F(4x4, 3x3) (models/winograd.py) replaces the direct convolution of the dense
    # 3x3 layers with at least this many input channels and this output side, on CPU, in
    # float32/float64. Measured at batch 1 on 2 threads of an AVX-512 CPU against oneDNN's
    # direct convolution (channels last): 512 ch at 16/32/64 px 4.3/10/36-45 ms vs 7.1/23/89,
    # 256 ch at 128 px 51-60 vs 85 (inside the whole model, its input no longer in cache, 85 vs
    # 88 on 2 threads, 130-150 vs 185-250 on one). With fewer channels its transforms (memory-bound, 2.25x the
    # input) cost more than the GEMM saves: 128 ch at 256 px 70-100 vs 90-100 (a tie), 64 ch at
    # 512 px 180 vs 110. On the smallest maps the transformed weight (4x the weight) is read
    # for too few tiles: 512 ch at 4/8 px 3.5/6.4 ms vs 2.1/4.6 (one thread).
    # The thresholds are winograd.MIN_CHANNELS and winograd.MIN_SIDE.

    def use_winograd(self, x: torch.Tensor) -> bool:
        """Whether this call's convolution runs by Winograd (see the measurements above, and
        :func:`~.winograd.winograd_wins`)."""
        return (self.winograd and not self.upsample and self.kernel_size == 3
                and winograd_wins(x, self.in_channels, self.weight))

    def route(self, x: torch.Tensor) -> str:
        """How the fast path runs this call: ``"winograd"`` on the layers where it wins (all the
        samples' tiles in one batched matmul: at 16-64 px and 512 channels 1.9-2.3x faster per
        image than the shared-weight direct convolution at batch 4 and 16); else ``"batched"``
        (the shared weight with the style on the maps) for batches of small maps and one sample
        of a coarse layer; else ``"per_sample"`` (one modulated weight per sample)."""
        if self.use_winograd(x):
            return "winograd"
        return "batched" if self.use_batched(x) else "per_sample"

    def conv_winograd(self, x: torch.Tensor, style: torch.Tensor, gain: float = 1.0,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """The per-sample modulated convolution (dense 3x3) by Winograd: the shared weight's kept
        transform, each sample's style on its maps, all samples' tiles in one batched matmul."""
        s, scale = self.activation_scales(style, gain)
        u = self.derived("winograd", self.weight[0], transform_weight)
        if not torch.is_grad_enabled():
            return conv3x3_winograd(x, None, bias, transformed=u, in_scale=s, out_scale=scale)
        # Where gradients may flow, sample by sample as before batches shared the matmul: the
        # refinement stages amplify rounding (one ulp in a gradient moves codes by 1e-2 six
        # steps on), and a state written by earlier code must resume as it would have there.
        outs = [conv3x3_winograd(x[b: b + 1], None, bias, transformed=u, in_scale=s[b], out_scale=scale[b])
                for b in range(x.shape[0])]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def conv_batched(self, x: torch.Tensor, style: torch.Tensor, gain: float = 1.0,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        """Fast path for batches: ``conv(x * s, W) * demod`` with the weight shared by the batch
        (the same function as per-sample modulated weights, regrouped)."""
        s, scale = self.activation_scales(style, gain)
        w = self.weight[0]                                            # [out, in, k, k]
        x = x * s[:, :, None, None].to(x.dtype)
        if self.upsample and self.upsample_impl == "phase":
            out = None  # the phase convolution runs below, with the blur
        elif self.upsample:
            out = F.conv_transpose2d(x, self.transposed_weight(), stride=2)
        else:
            out = F.conv2d(x, w, padding=self.padding)
        if out is None:
            return upconv_phase(x, upconv_phase_kernels(w), self.blur.kernel, bias, out_scale=scale)
        if self.upsample:  # the blur is linear and per channel: scale before it, bias inside it
            return blur_fast(out * scale[:, :, None, None], self.blur.kernel, self.blur.pad, bias)
        out = out * scale[:, :, None, None]
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    def conv_per_sample(self, x: torch.Tensor, style: torch.Tensor, gain: float = 1.0,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
        """Fast path: one dense convolution per sample with its modulated weight (no grouped conv,
        no zero insertion)."""
        transposed = self.upsample and self.upsample_impl == "transposed"
        weight = self.modulated_weight_fast(style, gain, transposed=transposed)
        outs = []
        for b in range(x.shape[0]):
            xb, wb = x[b: b + 1], weight[b]
            if self.upsample and self.upsample_impl == "phase":
                ob = upconv_phase(xb, upconv_phase_kernels(wb), self.blur.kernel, bias)
            elif self.upsample:
                ob = blur_fast(F.conv_transpose2d(xb, wb, stride=2), self.blur.kernel, self.blur.pad, bias)
            else:
                ob = F.conv2d(xb, wb, bias, padding=self.padding)
            outs.append(ob)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def forward_reference(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The official computation: batch folded into groups of one grouped convolution."""
        b, c, h, w = x.shape
        weight = self.modulated_weight(style)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, self.out_channels, self.kernel_size, self.kernel_size)
            out = F.conv_transpose2d(x.reshape(1, b * c, h, w), weight, stride=2, groups=b)
            out = out.view(b, self.out_channels, out.shape[-2], out.shape[-1])
            return self.blur(out)
        weight = weight.reshape(b * self.out_channels, c, self.kernel_size, self.kernel_size)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, self.out_channels, h, w)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (x.shape, self.in_channels)
        assert style.ndim == 2 and style.shape[0] == x.shape[0], (style.shape, x.shape)
        if not self.fast:
            return self.forward_reference(x, style)
        route = self.route(x)
        if route == "batched":
            return self.conv_batched(x, style)
        if route == "winograd":
            return self.conv_winograd(x, style)
        return self.conv_per_sample(x, style)


class NoiseInjection(nn.Module):
    """``x + weight * noise``. Key: ``weight [1]``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 start tensor. Key: ``input [1, C, 4, 4]``."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + leaky ReLU (keys ``conv.*``, ``noise.weight``, ``activate.bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)
        self.fast = True

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x ``[B, in, H, W]``, style ``[B, D]``, noise ``[1 or B, 1, H', W']`` -> ``[B, out, H', W']``."""
        if not self.fast:
            return self.activate(self.noise(self.conv.forward_reference(x, style), noise))
        # sqrt(2) * lrelu(y) == lrelu(sqrt(2) * y): fold the gain into the weights, the bias and
        # the noise strength, so the activation is a single in-place pass.
        route = self.conv.route(x)
        if route == "batched":
            out = self.conv.conv_batched(x, style, SQRT2, self.activate.bias * SQRT2)
        elif route == "winograd":
            out = self.conv.conv_winograd(x, style, SQRT2, self.activate.bias * SQRT2)
        else:
            out = self.conv.conv_per_sample(x, style, SQRT2, self.activate.bias * SQRT2)
        out = out.addcmul_(noise.to(out.dtype), self.noise.weight * SQRT2)
        return F.leaky_relu_(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, plus the up-sampled previous skip.
    Keys: ``bias [1, 3, 1, 1]``, ``conv.*``, ``upsample.kernel``."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator: ``Generator(size, style_dim=512, n_mlp=8, channel_multiplier=2)``.

    ``forward`` maps and broadcasts the intrinsic code (:meth:`make_latent`) and synthesises
    an image ``[B, 3, size, size]`` (raw, roughly in [-1, 1], not clamped).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"generator size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier = channel_multiplier
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        self.channels = channels = channel_counts(channel_multiplier)
        self.channels_last = False
        self.bands = True

        self.style = mapping_network(n_mlp, style_dim)
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], 3, style_dim)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty in the official model too; kept for parity
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = channels[4]
        for i in range(3, log_size + 1):
            out_ch = channels[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch

    # -- configuration -----------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier}

    def use_fast_path(self, enabled: bool = True, channels_last: bool | None = None,
                      upsample: str | None = None, winograd: bool | None = None,
                      bands: bool | None = None) -> "Generator":
        """Fast ops (default) or the literal reference ops everywhere in this model;
        ``channels_last`` runs the feature maps in NHWC (faster with oneDNN/cuDNN); ``upsample``
        picks the fast up-sampling convolution (one of :data:`UPSAMPLE_IMPLS`); ``winograd``
        lets the fast path use Winograd convolutions on the layers where they win on a CPU
        (:meth:`ModulatedConv2d.use_winograd`); ``bands`` lets it run the large blocks band by
        band on a CPU (:meth:`use_bands`)."""
        set_fast_path(self, enabled)
        if channels_last is not None:
            self.channels_last = channels_last
        if bands is not None:
            self.bands = bool(bands)
        if upsample is not None:
            if upsample not in UPSAMPLE_IMPLS:
                raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_IMPLS)}, got {upsample!r}")
            for m in self.modules():
                if isinstance(m, ModulatedConv2d):
                    m.upsample_impl = upsample
        if winograd is not None:
            for m in self.modules():
                if isinstance(m, ModulatedConv2d):
                    m.winograd = bool(winograd)
        return self

    # oneDNN's NHWC kernels win on large feature maps, NCHW on the small 512-channel ones
    # (measured on a 2-core AVX2 CPU): switch at this resolution.
    CHANNELS_LAST_FROM = 64

    def start(self, batch: int) -> torch.Tensor:
        """The constant input for the batch: one tensor broadcast (a view, no copy per sample)."""
        return self.input.input.expand(batch, -1, -1, -1)

    # On a CPU's fast path a batch runs together up to this output side (its small layers are
    # one big GEMM per layer, which two threads share well) and then one sample at a time: the
    # large layers cost the same per sample either way, and one sample's feature maps (134 MB
    # per buffer at 1024 px) keep the peak memory of a batch near that of one image. Measured
    # at 1024 px, batch 4, against the whole batch in every layer: 1.15x less CPU time per image
    # on one thread, 1.9x less wall time on two threads of a loaded machine, peak RSS 1.19 GB
    # (one image: 1.07 GB).
    # GPUs want the whole batch in every layer.
    PER_SAMPLE_FROM = 128

    def per_sample_from(self, batch: int, device: torch.device | str = "cpu") -> int:
        """The first block (output side ``2 ** (block + 3)``) that runs sample by sample for this
        batch; ``len(self.to_rgbs)`` (none) for one sample, the reference path or a GPU."""
        n = len(self.to_rgbs)
        if batch == 1 or not self.conv1.fast or torch.device(device).type != "cpu":
            return n
        return min(n, max(0, int(math.log2(self.PER_SAMPLE_FROM)) - 3))

    def to_block_format(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Feature maps entering block ``block`` (output side ``2 ** (block + 3)``) in the memory
        format that is fastest there."""
        if self.channels_last and 2 ** (block + 3) >= self.CHANNELS_LAST_FROM:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # On a CPU's fast path the blocks of at least this output side run in bands of rows
    # (models/bands.py): their intermediates stay a few MB instead of fresh 33-134 MB tensors.
    # Measured per block at batch 1 on 2 intra-op threads (AVX-512), whole against 32-row bands:
    # 1024 px 375 vs 265 ms, 512 px 253 vs 215, 256 px 212 vs 179; at 128 px the bands lose
    # (132 vs 171: the whole block's 3x3 convolution runs by Winograd, a band's on fewer tiles).
    BANDS_FROM = 256
    # With band workers (models/workers.py: 2-4 threads) the bands run in parallel pieces from
    # this side on, which is what keeps the 64 and 128 px blocks fast beside other load. Whole
    # 1024 px image, 2 threads, bands from 256 against from 64: idle 1.03-1.05 s against
    # 1.04-1.07, one busy loop beside it 1.88-2.21 s against 1.66-1.68 (min of 5).
    WORKER_BANDS_FROM = 64
    # From this side on consecutive banded blocks form one chain (no feature map whole); the
    # blocks below it run on their own, their output whole (the chain's halo would cost more
    # than a whole 64 or 128 px map).
    CHAIN_FROM = 256

    def use_bands(self, x: torch.Tensor, block: int, styles: Sequence[torch.Tensor]) -> bool:
        """Whether block ``block`` runs band by band for this call: one sample on a CPU's fast
        path with the transposed up-sampling convolution, at least :data:`BANDS_FROM` px
        (:data:`WORKER_BANDS_FROM` with band workers), and
        nothing to differentiate (the bands write into preallocated outputs)."""
        bands_from = self.WORKER_BANDS_FROM if worker_count(x.device) else self.BANDS_FROM
        if not (self.bands and self.conv1.fast and x.shape[0] == 1 and x.device.type == "cpu"
                and 2 ** (block + 3) >= bands_from and self.convs[2 * block].conv.upsample_impl == "transposed"):
            return False
        if not torch.is_grad_enabled():
            return True
        block_params = (p for m in (self.convs[2 * block], self.convs[2 * block + 1], self.to_rgbs[block])
                        for p in m.parameters())
        return not (x.requires_grad or any(s.requires_grad for s in styles) or any(p.requires_grad for p in block_params))

    def run_blocks(self, first: int, x: torch.Tensor, skip: torch.Tensor | None, styles: Callable,
                   noises: Callable, last: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Blocks ``first`` to ``last - 1`` (default: to the end; block ``j`` has output side
        ``2 ** (j + 3)``): up conv, conv and ToRGB, with ``styles(j)`` (up, conv, rgb; each
        ``[B, D]``) and ``noises(j)`` (up, conv). Returns ``(features, rgb)`` of the last block
        run; its features are None when it is the generator's last block and ran in bands
        (nothing reads them). The blocks where :meth:`use_bands` holds run as one banded chain.
        """
        last = len(self.to_rgbs) if last is None else last
        for j in range(first, last):
            x = self.to_block_format(x, j)
            block_styles = styles(j)  # once per block: DualStyleGAN's are affine maps of the codes
            if self.use_bands(x, j, block_styles):
                # below CHAIN_FROM each block runs on its own, its output whole; from there on
                # the blocks form one chain
                end = last if 2 ** (j + 3) >= self.CHAIN_FROM else j + 1
                chain = [(self.convs[2 * k], self.convs[2 * k + 1], self.to_rgbs[k],
                          block_styles if k == j else styles(k), noises(k)) for k in range(j, end)]
                x, skip = blocks_in_bands(chain, x, skip, keep_features=end < len(self.to_rgbs))
                if end == last:
                    return x, skip
                continue
            (s_up, s_conv, s_rgb), (n_up, n_conv) = block_styles, noises(j)
            x = self.convs[2 * j + 1](self.convs[2 * j](x, s_up, n_up), s_conv, n_conv)
            skip = self.to_rgbs[j](x, s_rgb, skip)
        return x, skip

    # -- latents -----------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[..., D]`` -> w ``[..., D]`` (every row independently; z+ -> w+)."""
        return map_rows(self.style, z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Average w of ``n`` random z codes, ``[1, D]`` (the usual truncation centre)."""
        p = next(self.parameters())
        z = torch.randn(n, self.style_dim, generator=generator).to(p)
        return self.style(z).mean(0, keepdim=True)

    def make_latent(self, styles: torch.Tensor | Sequence[torch.Tensor], input_space: str = "z",
                    truncation: float = 1.0, truncation_latent: torch.Tensor | float | None = None,
                    inject_index: int | None = None) -> torch.Tensor:
        """Intrinsic code(s) -> the per-layer latent ``[B, n, D]`` the synthesis network uses.

        styles: one code, or two for style mixing (rows ``[0, inject_index)`` from the first,
        the rest from the second). Each is ``[B, D]`` (z or w) or ``[B, n, D]`` (z+ or w+).
        input_space: ``"z"`` (mapped here) or ``"w"`` (used as is).
        truncation: ``t_lat + truncation * (w - t_lat)`` when < 1; ``truncation_latent``
        ``[1, D]`` or a scalar, default 0 as in the official DualStyleGAN scripts
        (use :meth:`mean_latent` for the classic StyleGAN truncation).
        """
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        styles = list(styles)
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"expected one intrinsic code or two for mixing, got {len(styles)}")
        for s in styles:
            if s.ndim not in (2, 3) or s.shape[-1] != self.style_dim or (s.ndim == 3 and s.shape[1] != self.n_latent):
                raise ValueError(f"intrinsic code must be [B, {self.style_dim}] or [B, {self.n_latent}, "
                                 f"{self.style_dim}] for a {self.size}px generator, got {list(s.shape)}")
        if input_space == "z":
            styles = [self.mapping(s) for s in styles]
        elif input_space != "w":
            raise ValueError(f"input_space must be 'z' or 'w', got {input_space!r}")
        if truncation < 1:
            t = 0.0 if truncation_latent is None else truncation_latent
            styles = [t + truncation * (s - t) for s in styles]
        n = self.n_latent
        if len(styles) == 1:
            s = styles[0]
            return s.unsqueeze(1).repeat(1, n, 1) if s.ndim == 2 else s
        if inject_index is None:
            inject_index = random.randint(1, n - 1)
        a, b = styles
        a = a.unsqueeze(1).repeat(1, inject_index, 1) if a.ndim == 2 else a[:, :inject_index]
        b = b.unsqueeze(1).repeat(1, n - inject_index, 1) if b.ndim == 2 else b[:, inject_index:]
        return torch.cat([a, b], 1)

    # -- noise -------------------------------------------------------------------------------
    def noise_shapes(self, batch: int = 1) -> list[tuple[int, int, int, int]]:
        return [(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(self.num_layers)]

    def resolve_noise(self, noise: NoiseSpec, batch: int, like: torch.Tensor,
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One noise map per layer ``[1 or B, 1, r, r]`` on ``like``'s device and dtype.

        "random" draws in layer order (conv1, convs.0, convs.1, ...) with ``torch.randn`` on
        ``generator``'s device (CPU by default), the order the official forward draws them.
        """
        shapes = self.noise_shapes(batch)
        if isinstance(noise, str):
            if noise == "stored":
                return [getattr(self.noises, f"noise_{i}").to(like) for i in range(self.num_layers)]
            if noise == "random":
                noise = [None] * self.num_layers
            else:
                raise ValueError(f"noise must be 'stored', 'random' or a list of tensors, got {noise!r}")
        noise = list(noise)
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps for a {self.size}px generator, got {len(noise)}")
        out = []
        for i, (n, shape) in enumerate(zip(noise, shapes)):
            if n is None:
                dev = generator.device if generator is not None else torch.device("cpu")
                n = torch.randn(shape, generator=generator, device=dev)
            elif n.ndim != 4 or tuple(n.shape[1:]) != shape[1:] or n.shape[0] not in (1, batch):
                raise ValueError(f"noise map {i} must be [1 or {batch}, 1, {shape[2]}, {shape[3]}], got {list(n.shape)}")
            out.append(n.to(like))
        return out

    # -- synthesis ---------------------------------------------------------------------------
    def synthesis(self, latent: torch.Tensor, noise: NoiseSpec = "stored",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """w+ ``[B, n, D]`` -> image ``[B, 3, size, size]``."""
        assert latent.ndim == 3 and latent.shape[1:] == (self.n_latent, self.style_dim), latent.shape
        noises = self.resolve_noise(noise, latent.shape[0], latent, generator)
        out = self.start(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noises[0])
        skip = self.to_rgb1(out, latent[:, 1])

        batch, n = latent.shape[0], len(self.to_rgbs)

        def run_blocks(first: int, last: int, out: torch.Tensor, skip: torch.Tensor, lat: torch.Tensor, nz: list):
            return self.run_blocks(first, out, skip, lambda j: (lat[:, 2 * j + 1], lat[:, 2 * j + 2], lat[:, 2 * j + 3]),
                                   lambda j: (nz[2 * j + 1], nz[2 * j + 2]), last)

        split = self.per_sample_from(batch, latent.device)
        out, skip = run_blocks(0, split, out, skip, latent, noises)
        if split < n:  # the large blocks one sample at a time (see PER_SAMPLE_FROM)
            images = []
            for b in range(batch):
                nz = [z if z.shape[0] == 1 else z[b: b + 1] for z in noises]
                images.append(run_blocks(split, n, out[b: b + 1], skip[b: b + 1], latent[b: b + 1], nz)[1])
            skip = torch.cat(images)
        return skip

    def forward(self, styles: torch.Tensor | Sequence[torch.Tensor], *, input_space: str = "z",
                truncation: float = 1.0, truncation_latent: torch.Tensor | float | None = None,
                inject_index: int | None = None, noise: NoiseSpec = "stored",
                generator: torch.Generator | None = None, return_latents: bool = False):
        """Intrinsic code(s) -> image ``[B, 3, size, size]`` (and the ``[B, n, D]`` latent if
        ``return_latents``). Arguments as in :meth:`make_latent` and :meth:`resolve_noise`."""
        latent = self.make_latent(styles, input_space, truncation, truncation_latent, inject_index)
        image = self.synthesis(latent, noise, generator)
        return (image, latent) if return_latents else image
