"""Winograd F(4x4, 3x3) convolution: a 3x3, stride-1, padding-1 convolution of one sample.

Each 4x4 block of output is computed from the 6x6 input tile around it as
``A^T [(G w G^T) * (B^T d B)] A``: 36 element-wise products per tile instead of 144 (4x fewer
multiplies, on 2.25x the input's size in transformed tiles), and the products of all tiles at one of the 36 positions form one matrix
product ``[tiles, in] @ [in, out]``, so the work is 36 GEMMs (one batched matmul) plus the
transforms. The transforms are laid out so that each is one matmul on a contiguous tensor:

* input: a strided view of the zero-padded NHWC sample gives the tiles as ``[6, 6, tiles, in]``
  (one copy), and the 2-D transform ``B^T d B`` is the Kronecker matrix ``B^T (x) B^T`` [36, 36]
  times that viewed as ``[36, tiles*in]``, which is already the ``[36, tiles, in]`` layout of
  the batched matmul;
* weight: ``(G (x) G)`` [36, 9] times the weight viewed as ``[9, in*out]``;
* output: ``A^T (x) A^T`` [16, 36] times the products ``[36, tiles*out]``, then one copy into
  the NHWC output (the bias added on the way).

StyleGAN2 modulates its weights per sample, and transforming a 512x512 weight costs ~20 ms (its
36 x 512 x 512 result does not fit in cache), as much as the whole Winograd convolution at 32 px.
So the callers keep the shared weight's transform (:class:`~.derived.DerivedWeights`, 4x the weight's
memory) and apply the modulation to the input channels and the demodulation to the output
channels (``in_scale``, ``out_scale``), which is the same function regrouped. Large maps run in
strips of tile rows so that the tiles of a strip stay in cache.

Points 0, +-1, +-2 (and infinity) keep the transforms' entries small (up to 25 and 1/24); in
float32 the error is about 4x the direct convolution's (max 4-9e-5 against 1-2e-5 on outputs of
unit scale, benchmarks/bench_winograd.py); on the 1024 px image of the whole DualStyleGAN the
fast path moves from 1.6e-5 to 2.1e-5 max abs from the reference path (fixture tolerance 2e-4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TILE = 4          # output side of one tile
SPAN = TILE + 2   # input side of one tile (3x3 kernel)

# F(4, 3) with interpolation points 0, 1, -1, 2, -2 and infinity.
_BT = [[4, 0, -5, 0, 1, 0],
       [0, -4, -4, 1, 1, 0],
       [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0],
       [0, 2, -1, -2, 1, 0],
       [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0],
       [0, 1, -1, 2, -2, 0],
       [0, 1, 1, 4, 4, 0],
       [0, 1, -1, 8, -8, 1]]

# Where it beats oneDNN's direct convolution on a CPU (measured: stylegan2.ModulatedConv2d's
# comment): at least this many input channels, on maps at least this wide.
MIN_CHANNELS = 256
MIN_SIDE = 16


def winograd_wins(x: torch.Tensor, in_channels: int, weight: torch.Tensor) -> bool:
    """Whether a dense 3x3 convolution with ``in_channels`` inputs of ``x`` runs faster by
    Winograd than directly: CPU, float32/float64, the measured thresholds, and a weight that
    needs no gradient (its transform is then kept; a weight being trained would be transformed
    on every call, which loses: 512 ch at 16 px 67 ms against 19 ms direct on one thread)."""
    return (in_channels >= MIN_CHANNELS and min(x.shape[-2:]) >= MIN_SIDE and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and not (torch.is_grad_enabled() and weight.requires_grad))


_MATRICES: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def transform_matrices(dtype: torch.dtype, device: torch.device | str = "cpu"):
    """(input ``B^T (x) B^T`` [36, 36], weight ``G (x) G`` [36, 9], output ``A^T (x) A^T``
    [16, 36]) in ``dtype``, built in float64 and cached. Built as normal tensors even when first
    asked for in inference mode: they are used later in computations autograd tracks."""
    key = (dtype, torch.device(device))
    if key not in _MATRICES:
        with torch.inference_mode(False):
            bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
            _MATRICES[key] = tuple(torch.kron(m, m).to(device=device, dtype=dtype) for m in (bt, g, at))
    return _MATRICES[key]


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in, 3, 3]`` -> ``G w G^T`` per channel pair, as ``[36, in, out]``."""
    out_ch, in_ch = weight.shape[:2]
    _, g, _ = transform_matrices(weight.dtype, weight.device)
    w = weight.permute(2, 3, 1, 0).reshape(9, in_ch * out_ch)
    return (g @ w).view(SPAN * SPAN, in_ch, out_ch)


