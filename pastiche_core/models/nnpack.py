"""NNPACK's Winograd convolution for the 3x3 convolutions of the banded blocks (CPU, float32).

NNPACK computes a 3x3, stride-1 convolution by Winograd F(6x6, 3x3) with hand-vectorised
transforms (AVX2/FMA on x86-64): 64 products for each 6x6 block of output instead of 324. PyTorch's
CPU builds ship it, but reach it only for batches of 16 or more; ``torch._nnpack_spatial_convolution``
is its entry point for one NCHW float32 sample. Our own Winograd (:mod:`.winograd`) spends more on
its transforms than it saves below 256 channels; NNPACK's win from 128 channels up.

Measured on one thread of a 2-core AVX-512 CPU, on one band (34 rows in, channels last, the
layout change both ways included; the direct convolution is oneDNN's), the band in cache:

=====================  ======  ===================  ===============
channels x width       direct  ours (Winograd)      NNPACK
=====================  ======  ===================  ===============
512 x 64               93 ms   44 ms                38 ms
256 x 128 (66 rows)    85 ms   51 ms                34 ms
128 x 256              22 ms   (loses to direct)    11 ms
64 x 512               11 ms   (loses to direct)    8.0 ms
32 x 1024              5.8 ms  (loses to direct)    6.9 ms (loses)
=====================  ======  ===================  ===============

Inside the whole 1024 px image the band comes from memory and the layout changes cost twice as
much: NNPACK from 64 channels and from 128 channels tie (median 892 and 895 ms, interleaved in one
process); from 256 channels only is slower (943 ms). So it starts at 128.

Its results differ from the direct convolution's by up to 7e-5 on outputs of unit scale (F(6, 3)
has larger transform constants than our F(4, 3): 4-9e-5); on a whole 1024 px image the fast
path stays about 3e-5 from the reference path (the fixture tolerance is 2e-4).

**Threads.** NNPACK runs on a thread pool of its own, made at its first call with the calling
thread's intra-op thread count and kept for the process; a pool of one thread runs each call on
its caller, and calls from several threads run side by side, while a larger pool takes one call
at a time. So NNPACK is used only by callers running one thread (the band workers of
:mod:`.workers`, or a caller set to one thread), and the workers make its first call as they
start, so that its pool is one thread wherever they exist. A pool made larger beforehand by other
code is still correct, only slower (the workers' calls then take turns).
"""
from __future__ import annotations

import functools
import platform
import threading
import warnings

import torch
import torch.nn.functional as F

# From this many input and output channels NNPACK beats oneDNN's direct convolution (see above).
MIN_CHANNELS = 128


_failed: list[str] = []  # why NNPACK was given up in this process, if it was


@functools.cache
def _initialised() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return bool(torch._nnpack_available()) and hasattr(torch, "_nnpack_spatial_convolution")
    except Exception:  # noqa: BLE001 - a build without the symbol, or an initialisation failure
        return False


def nnpack_ready() -> bool:
    """Whether this torch ships NNPACK, it initialises on this CPU (x86-64, where it was
    measured; ``torch._nnpack_available`` also initialises the library, which every call needs)
    and no call of it has failed in this process."""
    return not _failed and _initialised()


def nnpack_wins(x: torch.Tensor, in_channels: int, out_channels: int) -> bool:
    """Whether a 3x3 convolution of ``x`` runs faster by NNPACK: CPU, float32, nothing to
    differentiate, at least :data:`MIN_CHANNELS` channels in and out. Callers use it only while
    they run one thread (:func:`single_threaded`; see the module doc)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and min(in_channels, out_channels) >= MIN_CHANNELS
            and not torch.is_grad_enabled() and nnpack_ready())


def single_threaded() -> bool:
    """Whether the calling thread runs one intra-op thread (where NNPACK's one-thread pool is not
    slower than oneDNN's threads)."""
    return torch.get_num_threads() == 1


_first_call = threading.Lock()


def make_pool_single_threaded() -> None:
    """Make NNPACK's first call now, from a thread running one intra-op thread, so that its pool
    is one thread (a no-op once the pool exists, and where NNPACK is missing). Workers starting
    together take turns: torch makes the pool on a first call without a lock."""
    assert single_threaded(), "call from a thread running one intra-op thread"
    if nnpack_ready():
        with _first_call, torch.no_grad():
            torch._nnpack_spatial_convolution(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), None, [1, 1], [1, 1])


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """One channels-last sample ``[1, C, H, W]`` as a contiguous NCHW tensor, copied as one 2-D
    transpose (``[H*W, C]`` to ``[C, H*W]``, which PyTorch copies in cache-sized blocks; a plain
    ``.contiguous()`` gathers element by element, 2x slower)."""
    _, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(h * w, c).t().contiguous().view(1, c, h, w)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """One contiguous NCHW sample as a channels-last tensor, copied as one 2-D transpose."""
    _, c, h, w = x.shape
    return x.reshape(c, h * w).t().contiguous().view(1, h, w, c).permute(0, 3, 1, 2)


def conv3x3_nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   padding: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for one channels-last float32 sample
    ``x [1, in, H, W]`` and ``weight [out, in, 3, 3]``, by NNPACK; channels-last output. Where
    NNPACK is missing or a call of it fails (with a warning, once: the process then keeps to
    oneDNN), by the direct convolution."""
    assert x.ndim == 4 and x.shape[0] == 1 and x.dtype == torch.float32, \
        f"one float32 sample [1, C, H, W], got {tuple(x.shape)} {x.dtype}"
    assert weight.shape[1:] == (x.shape[1], 3, 3), f"weight must be [out, {x.shape[1]}, 3, 3], got {tuple(weight.shape)}"
    if nnpack_ready():
        try:
            out = torch._nnpack_spatial_convolution(to_nchw(x), weight.contiguous(), bias, list(padding), [1, 1])
            return to_channels_last(out)
        except RuntimeError as error:  # NNPACK reports only a status (its workspace, an odd shape)
            _failed.append(str(error))
            warnings.warn(f"NNPACK failed ({error}); 3x3 convolutions take oneDNN's direct path from now on",
                          RuntimeWarning, stacklevel=2)
    return F.conv2d(x, weight, bias, padding=padding)


__all__ = ["MIN_CHANNELS", "conv3x3_nnpack", "make_pool_single_threaded", "nnpack_ready", "nnpack_wins",
           "single_threaded", "to_channels_last", "to_nchw"]
