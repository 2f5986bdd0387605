"""Winograd F(4x4, 3x3) vs the direct convolution (oneDNN, channels_last) on the generator's
dense 3x3 layer shapes: batch 1, median time per call (weight transform included), and max
|error| of each against a float64 convolution.

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
from pastiche_core.models.winograd import conv3x3_winograd  # noqa: E402

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
    torch.set_num_threads(a.threads)
    shapes = SHAPES if not a.shapes else [tuple(int(v) for v in s.split("@")) for s in a.shapes]
    print(f"{'layer':>10} {'direct ms':>10} {'winograd ms':>12} {'speedup':>8} {'err direct':>11} {'err wino':>10}")
    for ch, px in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, ch, px, px, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, generator=g) / (ch * 9) ** 0.5
        b = torch.randn(ch, generator=g)
        with torch.no_grad():
            exact = F.conv2d(x.double(), w.double(), b.double(), padding=1)
            direct = F.conv2d(x, w, b, padding=1)
            wino = conv3x3_winograd(x, w, b)
            t_d = median_ms(lambda: F.conv2d(x, w, b, padding=1), a.repeat)
            t_w = median_ms(lambda: conv3x3_winograd(x, w, b), a.repeat)
        e_d = (direct.double() - exact).abs().max().item()
        e_w = (wino.double() - exact).abs().max().item()
        print(f"{ch:>5}@{px:<4} {t_d:10.1f} {t_w:12.1f} {t_d / t_w:8.2f} {e_d:11.2e} {e_w:10.2e}", flush=True)


if __name__ == "__main__":
    main()
