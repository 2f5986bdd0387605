"""Winograd F(4x4, 3x3) vs the direct convolution (oneDNN, channels_last) on the generator's
dense 3x3 layer shapes: batch 1, median time per call, and max |error| of each against a
float64 convolution. Direct: ``F.conv2d`` of the per-sample modulated weight (what the fast path
runs without Winograd). Winograd two ways: ``per-call`` transforms that weight on every call;
``cached`` is what the fast path runs, the shared weight's transform cached and the modulation /
demodulation applied to the activations (``conv(x * s, W) * d + b``). ``nnpack``: NNPACK's
Winograd F(6x6, 3x3) on the modulated weight, the layout changed to NCHW and back around it
(``models/nnpack.py``; what a band worker runs from 128 channels); NNPACK runs on one thread here
(its pool is made with one), so compare it with ``--threads 1``.

    python benchmarks/bench_winograd.py [--threads 2] [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pastiche_core.models import nnpack  # noqa: E402
from pastiche_core.models.winograd import conv3x3_winograd, transform_weight  # noqa: E402
from pastiche_core.models.workers import torch_threads  # noqa: E402

SHAPES = [(512, 16), (512, 32), (512, 64), (256, 128), (128, 256), (64, 512), (32, 1024)]


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--shapes", nargs="*", default=None, help="ch@px, e.g. 512@64")
    a = ap.parse_args()
    with torch_threads(1):
        nnpack.make_pool_single_threaded()  # before anything else calls NNPACK: a one-thread pool
    torch.set_num_threads(a.threads)
    shapes = SHAPES if not a.shapes else [tuple(int(v) for v in s.split("@")) for s in a.shapes]
    use_nnpack = nnpack.nnpack_ready()
    print(f"{'layer':>9} {'direct ms':>10} {'per-call ms':>12} {'cached ms':>10} {'speedup':>8} "
          f"{'nnpack ms':>10} {'err direct':>11} {'err cached':>11} {'err nnpack':>11}")
    for ch, px in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, ch, px, px, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, generator=g) / (ch * 9) ** 0.5
        s_in, s_out = torch.rand(ch, generator=g) + 0.5, torch.rand(ch, generator=g) + 0.5
        b = torch.randn(ch, generator=g)
        u = transform_weight(w)
        with torch.no_grad():
            exact = F.conv2d(x.double() * s_in.double()[:, None, None], w.double(), padding=1) \
                * s_out.double()[:, None, None] + b.double()[:, None, None]

            def direct():  # the per-sample modulated weight, as the fast path builds it
                return F.conv2d(x, w * s_in[None, :, None, None] * s_out[:, None, None, None], b, padding=1)

            def per_call():
                return conv3x3_winograd(x, w * s_in[None, :, None, None] * s_out[:, None, None, None], b)

            def cached():
                return conv3x3_winograd(x, None, b, transformed=u, in_scale=s_in, out_scale=s_out)

            def by_nnpack():
                return nnpack.conv3x3_nnpack(x, w * s_in[None, :, None, None] * s_out[:, None, None, None], b)

            t_d, t_p, t_c = (median_ms(f, a.repeat) for f in (direct, per_call, cached))
            e_d, e_c = ((f().double() - exact).abs().max().item() for f in (direct, cached))
            t_n, e_n = ((median_ms(by_nnpack, a.repeat), (by_nnpack().double() - exact).abs().max().item())
                        if use_nnpack else (float("nan"), float("nan")))
        print(f"{ch:>4}@{px:<4} {t_d:10.1f} {t_p:12.1f} {t_c:10.1f} {t_d / t_c:8.2f} {t_n:10.1f} "
              f"{e_d:11.2e} {e_c:11.2e} {e_n:11.2e}", flush=True)


if __name__ == "__main__":
    main()
