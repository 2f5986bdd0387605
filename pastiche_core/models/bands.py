"""Banded synthesis: the large generator blocks computed in horizontal bands of output rows.

A block is an up-sampling modulated convolution (stride-2 transposed 3x3 + [1, 3, 3, 1] blur),
a 3x3 modulated convolution (each followed by noise, bias and leaky ReLU) and a 1x1 ToRGB
added to the up-sampled RGB skip. Computed whole at 1024 px, each of its intermediate maps
(32 channels) is a fresh 134 MB tensor: the allocator maps new pages for every one (about 255k
page faults per image) and every element-wise pass streams it through memory. Computed band by
band, the intermediates are a few MB: they are reused from the allocator's free lists and stay
in cache between the convolution, the noise and the activation.

Consecutive banded blocks are chained: a block asks the one before it for the rows it needs,
and that one computes them a band at a time and forgets them once they are behind, so no
feature map of the chain exists whole, only the final RGB image.

Every layer is local in rows, so output rows ``[a, b)`` need only a few rows of halo from the
block's inputs (:func:`input_rows`, :func:`skip_rows`); each band recomputes its halo of the
transposed convolution. The arithmetic is the fast path's (the same modulated weights, bias and
noise folded in with the activation gain), so bands agree with whole blocks to float rounding
(``tests/test_bands.py``), except that a band on one thread (a band worker) runs its float32
3x3 convolution from 128 channels by NNPACK's Winograd F(6x6, 3x3) (:mod:`.nnpack`: up to 7e-5
from the direct convolution on maps of unit scale).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .ops import LRELU_SLOPE, SQRT2, _depthwise
from .nnpack import conv3x3_nnpack, nnpack_wins, single_threaded
from .winograd import conv3x3_winograd, transform_weight
from .workers import run_pieces, worker_count

# A band holds about this many bytes of the block's widest map (its output channels at its
# output width). Measured per block on 2 threads of an AVX-512 CPU (1024 px, 32 channels, 128
# kB a row): 8/16/32/64/128-row bands 324/270/265/258/351 ms, the whole block 375.
BAND_BYTES = 4 << 20
MIN_BAND_ROWS = 8


def band_rows(channels: int, width: int, element_size: int, band_bytes: int = BAND_BYTES) -> int:
    """Output rows per band: ``band_bytes`` of one ``channels x width`` map, at least
    :data:`MIN_BAND_ROWS`, rounded down to an even count."""
    rows = band_bytes // max(1, channels * width * element_size)
    return max(MIN_BAND_ROWS, rows // 2 * 2)


def input_rows(a: int, b: int, side: int) -> tuple[int, int, int, int]:
    """For block output rows ``[a, b)`` of a ``side``-row output: ``(c, d, m0, m1)``, the rows
    ``[c, d)`` of the up convolution's output that the 3x3 convolution reads (a halo of one row,
    clipped to the image) and the block input rows ``[m0, m1]`` (inclusive) those need.

    The transposed convolution ``T`` (``side + 1`` rows) has ``T[i] = sum_k x[(i - k) / 2] w[k]``
    over ``k`` in 0..2 with ``i - k`` even, so ``T[i]`` reads ``x`` rows ``ceil((i - 2) / 2)``
    to ``floor(i / 2)``; the blur (pad 1, 4 taps) makes up-conv row ``j`` from ``T[j - 1 .. j + 2]``.
    """
    c, d = max(a - 1, 0), min(b + 1, side)
    m0 = max(0, -((3 - c) // 2))           # ceil((c - 1 - 2) / 2)
    m1 = min(side // 2 - 1, (d + 1) // 2)  # floor((d + 2 - 1) / 2)
    return c, d, m0, m1


def skip_rows(a: int, b: int, side: int) -> tuple[int, int]:
    """Rows ``[r0, r1]`` (inclusive) of the half-size RGB skip that its 2x up-sampling (4-tap
    transposed convolution, crop 1) reads for output rows ``[a, b)``: full row ``i = j + 1``
    reads skip rows ``ceil((i - 3) / 2)`` to ``floor(i / 2)``."""
    return max(0, -((2 - a) // 2)), min(side // 2 - 1, b // 2)


class WholeRows:
    """Rows of a map that exists whole (the input of the first banded block)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def get(self, lo: int, hi: int, part: int = 0) -> torch.Tensor:
        return self.tensor[:, :, lo:hi]


