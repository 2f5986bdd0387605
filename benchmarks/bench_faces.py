"""Time face detection, alignment and paste-back per photo, for every detector usable here.

    python benchmarks/bench_faces.py                 # the test fixtures' photos
    python benchmarks/bench_faces.py a.jpg b.png     # your photos
    python benchmarks/bench_faces.py --huge          # also a generated 6000x4000 photo (target: < 15 s
                                                     # to align; the official full-size HOG takes ~18 s)
    python benchmarks/bench_faces.py --repeat 3 --size 1024
    python benchmarks/bench_faces.py --large         # dlib on phone-size photos: whole pyramid, default, 2048 px copy

Times are wall-clock seconds, best of --repeat, on a warm detector (model loading is shown
once per backend). Detection uses our decoding (``detect`` on the loaded array); "align" is
the recipe for the largest face with the PIL reference warp and with the torch warp.
Not part of the test run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pastiche_core.errors import PasticheError  # noqa: E402
from pastiche_core.faces import align as falign  # noqa: E402
from pastiche_core.faces.detect import available_detectors, get_detector  # noqa: E402
from pastiche_core.faces.io import load_image  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
DEFAULT_PHOTOS = [
    FIX / "align" / "dsg_unsplash-rDEOVtE7vOs" / "input.jpg",
    FIX / "align" / "dsg_019706" / "input.jpg",
    FIX / "edge" / "two_faces.jpg",
    FIX / "edge" / "face_at_border.jpg",
    FIX / "edge" / "tiny_face_60px.jpg",
]


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--huge", action="store_true", help="add a generated 6000x4000 photo")
    ap.add_argument("--fast", action="store_true", help="dlib: detect on a 2048 px copy (detect_max_side=2048)")
    ap.add_argument("--large", action="store_true",
                    help="only dlib on generated large photos, largest face: the whole pyramid, the default "
                         "(coarse pyramid start, exact) and the opt-in detect_max_side=2048 (time, landmark shift, crop PSNR)")
    args = ap.parse_args(argv)
    if args.large:
        return bench_large(args.repeat)

    photos = list(args.photos) or [p for p in DEFAULT_PHOTOS if p.exists()]
    tmp = None
    if args.huge:
        tmp = tempfile.TemporaryDirectory()
        huge = Path(tmp.name) / "huge_6000x4000.jpg"
        with Image.open(DEFAULT_PHOTOS[0]) as im:
            im.convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC).save(huge, quality=90)
        photos.append(huge)

    import torch

    print(f"torch threads: {torch.get_num_threads()}; output size {args.size}; best of {args.repeat}")
    for name, reason in available_detectors().items():
        if reason:
            print(f"\n[{name}] unavailable: {reason}")
            continue
        opts = {"detect_max_side": 2048} if (name == "dlib" and args.fast) else {}
        det = get_detector(name, **opts)
        t = time.perf_counter()
        try:
            det.detect(np.zeros((64, 64, 3), np.uint8))  # loads the model
        except PasticheError as exc:
            print(f"\n[{name}] unavailable: {exc}")
            continue
        print(f"\n[{name}] {det.describe()}; model load + first call {time.perf_counter() - t:.2f} s")
        print(f"{'photo':34s} {'size':>10s} {'load':>6s} {'detect':>7s} {'faces':>5s} {'align pil':>9s} {'align torch':>11s} {'paste':>6s}")
        for p in photos:
            try:
                t_load, (rgb, _alpha, _info) = best_of(lambda: load_image(p), args.repeat)
            except PasticheError as exc:
                print(f"{p.name[:34]:34s} error: {exc}")
                continue
            t_det, faces = best_of(lambda: det.detect(rgb), args.repeat)
            label = f"{p.parent.name}/{p.name}" if p.name == "input.jpg" else p.name
            row = f"{label[-34:]:34s} {rgb.shape[1]:>5d}x{rgb.shape[0]:<4d} {t_load:6.2f} {t_det:7.2f} {len(faces):5d}"
            if not faces:
                print(row + "   (no face)")
                continue
            t_pil, aligned = best_of(lambda: falign.align_faces(rgb, faces=faces, size=args.size), args.repeat)
            t_torch, _ = best_of(lambda: falign.align_faces(rgb, faces=faces, size=args.size, method="torch"), args.repeat)
            from pastiche_core.faces.paste import paste_faces

            t_paste, _ = best_of(lambda: paste_faces(rgb, [a.image for a in aligned], aligned), args.repeat)
            print(row + f" {t_pil:9.2f} {t_torch:11.2f} {t_paste:6.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def large_photos() -> list[tuple[str, np.ndarray]]:
    """Phone-size test photos made from the fixture portrait (as tests/test_faces_large.py)."""
    src = FIX / "align" / "dsg_unsplash-rDEOVtE7vOs" / "input.jpg"
    with Image.open(src) as im:
        im = im.convert("RGB")
        portrait = im.crop((430, 0, 1113, 1024))
        face = im.crop((300, 0, 1324, 1024))
    out = []
    for size in [(1920, 2880), (4000, 6000)]:
        out.append((f"portrait {size[0]}x{size[1]}", np.asarray(portrait.resize(size, Image.Resampling.BICUBIC))))
    out.append(("landscape 2880x1920", np.asarray(im.resize((2880, 1920), Image.Resampling.BICUBIC))))
    for canvas, at, label in [((4000, 3000), (200, 150), "face top-left"), ((3000, 2200), (2080, 1280), "face bottom-right")]:
        photo = Image.new("RGB", canvas, (96, 120, 88))
        photo.paste(face.resize((900, 900), Image.Resampling.BICUBIC), at)
        out.append((f"{canvas[0]}x{canvas[1]} {label}", np.asarray(photo)))
    return out


def bench_large(repeat: int) -> int:
    """Largest-face detection + 68 landmarks on phone-size photos, three ways side by side:
    the whole pyramid (the official run), the default (a coarse start of dlib's own pyramid,
    exact) and the opt-in shortcut (detect_max_side=2048: a scaled copy): time, and the
    landmark shift and crop PSNR of each against the official face."""
    from pastiche_core.faces.detect import DlibDetector

    exact, fast = DlibDetector(), DlibDetector(detect_max_side=2048)
    exact.detect(np.zeros((64, 64, 3), np.uint8))  # load the models once
    print(f"dlib HOG upsample 1 + 68 landmarks, largest face; best of {repeat}")
    print(f"{'photo':30s} {'whole':>7s} {'default':>8s} {'2048 copy':>9s}   default vs whole      copy vs whole")

    def largest(faces):
        return falign.select_faces(faces, "largest")

    for label, rgb in large_photos():
        t_whole, ref = best_of(lambda: largest(exact.detect(rgb)), repeat)
        t_default, got = best_of(lambda: largest(exact.detect(rgb, largest_only=True)), repeat)
        how = exact.last_search
        t_copy, cheap = best_of(lambda: largest(fast.detect(rgb)), repeat)
        cells = []
        for other in (got, cheap):
            if not other or not ref:
                cells.append(f"{'no face':>17s}")
                continue
            shift = float(np.abs(other[0].landmarks - ref[0].landmarks).max())
            p = psnr(falign.align_faces(rgb, faces=other)[0].image, falign.align_faces(rgb, faces=ref)[0].image)
            cells.append(f"{shift:4.0f} px {p:6.1f} dB")
        print(f"{label:30s} {t_whole:6.2f}s {t_default:7.2f}s {t_copy:8.2f}s   {cells[0]}   {cells[1]}  ({how})")
    return 0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


if __name__ == "__main__":
    sys.exit(main())
