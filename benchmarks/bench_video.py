"""Flicker and speed of clip alignment: tracked + smoothed against frame by frame.

    python benchmarks/bench_video.py                      # 24-frame pans at 256 and 1024 px
    python benchmarks/bench_video.py --frames 48 --sizes 512 --stylize-frames 0

The clip is a window moved smoothly over a real photo (the fixture portrait, 1536x1024) with
seeded sensor noise (3 grey levels), resampled to frames SIZE pixels wide: the face is still in
the photo, so every change between consecutive aligned crops beyond the noise is alignment
jitter. Printed per frame size:

* change: mean absolute change between consecutive 256 px aligned crops (grey levels), frame by
  frame (``align_faces`` on every frame) and tracked (``FaceTracker``, default smoothing and
  detection every 5 frames); ratio = tracked / frame by frame (goal: at most 0.6);
* follow: the largest distance (frame pixels) between the tracked square's centre and where the
  face really is (from the known window path): a frozen square would be off by the pan;
* align frames/s for both, and ``stylize --video`` frames/s (demo weights, batch 8, PNG writing
  included) on the first --stylize-frames frames: end to end, and without the set-up (models,
  detector; timed on a one-frame run).

Not part of the test run. Times are wall-clock on this machine's CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pastiche_core.faces.align import align_faces  # noqa: E402
from pastiche_core.faces.track import DEFAULT_DETECT_EVERY, DEFAULT_SMOOTHING, FaceTracker  # noqa: E402
from pastiche_core.video import mean_crop_change, synthetic_clip  # noqa: E402

PORTRAIT = ROOT / "tests" / "fixtures" / "align" / "dsg_unsplash-rDEOVtE7vOs" / "input.jpg"
PAN = dict(window=(780, 780), center=(785, 440), amplitude=(40, 25))  # the face's square stays in frame


def bench_size(photo: np.ndarray, size: int, n: int, smoothing: float, detect_every: int, stylize_frames: int) -> dict:
    frames, offsets, k = synthetic_clip(photo, n, out_width=size, noise=3.0, seed=0, **PAN)
    t = time.perf_counter()
    per_frame = [align_faces(f, size=256)[0] for f in frames]
    t_pf = time.perf_counter() - t
    tracker = FaceTracker("dlib", smoothing=smoothing, detect_every=detect_every)
    t = time.perf_counter()
    tracked = [tracker.align(f, size=256)[0] for f in frames]
    t_tr = time.perf_counter() - t
    c_pf = mean_crop_change([a.image for a in per_frame])
    c_tr = mean_crop_change([a.image for a in tracked])

    def follow(aligned) -> float:
        centres = np.array([np.asarray(a.quad).mean(axis=0) for a in aligned]) / k + offsets  # in the photo
        return float(np.abs(centres - np.median(centres, axis=0)).max() * k)

    row = {"size": size, "frames": n, "change_pf": c_pf, "change_tr": c_tr, "ratio": c_tr / c_pf,
           "follow_pf": follow(per_frame), "follow_tr": follow(tracked), "fps_pf": n / t_pf, "fps_tr": n / t_tr,
           "detections": tracker.detections, "fps_stylize": None, "fps_stylize_steady": None}
    if stylize_frames:
        from pastiche_core.cli import main

        def run_stylize(count: int) -> float | None:
            with tempfile.TemporaryDirectory() as tmp:
                clip = Path(tmp) / "clip"
                clip.mkdir()
                for i, f in enumerate(frames[:count]):
                    Image.fromarray(f).save(clip / f"frame{i + 1:04d}.png")
                t = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                    code = main(["stylize", str(clip), "--video", "--out", str(Path(tmp) / "out"), "--checkpoints",
                                 str(Path(tmp) / "none"), "--batch", "8", "--quiet", "--smoothing", str(smoothing),
                                 "--detect-every", str(detect_every)])
                return time.perf_counter() - t if code == 0 else None

        # one frame first: the set-up (demo models, detector) is then taken out of the per-frame rate
        t1, tn = run_stylize(1), run_stylize(stylize_frames)
        if t1 is not None and tn is not None:
            row["fps_stylize"] = stylize_frames / tn
            if tn > t1 and stylize_frames > 1:  # else too few frames to tell the set-up apart
                row["fps_stylize_steady"] = (stylize_frames - 1) / (tn - t1)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="frame widths (default 256 1024)")
    ap.add_argument("--smoothing", type=float, default=DEFAULT_SMOOTHING)
    ap.add_argument("--detect-every", type=int, default=DEFAULT_DETECT_EVERY)
    ap.add_argument("--stylize-frames", type=int, default=8, help="frames for the stylize timing (0 = skip)")
    args = ap.parse_args(argv)

    import torch

    photo = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    print(f"pan over {PORTRAIT.name}, {args.frames} frames, noise 3, smoothing {args.smoothing}, "
          f"detect every {args.detect_every}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'frame':>6} {'change/frame':>13} {'change/track':>13} {'ratio':>6} {'follow px':>10} "
          f"{'align fps frame':>16} {'align fps track':>16} {'stylize fps':>14}")
    for size in args.sizes:
        r = bench_size(photo, size, args.frames, args.smoothing, args.detect_every, args.stylize_frames)
        steady = f"{r['fps_stylize_steady']:.2f}" if r["fps_stylize_steady"] else "-"
        sty = f"{r['fps_stylize']:.2f}/{steady}" if r["fps_stylize"] else "-"
        print(f"{size:>6} {r['change_pf']:>13.2f} {r['change_tr']:>13.2f} {r['ratio']:>6.2f} "
              f"{r['follow_pf']:>4.2f}/{r['follow_tr']:<5.2f} {r['fps_pf']:>16.2f} {r['fps_tr']:>16.2f} {sty:>14}")
        sys.stdout.flush()
    print("change: mean |crop(t+1) - crop(t)| of the 256 px aligned crops, grey levels; ratio = tracked / frame by "
          "frame; follow: max distance of the square's centre from the true face position, frame px "
          "(frame by frame / tracked); stylize fps: end to end / without the set-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