class StreamedRows:
    """Rows of a banded block's output (features and RGB) from row ``start`` on, computed a band
    at a time as they are asked for. Requests for each part come in increasing order, so bands
    wholly behind every part's last request are dropped."""

    def __init__(self, bands: Iterator[tuple[int, int, torch.Tensor, torch.Tensor]], start: int = 0):
        self.bands = bands
        self.chunks: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        self.done = start
        self.low = [start, start]

    def get(self, lo: int, hi: int, part: int = 0) -> torch.Tensor:
        """Rows ``[lo, hi)`` of the features (``part`` 0) or of the RGB (``part`` 1)."""
        assert lo >= self.low[part], ("rows must be asked for in increasing order", lo, self.low[part])
        while self.done < hi:
            a, b, feat, rgb = next(self.bands)
            self.chunks.append((a, b, feat, rgb))
            self.done = b
        self.low[part] = lo
        keep = min(self.low)
        self.chunks = [c for c in self.chunks if c[1] > keep]
        pieces = [c[2 + part][:, :, max(lo, c[0]) - c[0]: min(hi, c[1]) - c[0]]
                  for c in self.chunks if c[0] < hi and c[1] > lo]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 2)


def first_row_read(a: int, side: int) -> int:
    """The first row of the previous block's output (features or RGB skip) that output rows from
    ``a`` on read."""
    return min(input_rows(a, a + 1, side)[2], skip_rows(a, a + 1, side)[0])


def rows_read_until(b: int, side: int) -> int:
    """One past the last row of the previous block's output (features or RGB skip) that output
    rows before ``b`` read."""
    return max(input_rows(b - 1, b, side)[3], skip_rows(b - 1, b, side)[1]) + 1


