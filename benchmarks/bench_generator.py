"""Generator speed and memory: reference path vs fast path, side by side, in one run.

    python benchmarks/bench_generator.py                 # 256 and 1024, batch 1, 4 and 16, fp32, CPU, 2 threads
    python benchmarks/bench_generator.py --json          # one JSON object per line
    python benchmarks/bench_generator.py --sizes 1024 --batches 1 --dtypes float32 bfloat16
    python benchmarks/bench_generator.py --device cuda --dtypes float32 float16 bfloat16

Each configuration runs in its own subprocess so that ``peak_rss_mb`` (the process's maximum
resident set) belongs to that configuration alone. The call timed is the official
style-transfer call (dsg_b): map the exemplar's z+ code to w+, then the DualStyleGAN forward
with truncation 0.7 and the default layer weights, on the deterministic fixture weights.
Every fast-path row also reports its difference from the reference path (max |diff| and PSNR
of the [-1, 1] image), so speed and exactness are read in the same table.

Each configuration is timed ``--repeats`` times after one warm-up call and reports the fastest
(``s_per_img``), the median (``median_s``) and every repeat (``times_s``): this shared machine's
speed drifts by 15-30 % within minutes, and the minimum of several calls is the estimate least
moved by that. Before each configuration the runner waits ``--settle`` seconds, so that the
previous configuration's process (up to 11 GB for the literal paths at batch 4) has exited and
its memory is back with the kernel before the next one is timed. Every path gets the same.

Paths: ``official`` (with --official), ``reference`` (our literal ops), ``fast`` (the default
fast path), ``fast-<impl>`` for each up-sampling convolution of the fast path
(``fast-transposed``, ``fast-phase``: see ``stylegan2.UPSAMPLE_IMPLS``) and ``fast-direct`` (the
default fast path without its Winograd convolutions: see ``ModulatedConv2d.use_winograd``) and
``fast-whole`` (the default fast path with every block computed whole, not in bands of rows: see
``Generator.use_bands``). Every path runs with
the same thread count (``--threads``, default 2). At 1024 px batches above 4 run the fast paths
only (the official and reference paths would hold about 10 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fast_paths() -> tuple[list[str], list[str]]:
    """(every fast path, those timed by default: the default one and each other variant)."""
    from pastiche_core.models.stylegan2 import DEFAULT_UPSAMPLE_IMPL, UPSAMPLE_IMPLS

    variants = [f"fast-{impl}" for impl in UPSAMPLE_IMPLS]
    timed = ["fast"] + [v for v in variants if v != f"fast-{DEFAULT_UPSAMPLE_IMPL}"] + ["fast-direct", "fast-whole"]
    return ["fast"] + variants + ["fast-direct", "fast-whole"], timed


def official_model(official_dir: str, ours):
    """The official DualStyleGAN (a checkout given with --official; nothing of it is in this
    repository) with its CUDA op package swapped for its own CPU port, as the official readme's
    CPU recipe does, carrying our fixture weights."""
    import importlib

    sys.path.insert(0, official_dir)
    sys.modules["model.stylegan.op"] = importlib.import_module("model.stylegan.op_cpu")
    from model.dualstylegan import DualStyleGAN as OfficialDualStyleGAN

    model = OfficialDualStyleGAN(ours.size, 512, 8, 2, res_index=6)
    model.load_state_dict(ours.state_dict(), strict=True)
    model.eval()

    def forward(self, instyle, exstyle, truncation, truncation_latent, interp_weights, **_):
        img, _ = type(self).__call__(self, [instyle], exstyle, input_is_latent=False, z_plus_latent=True,
                                     truncation=truncation, truncation_latent=truncation_latent, use_res=True,
                                     interp_weights=list(interp_weights), randomize_noise=False)
        return img

    return _Callable(model, lambda z: model.generator.style(z.reshape(-1, 512)).reshape(z.shape), forward)


class _Callable:
    """Gives the official module the small interface the timing loop uses."""

    def __init__(self, model, map_exstyle, forward):
        self.model, self.map_exstyle, self._forward = model, map_exstyle, forward
        self.n_latent = model.n_latent

    def __call__(self, instyle, exstyle, **kw):
        return self._forward(self.model, instyle, exstyle, **kw)

    def use_fast_path(self, *a, **k):
        return self

    def to(self, device=None, dtype=None):
        self.model.to(device=device, dtype=dtype)
        return self


def run_one(size: int, batch: int, dtype_name: str, path: str, device: str, repeats: int,
            threads: int | None, compile_model: bool, reference_file: str, official_dir: str | None = None) -> dict:
    import numpy as np
    import torch

    from pastiche_core.models import DEFAULT_INTERP_WEIGHTS
    from pastiche_core.models.stylegan2 import DEFAULT_UPSAMPLE_IMPL, UPSAMPLE_IMPLS
    from pastiche_core.reference import fixture_model

    if threads:
        torch.set_num_threads(threads)  # before the official import too: both sides alike
    dtype = getattr(torch, dtype_name)
    model = fixture_model("dualstylegan", size)
    if path == "official":
        model = official_model(official_dir, model)
    rng = np.random.default_rng(0)
    n = model.n_latent
    instyle = torch.from_numpy(rng.standard_normal((batch, n, 512), dtype=np.float32))
    exstyle_z = torch.from_numpy(rng.standard_normal((batch, n, 512), dtype=np.float32))

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def forward(m, inp, ex):
        return m(inp, m.map_exstyle(ex), truncation=0.7, truncation_latent=0, interp_weights=DEFAULT_INTERP_WEIGHTS)

    # The reference path's image of the same inputs is handed over through a file, so that each
    # configuration's peak memory is its own.
    reference_image = None
    if path != "reference" and Path(reference_file).exists():
        reference_image = torch.from_numpy(np.load(reference_file))
    if path != "official":
        fast = path.startswith("fast")
        variant = path.split("-", 1)[1] if path.startswith("fast-") else None
        model.use_fast_path(fast, channels_last=fast and device == "cpu",
                            upsample=variant if variant in UPSAMPLE_IMPLS else DEFAULT_UPSAMPLE_IMPL,
                            winograd=variant != "direct", bands=variant != "whole")
    model = model.to(device=device, dtype=dtype)
    ins, ex = instyle.to(device, dtype), exstyle_z.to(device, dtype)
    call = torch.compile(model) if compile_model else model
    with torch.inference_mode():
        t0 = time.perf_counter()
        image = forward(call, ins, ex)  # warm-up (and compilation)
        sync()
        warmup = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            image = forward(call, ins, ex)
            sync()
            times.append(time.perf_counter() - t0)
    if path == "reference":
        np.save(reference_file, image.float().cpu().numpy())
    row = {"size": size, "batch": batch, "dtype": dtype_name, "path": path + ("+compile" if compile_model else ""),
           "device": device, "s_per_img": min(times) / batch, "median_s": sorted(times)[len(times) // 2],
           "times_s": [round(t, 4) for t in times],
           "warmup_s": warmup, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "threads": torch.get_num_threads()}
    if device == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if reference_image is not None:
        diff = (image.float().cpu() - reference_image).abs()
        mse = ((image.float().cpu().clamp(-1, 1) - reference_image.clamp(-1, 1)) ** 2).mean().item()
        row["max_abs_diff_vs_reference"] = diff.max().item()
        row["psnr_vs_reference_db"] = float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    all_fast, default_fast = fast_paths()
    parser.add_argument("--paths", nargs="+", default=["reference"] + default_fast, choices=["reference"] + all_fast)
    parser.add_argument("--official", metavar="DIR",
                        help="also time the official implementation from a checkout of the official DualStyleGAN "
                             "repository (its model/ folder; run with its CPU ops) in the same run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (default 5)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait before each configuration (default 2; see the module doc)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads, the same for every path (default 2; 0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the fast path")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration
    args = parser.parse_args()

    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(run_one(**cfg)))
        return 0

    configs = []
    for size in args.sizes:
        for batch in args.batches:
            for dtype in args.dtypes:
                for path in (["official"] if args.official and dtype == "float32" else []) + args.paths:
                    if path == "reference" and dtype != "float32":
                        continue  # the reference path is the fp32 yardstick
                    if size >= 1024 and batch > 4 and not path.startswith("fast"):
                        continue  # ~10 GB for the literal paths; see the module docstring
                    configs.append((size, batch, dtype, path, False))
                    if path == "fast" and args.compile:
                        configs.append((size, batch, dtype, path, True))
    if not args.json:
        print(f"{'size':>5} {'batch':>5} {'dtype':>9} {'path':>13} {'s/img':>8} {'peak RSS MB':>11} "
              f"{'max|diff| vs ref':>16} {'PSNR dB':>8}")
    rows = []
    import tempfile

    tmp = tempfile.TemporaryDirectory()
    for size, batch, dtype, path, comp in configs:
        ref_file = str(Path(tmp.name) / f"reference_{size}_{batch}.npy")
        time.sleep(args.settle)
        cfg = dict(size=size, batch=batch, dtype_name=dtype, path=path, device=args.device, repeats=args.repeats,
                   threads=args.threads, compile_model=comp, reference_file=ref_file, official_dir=args.official)
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if proc.returncode != 0:
            print(f"# {size} {batch} {dtype} {path}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            diff = row.get("max_abs_diff_vs_reference")
            psnr = row.get("psnr_vs_reference_db")
            print(f"{size:>5} {batch:>5} {dtype:>9} {row['path']:>13} {row['s_per_img']:>8.3f} {row['peak_rss_mb']:>11.0f} "
                  f"{'' if diff is None else f'{diff:.2e}':>16} {'' if psnr is None else f'{psnr:.1f}':>8}", flush=True)
    if not args.json:
        for size in args.sizes:
            for batch in args.batches:
                ref = [r for r in rows if (r["size"], r["batch"], r["path"], r["dtype"]) == (size, batch, "reference", "float32")]
                off = [r for r in rows if (r["size"], r["batch"], r["path"]) == (size, batch, "official")]
                for name in all_fast:
                    fast = [r for r in rows if (r["size"], r["batch"], r["path"], r["dtype"]) == (size, batch, name, "float32")]
                    if ref and fast:
                        print(f"# {size}px batch {batch}: {name} {ref[0]['s_per_img'] / fast[0]['s_per_img']:.2f}x the reference path")
                    if off and fast:
                        print(f"# {size}px batch {batch}: {name} {off[0]['s_per_img'] / fast[0]['s_per_img']:.2f}x the official code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
