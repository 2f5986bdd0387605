"""Style-transfer pipeline speed: encode, generate and the whole stylize() call at 1024.

    python benchmarks/bench_pipeline.py [--device cuda] [--dtype float32|bfloat16|float16] [--repeats 3] [--json]

Uses the deterministic fixture weights at the official size (pSp encoder with a 1024 decoder,
DualStyleGAN 1024), the official photo 081680 (1024x1024, aligned) from the test fixtures and
a style-bank entry, i.e. the official ``style_transfer.py`` call. Prints seconds per image
(best of ``--repeats`` after a warm-up) and the process's peak resident memory. ``--align``
adds face detection + alignment (needs dlib) to the whole-pipeline figure.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--align", action="store_true", help="include face detection + alignment (dlib)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    from pastiche_core.pipeline import StylePipeline, stylize, to_model_input
    from pastiche_core.reference import fixture_encoder, fixture_model
    from pastiche_core.styles import StyleBank

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    enc = fixture_encoder(1024, "z+")
    pipe = StylePipeline(None, device=device, dtype=dtype)
    pipe._encoders = {"z+": enc.to(device, dtype)}
    pipe._generator = fixture_model("dualstylegan", 1024).to(device, dtype).use_fast_path(
        True, channels_last=device.type == "cpu")
    fixtures = ROOT / "tests" / "fixtures"
    pipe._bank = StyleBank.load(fixtures / "styles" / "exstyle_code.npy")
    build_s = time.perf_counter() - t0
    with np.load(fixtures / "encoder" / "081680_uint8.npz") as z:
        photo = z["rgb"]
    x = to_model_input(photo)
    code = pipe.encode(x)
    style = pipe.bank[26]

    rows = [
        ("encode (pSp z+, 256 input)", best_of(lambda: pipe.encode(x), args.repeats, sync)),
        ("generate (DualStyleGAN 1024)", best_of(lambda: pipe.generate(code, style), args.repeats, sync)),
        ("stylize() whole pipeline" + (" + align" if args.align else ""),
         best_of(lambda: stylize(photo if not args.align else fixtures / "images" / "content_081680_256.jpg",
                                 pipeline=pipe, style_id=26, align_face=args.align), args.repeats, sync)),
    ]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    meta = {"device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(), "peak_rss_mb": round(peak)}
    if device.type == "cuda":
        meta["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    if args.json:
        for name, s in rows:
            print(json.dumps({"step": name, "s_per_img": s, **meta}))
    else:
        print(f"# {meta}  (weights built in {build_s:.1f} s)")
        for name, s in rows:
            print(f"{name:40s} {s:7.3f} s/img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