class BandedBlock:
    """One sample's block, made band by band from sources of its input rows and of its skip rows.

    ``conv_up``/``conv`` are the block's :class:`~.stylegan2.StyledConv` layers, ``to_rgb`` its
    :class:`~.stylegan2.ToRGB`; ``styles`` (up, conv, rgb) each ``[1, D]``, ``noises`` (up, conv)
    each ``[1, 1, side, side]``. The weights are modulated once per call, with the activation
    gain folded in as on the fast path; bands of one block may be made in any order, on any thread.
    """

    def __init__(self, conv_up, conv, to_rgb, styles: Sequence[torch.Tensor], noises: Sequence[torch.Tensor],
                 in_side: int, like: torch.Tensor, rows: int | None = None, skip: bool = True):
        assert conv_up.conv.upsample and conv_up.conv.kernel_size == 3 and conv.conv.kernel_size == 3
        s_up, s_conv, s_rgb = styles
        dtype = like.dtype
        self.up = conv_up.conv.modulated_weight_fast(s_up, gain=SQRT2, transposed=True)[0].to(dtype)  # [in, out, 3, 3]
        self.up_bias = (conv_up.activate.bias * SQRT2).to(dtype)
        self.up_noise = float(conv_up.noise.weight * SQRT2)
        self.out_channels = self.up.shape[1]
        self.blur = _depthwise(conv_up.conv.blur.kernel, self.out_channels, like)
        self.side = 2 * in_side
        self.conv_bias = (conv.activate.bias * SQRT2).to(dtype)
        full = like.new_empty(1).expand(1, self.out_channels, self.side, self.side)
        # The 3x3 convolution: by NNPACK where it wins and the band runs on one thread (a band
        # worker), else by our Winograd where that wins, else directly.
        self.nnpack = conv.conv.winograd and nnpack_wins(full, self.out_channels, self.out_channels)
        self.winograd = None
        if conv.conv.use_winograd(full):  # the shared weight's transform, the style on the maps
            self.winograd = conv.conv.derived("winograd", conv.conv.weight[0], transform_weight)
            s, scale = conv.conv.activation_scales(s_conv, SQRT2)
            self.conv_scales = s[0].to(dtype), scale[0].to(dtype)
        self.conv = (conv.conv.modulated_weight_fast(s_conv, gain=SQRT2)[0].to(dtype)
                     if self.nnpack or self.winograd is None else None)
        self.conv_noise = float(conv.noise.weight * SQRT2)
        self.rgb = to_rgb.conv.modulated_weight_fast(s_rgb)[0].to(dtype)
        self.rgb_bias = to_rgb.bias.reshape(-1).to(dtype)
        self.upsample_kernel = _depthwise(to_rgb.upsample.kernel, 3, like) if skip else None
        self.noises = [n.to(dtype) for n in noises]
        assert all(n.shape[-2:] == (self.side, self.side) for n in self.noises), [n.shape for n in noises]
        self.rows = rows or band_rows(self.out_channels, self.side, like.element_size())

    def band(self, a: int, b: int, source, skip_source=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Output rows ``[a, b)``: (features ``[1, out, b - a, side]``, RGB ``[1, 3, b - a, side]``),
        reading input rows from ``source`` and skip rows from ``skip_source`` (``.get(lo, hi, part)``)."""
        side = self.side
        c, d, m0, m1 = input_rows(a, b, side)
        # Up convolution rows [c, d): the transposed convolution of input rows [m0, m1] gives T
        # rows [2 m0, 2 m1 + 2]; the blur reads T rows [c - 1, d + 2), zero outside [0, side].
        t = F.conv_transpose2d(source.get(m0, m1 + 1, 0), self.up, stride=2)
        lo, hi = c - 1, d + 2
        t = t[:, :, max(lo, 0) - 2 * m0: min(hi, side + 1) - 2 * m0]
        if lo < 0 or hi > side + 1:
            t = F.pad(t, [0, 0, int(lo < 0), int(hi > side + 1)])
        u = F.conv2d(t, self.blur, self.up_bias, padding=(0, 1), groups=self.out_channels)
        u = F.leaky_relu_(u.add_(self.noises[0][:, :, c:d], alpha=self.up_noise), LRELU_SLOPE)
        # The 3x3 convolution of rows [a - 1, b + 1) (zero rows beyond the image) gives rows [a, b).
        if a == 0 or b == side:
            u = F.pad(u, [0, 0, int(a == 0), int(b == side)])
        if self.nnpack and single_threaded():
            y = conv3x3_nnpack(u, self.conv, self.conv_bias, padding=(0, 1))
        elif self.winograd is not None:
            y = conv3x3_winograd(u, None, self.conv_bias, transformed=self.winograd, in_scale=self.conv_scales[0],
                                 out_scale=self.conv_scales[1], halo_rows=True)
        else:
            y = F.conv2d(u, self.conv, self.conv_bias, padding=(0, 1))
        y = F.leaky_relu_(y.add_(self.noises[1][:, :, a:b], alpha=self.conv_noise), LRELU_SLOPE)
        rgb = F.conv2d(y, self.rgb, self.rgb_bias)
        if self.upsample_kernel is not None:
            r0, r1 = skip_rows(a, b, side)
            up = F.conv_transpose2d(skip_source.get(r0, r1 + 1, 1), self.upsample_kernel,
                                    stride=2, padding=(0, 1), groups=3)    # full rows [2 r0, 2 r1 + 3]
            rgb = rgb + up[:, :, a + 1 - 2 * r0: b + 1 - 2 * r0]
        return y, rgb

    def bands(self, source, skip_source=None, start: int = 0,
              stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """``(a, b, features, rgb)`` for bands from row ``start`` to ``stop`` (default: the end)."""
        stop = self.side if stop is None else stop
        for a in range(start, stop, self.rows):
            b = min(a + self.rows, stop)
            yield (a, b) + self.band(a, b, source, skip_source)


def chain_bands(blocks: Sequence[BandedBlock], x: torch.Tensor, skip: torch.Tensor | None, start: int = 0,
                stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Bands of the last of ``blocks`` (consecutive) from row ``start`` to ``stop``, each block
    making only the rows the next one reads (:func:`first_row_read` to :func:`rows_read_until`):
    a segment of a chain recomputes the halo rows of its neighbours, never whole bands of them."""
    stop = blocks[-1].side if stop is None else stop
    starts, stops = [start], [stop]
    for block in reversed(blocks[1:]):
        starts.insert(0, first_row_read(starts[0], block.side))
        stops.insert(0, rows_read_until(stops[0], block.side))
    source, skip_source = WholeRows(x), None if skip is None else WholeRows(skip)
    for k, block in enumerate(blocks[:-1]):
        source = skip_source = StreamedRows(block.bands(source, skip_source, starts[k], stops[k]), starts[k])
    return blocks[-1].bands(source, skip_source, start, stop)


def blocks_in_bands(layers: Sequence[tuple], x: torch.Tensor, skip: torch.Tensor | None,
                    keep_features: bool = False, rows: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One sample through consecutive generator blocks, band by band.

    ``layers``: per block ``(conv_up, conv, to_rgb, styles, noises)`` as for :class:`BandedBlock`;
    ``x [1, in, h, w]`` the first block's input (channels last is fastest), ``skip [1, 3, h, w]``
    or None. Returns ``(features or None, rgb)`` of the last block (``[1, out, S, S]``, ``[1, 3,
    S, S]``); its features are assembled only with ``keep_features``.
    """
    assert x.ndim == 4 and x.shape[0] == 1, f"one sample [1, C, H, W], got {tuple(x.shape)}"
    assert x.shape[-1] == x.shape[-2], f"square maps, got {tuple(x.shape)}"
    blocks, side = [], x.shape[-1]
    for k, (conv_up, conv, to_rgb, styles, noises) in enumerate(layers):
        blocks.append(BandedBlock(conv_up, conv, to_rgb, styles, noises, side, x, rows, skip=skip is not None or k > 0))
        side = blocks[-1].side
    workers = worker_count(x.device)
    if workers and rows is None:  # at least SEGMENTS_PER_WORKER bands per worker in the last block
        last = blocks[-1]
        per_worker = SEGMENTS_PER_WORKER if len(blocks) > 1 else BLOCK_SEGMENTS_PER_WORKER
        last.rows = min(last.rows, max(MIN_BAND_ROWS, last.side // (per_worker * workers) // 2 * 2))
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    features = (torch.empty(1, blocks[-1].out_channels, side, side, dtype=x.dtype, device=x.device, memory_format=fmt)
                if keep_features else None)
    image = x.new_empty(1, 3, side, side)

    def segment(start: int, stop: int) -> None:
        for a, b, feat, rgb in chain_bands(blocks, x, skip, start, stop):
            if features is not None:
                features[:, :, a:b].copy_(feat)
            image[:, :, a:b].copy_(rgb)

    run_pieces(segment, segments(side, blocks[-1].rows, workers), x.device)
    return features, image


# Segments per worker: enough for a worker slowed by other load to leave the others more, few
# enough that the halo rows each segment recomputes in the earlier blocks of a chain stay cheap.
# Measured at 1024 px on 2 workers, one busy loop beside them (256/512/1024 px blocks): 4
# segments 2.0-2.3 s per image, 8 segments 2.6-2.9 s. A block on its own (64 and 128 px) is cut
# into bands of this many per worker: its transposed convolution recomputes 4-5 input rows a
# band (1 per worker: idle 1.04-1.16 s per image, loaded 1.54-1.83; 2: 1.10-1.16, 2.04-2.17).
SEGMENTS_PER_WORKER = 2
BLOCK_SEGMENTS_PER_WORKER = 1


def segments(side: int, rows: int, workers: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of whole bands that cover ``side`` rows: one with no
    workers, else :data:`SEGMENTS_PER_WORKER` per worker (fewer when there are fewer bands)."""
    n = max(1, SEGMENTS_PER_WORKER * workers)
    bands = -(-side // rows)
    per = -(-bands // n) * rows
    return [(a, min(a + per, side)) for a in range(0, side, per)]


__all__ = ["BAND_BYTES", "BandedBlock", "StreamedRows", "WholeRows", "band_rows", "blocks_in_bands", "chain_bands",
           "first_row_read", "input_rows", "rows_read_until", "segments", "skip_rows"]
