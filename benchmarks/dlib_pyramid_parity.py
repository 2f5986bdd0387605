"""Does a coarse start of dlib's HOG pyramid give the whole run's boxes? (issue 13, item 2)

``pastiche_core.faces.hog_pyramid.search`` rebuilds pyramid level ``j`` with dlib's own
resizers and scans from there. This compares it with the official full run
(``detector.run(img, 1)``) on random photos: faces of random sizes (some too small for the
coarse run, some in its guard band) pasted at random places on 1500-6000 px canvases, plus
upscaled real photos. For every photo where the coarse run vouches for its result, its boxes
must be exactly the full run's boxes from levels ``j + 2`` up (box, score, subdetector and
order; a box in the guard band makes it start again lower, down to 6 levels below its
start); where it cannot (``None``), the detector runs the whole pyramid. Prints a line per
photo and the totals, and exits 1 on any mismatch.

    python benchmarks/dlib_pyramid_parity.py [SEED] [N] [--max-side 1600]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from pastiche_core.faces import hog_pyramid  # noqa: E402
from pastiche_core.faces.detect import DlibDetector  # noqa: E402

FIX = ROOT / "tests" / "fixtures"


def face_sources() -> list[Image.Image]:
    two = Image.open(FIX / "edge" / "two_faces.jpg").convert("RGB")
    return [
        Image.open(FIX / "align" / "dsg_unsplash-rDEOVtE7vOs" / "input.jpg").convert("RGB").crop((300, 0, 1324, 1024)),
        Image.open(FIX / "align" / "dsg_019706" / "input.jpg").convert("RGB"),
        two.crop((0, 0, 512, 512)),
        two.crop((512, 0, 1024, 512)),
    ]


def level_of(box, upsample: int) -> int:
    return hog_pyramid.window_level((box[2] - box[0]) * 2**upsample)


def random_photo(rng: np.random.Generator, srcs: list[Image.Image], case: int) -> np.ndarray:
    w, h = [(3000, 2000), (2000, 3000), (2600, 2600), (1536, 2304), (4000, 6000)][case % 5]
    bg = (rng.random((h // 50 + 1, w // 50 + 1, 3)) * 255).astype(np.uint8)
    canvas = Image.fromarray(bg).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(12))
    for k in range(int(rng.integers(1, 4))):
        side = int(rng.integers(min(w, h) // 30, min(w, h) * 2 // 3))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        canvas.paste(srcs[int(rng.integers(0, len(srcs)))].resize((side, side), Image.Resampling.BICUBIC), (x, y))
    return np.ascontiguousarray(np.asarray(canvas))


def real_photos() -> list[tuple[str, np.ndarray]]:
    out = []
    for name, size in (("dsg_unsplash-rDEOVtE7vOs", (1920, 2880)), ("dsg_019706", (2048, 2048))):
        with Image.open(FIX / "align" / name / "input.jpg") as im:
            rgb = im.convert("RGB")
            if name.startswith("dsg_unsplash"):
                rgb = rgb.crop((430, 0, 1113, 1024))
            out.append((f"{name} {size[0]}x{size[1]}", np.ascontiguousarray(np.asarray(rgb.resize(size, Image.Resampling.BICUBIC)))))
    with Image.open(FIX / "edge" / "two_faces.jpg") as im:
        out.append(("two_faces x3", np.ascontiguousarray(np.asarray(im.convert("RGB").resize((im.width * 3, im.height * 3))))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", nargs="?", type=int, default=1)
    ap.add_argument("n", nargs="?", type=int, default=20)
    ap.add_argument("--max-side", type=int, default=1600, help="coarse run starts at the first level at most this long")
    ap.add_argument("--retry-levels", type=int, default=6, help="how far below its start a run may start again (the detector: 6)")
    args = ap.parse_args(argv)
    det = DlibDetector()
    det._setup()
    rng = np.random.default_rng(args.seed)
    srcs = face_sources()
    photos = real_photos() + [(f"random {i}", random_photo(rng, srcs, i)) for i in range(args.n)]
    vouched = refused = bad = 0
    t_full = t_fast = 0.0
    for name, rgb in photos:
        t = time.perf_counter()
        full = det._run(rgb, 1)
        t_full += time.perf_counter() - t
        level = hog_pyramid.start_level(rgb.shape, 1, args.max_side)
        t = time.perf_counter()
        result = hog_pyramid.search(det._detector, det._dlib, rgb, upsample=1, level=level,
                                    min_level=max(3, level - args.retry_levels))
        t_fast += time.perf_counter() - t
        levels = [level_of(b, 1) for b, _s, _k in full]
        if result is None:
            refused += 1
            verdict = "refused (full run)"
        else:
            fast, start = result
            expected = [d for d, lv in zip(full, levels) if lv >= start + hog_pyramid.GUARD_LEVELS]
            ok = fast == expected
            vouched += ok
            bad += not ok
            verdict = (f"from level {start}: {len(fast)} boxes "
                       f"{'identical' if ok else 'DIFFERENT: ' + repr((fast, expected))}")
        print(f"{name:32s} {rgb.shape[1]}x{rgb.shape[0]} start level {level} (boxes >= "
              f"{hog_pyramid.smallest_exact_box(level, 1):.0f} px) full: {len(full)} boxes at levels {levels}: {verdict}",
              flush=True)
    print(f"{vouched} photos identical, {refused} refused (whole pyramid run instead), {bad} different; "
          f"dlib time: full runs {t_full:.1f} s, coarse runs {t_fast:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