# Large maps run in strips of whole tile rows holding at least this many tiles: the strip's
# transformed input and products stay in cache between the transforms and the batched matmul,
# while each matmul is still tall enough to read the [36, in, out] weights efficiently.
# Measured on a 2-core AVX-512 CPU: 256 ch at 128 px 51 ms in strips of 256 tiles, 87 ms whole.
MIN_STRIP_TILES = 256


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None = None,
                     transformed: torch.Tensor | None = None, in_scale: torch.Tensor | None = None,
                     out_scale: torch.Tensor | None = None, min_strip_tiles: int | None = None,
                     halo_rows: bool = False) -> torch.Tensor:
    """``F.conv2d(x * in_scale, weight, bias, padding=1) * out_scale`` (bias added after the
    scale) for ``x [B, in, H, W]`` and ``weight [out, in, 3, 3]``; returns ``[B, out, H, W]`` in
    the memory format of ``x``. The tiles of all samples go through one batched matmul, so a batch
    reads the transformed weight once. ``transformed`` is ``transform_weight(weight)`` when the
    caller has it already (then ``weight`` may be None); ``in_scale`` (``[in]`` or per sample
    ``[B, in]``) and ``out_scale`` (``[out]`` or ``[B, out]``) are per-channel factors (StyleGAN2's
    modulation and demodulation applied to the activations, so the transformed weight can be
    reused). ``halo_rows``: the first and last rows of ``x`` are a band's halo, read but not padded
    around, and the output has ``H - 2`` rows (``padding=(0, 1)``)."""
    assert x.ndim == 4, f"x must be [B, in, H, W], got {tuple(x.shape)}"
    batch, in_ch, h, w = x.shape
    if transformed is None:
        assert weight is not None and weight.ndim == 4 and weight.shape[2:] == (3, 3) and weight.shape[1] == in_ch, \
            f"weight must be [out, {in_ch}, 3, 3], got {None if weight is None else tuple(weight.shape)}"
        transformed = transform_weight(weight)
    assert transformed.ndim == 3 and transformed.shape[:2] == (SPAN * SPAN, in_ch), \
        f"transformed weight must be [36, {in_ch}, out], got {tuple(transformed.shape)}"
    u = transformed.to(x.dtype)
    out_ch = u.shape[2]
    in_scale = None if in_scale is None else _per_sample(in_scale, batch, in_ch, "in_scale").to(x.dtype)
    out_scale = None if out_scale is None else _per_sample(out_scale, batch, out_ch, "out_scale").to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    bt, _, at = transform_matrices(x.dtype, x.device)

    top = 0 if halo_rows else 1
    out_h = h - 2 * (1 - top)
    assert out_h > 0, f"a band with halo rows needs at least 3 rows, got {h}"
    th, tw = -(-out_h // TILE), -(-w // TILE)
    # Zero-padded NHWC copy, one pixel of 'same' padding on top (unless the rows bring their own)
    # and left, enough on the bottom/right for whole tiles.
    hp, wp = th * TILE + 2, tw * TILE + 2
    autograd = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, u, in_scale, out_scale, bias))
    padded = x.new_zeros(batch, hp, wp, in_ch)
    x_nhwc = x.permute(0, 2, 3, 1)
    inside = padded[:, top:top + h, 1:w + 1]
    if in_scale is None:
        inside.copy_(x_nhwc)
    elif autograd:
        inside.copy_(x_nhwc * in_scale[:, None, None])  # out= has no autograd
    else:
        torch.mul(x_nhwc, in_scale[:, None, None], out=inside)
    # NHWC, so that the NCHW view has the standard channels_last strides (libraries pick their
    # kernels by the strides, of size-1 dimensions too).
    out_nhwc = x.new_empty(batch, th * TILE, tw * TILE, out_ch)

    mst = MIN_STRIP_TILES if min_strip_tiles is None else min_strip_tiles
    rows = max(-(-mst // (batch * tw)), 1)
    sb, sh, sw, sc = padded.stride()
    for r0 in range(0, th, rows):
        r = min(rows, th - r0)
        tiles = padded.as_strided((SPAN, SPAN, batch, r, tw, in_ch), (sh, sw, sb, TILE * sh, TILE * sw, sc),
                                  padded.storage_offset() + r0 * TILE * sh)
        n = batch * r * tw                                                   # tiles of the strip
        d = tiles.reshape(SPAN * SPAN, n * in_ch)                            # copy: [36, tiles*in]
        v = (bt @ d).view(SPAN * SPAN, n, in_ch)
        m = torch.bmm(v, u).view(SPAN * SPAN, n * out_ch)                   # [36, tiles*out]
        y = (at @ m).view(TILE, TILE, batch, r, tw, out_ch)
        strip = out_nhwc[:, r0 * TILE:(r0 + r) * TILE].view(batch, r, TILE, tw, TILE, out_ch)
        y = y.permute(2, 3, 0, 4, 1, 5)
        scale = None if out_scale is None else out_scale[:, None, None, None, None]
        if autograd:  # out-of-place, so that autograd can follow
            y = y if scale is None else y * scale
            strip.copy_(y if bias is None else y + bias)
            continue
        strip.copy_(y)
        if scale is not None:  # while the strip is in cache
            strip.mul_(scale)
        if bias is not None:
            strip.add_(bias)
    out = out_nhwc.permute(0, 3, 1, 2)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if out.shape[2:] != (out_h, w):  # a fresh tensor, not a crop with the tiles' strides
        return out[:, :, :out_h, :w].clone(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return out if channels_last else out.contiguous()


def _per_sample(scale: torch.Tensor, batch: int, channels: int, name: str) -> torch.Tensor:
    """A per-channel factor as ``[B, C]`` (one ``[C]`` shared by the batch, or one row per sample)."""
    if scale.ndim == 1:
        scale = scale[None]
    assert scale.ndim == 2 and scale.shape[1] == channels and scale.shape[0] in (1, batch), \
        f"{name} must be [{channels}] or [{batch}, {channels}], got {tuple(scale.shape)}"
    return scale.expand(batch, channels)


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain convolution the Winograd one must equal."""
    assert x.ndim == 4 and weight.ndim == 4 and weight.shape[2:] == (3, 3), (x.shape, weight.shape)
    return F.conv2d(x, weight, bias, padding=1)
