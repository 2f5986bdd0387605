"""Clips: frame folders (and video files, with PyAV) through tracked, smoothed face alignment.

    python -m pastiche_core align FRAMES_DIR --out OUT_DIR --video [--face largest|all|N]
        [--smoothing S] [--detect-every N]
    python -m pastiche_core stylize FRAMES_DIR --video --out OUT_DIR [stylize options] [--batch B]

Frames are the image files of a folder in natural order (``frame2`` before ``frame10``);
other files are skipped with a note. ``align --video`` writes one crop per frame named after
the frame: ``<frame stem>.png`` for the selected face, ``<frame stem>_face<K>.png`` with
``--face all`` (K = the face's track id, stable over the clip). ``stylize --video`` aligns,
stylises and pastes back every face (it implies ``--align-face --paste-back``) and writes
``<frame stem>.png`` for every frame, the frame unchanged where no face is seen.

A video file (.mp4, .mov, .mkv, .webm, .avi, ...) is read with PyAV (``pip install av``);
its frames are named ``<video stem>_<n>`` with n = 000001, 000002, ...

See :mod:`pastiche_core.faces.track` for the tracking and the smoothing.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import InputError

__all__ = [
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "natural_key",
    "list_frames",
    "Clip",
    "open_clip",
    "prepare_out_dir",
    "align_clip",
    "crop_name",
    "synthetic_clip",
    "mean_crop_change",
]

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: frame2 < frame10 (ties by the raw name)."""
    parts = re.split(r"(\d+)", name)
    return [(0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts] + [name]


def list_frames(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(image files in natural order, other entries skipped). Hidden files are ignored."""
    d = Path(folder)
    if not d.exists():
        raise InputError(f"frames folder '{d}' does not exist")
    if not d.is_dir():
        raise InputError(f"'{d}' is not a folder of frames")
    frames, skipped = [], []
    try:
        entries = sorted(os.scandir(d), key=lambda e: natural_key(e.name))
    except PermissionError:
        raise InputError(f"frames folder '{d}' cannot be read: permission denied") from None
    for e in entries:
        if e.name.startswith("."):
            continue
        p = Path(e.path)
        if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file():
            frames.append(p)
        else:
            skipped.append(p)
    if not frames:
        what = f" ({len(skipped)} other entries skipped)" if skipped else ""
        raise InputError(f"frames folder '{d}' has no image frames{what}; expected {', '.join(FRAME_EXTENSIONS)} files")
    return frames, skipped


@dataclass
class Clip:
    """A sequence of frames: ``name``, ``count`` (None when a video does not say),
    ``skipped`` (folder entries that are not frames) and :meth:`frames`, which yields
    ``(stem, rgb HxWx3 uint8, alpha HxW uint8 or None)`` in order."""

    name: str
    count: int | None
    skipped: list[Path]
    _iter: Callable[[], Iterator[tuple[str, np.ndarray, np.ndarray | None]]]
    source: Path | None = None

    def frames(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        return self._iter()


def _folder_frames(paths: list[Path]) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    from .faces.io import load_image

    first = None
    for p in paths:
        rgb, alpha, _info = load_image(p)
        if first is None:
            first = (p, rgb.shape)
        elif rgb.shape != first[1]:
            raise InputError(f"frame '{p}' is {rgb.shape[1]}x{rgb.shape[0]}, but '{first[0].name}' is "
                             f"{first[1][1]}x{first[1][0]}: all frames of a clip must have one size")
        yield p.stem, rgb, alpha


def _video_frames(path: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    import av  # noqa: PLC0415

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"'{path}' has no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                yield f"{path.stem}_{i + 1:06d}", np.ascontiguousarray(frame.to_ndarray(format="rgb24")), None
    except av.FFmpegError as exc:
        raise InputError(f"video '{path}' cannot be decoded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def open_clip(source: str | os.PathLike) -> Clip:
    """A frames folder, or a video file (needs PyAV)."""
    src = Path(source)
    if src.is_dir() or not src.exists():
        frames, skipped = list_frames(src)
        return Clip(name=str(src), count=len(frames), skipped=skipped, _iter=lambda: _folder_frames(frames), source=src)
    if src.suffix.lower() in FRAME_EXTENSIONS:
        raise InputError(f"'{src}' is one image, not a clip: give a folder of frames (or a video file) with --video")
    try:
        import av  # noqa: PLC0415
    except ImportError:
        raise InputError(f"reading the video file '{src}' needs PyAV (pip install av); "
                         "or extract its frames to a folder and give the folder") from None
    try:
        with av.open(str(src)) as container:
            if not container.streams.video:
                raise InputError(f"'{src}' has no video stream")
            n = int(container.streams.video[0].frames or 0) or None
    except av.FFmpegError as exc:
        raise InputError(f"'{src}' is not a video PyAV can read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return Clip(name=str(src), count=n, skipped=[], _iter=lambda: _video_frames(src), source=src)


def prepare_out_dir(out: str | os.PathLike, source: str | os.PathLike) -> Path:
    """The output folder of a clip: created if missing (its parent must exist), writable, and
    not the frames folder itself (output frames are named after the input frames)."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise InputError(f"output '{d}' is a file; with --video, --out is a folder for the output frames")
    if d.suffix.lower() in FRAME_EXTENSIONS and not d.exists():
        raise InputError(f"output '{d}' looks like an image file; with --video, --out is a folder for the output frames")
    src_dir = Path(source)
    # a video file's frames are named <video stem>_000001...: only a frames folder can be overwritten
    if src_dir.is_dir() and (d.exists() and os.path.samefile(d, src_dir) or os.path.abspath(d) == os.path.abspath(src_dir)):
        raise InputError(f"output folder '{d}' is the frames folder: the output frames would replace the input "
                         "frames; choose another --out")
    if not d.exists():
        parent = d.parent if str(d.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"output folder '{d}': folder '{parent}' does not exist")
        try:
            d.mkdir()
        except OSError as exc:
            raise InputError(f"output folder '{d}' cannot be created: {exc.strerror or exc}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{d}' is not writable")
    return d


def crop_name(stem: str, track_id: int, all_faces: bool) -> str:
    """The contract: ``<frame stem>.png`` for the selected face, ``<frame stem>_face<K>.png``
    with every face (K = track id)."""
    return f"{stem}_face{track_id}.png" if all_faces else f"{stem}.png"


def align_clip(clip: Clip, *, detector="dlib", size: int = 256, face: str | int = "largest",
               detect_every: int | None = None, smoothing: float | None = None, method: str = "pil"):
    """Yield ``(stem, rgb, alpha, aligned faces, tracker)`` for every frame of ``clip``; each
    aligned face carries ``params["track_id"]`` and its smoothed transform."""
    from .faces.track import DEFAULT_DETECT_EVERY, DEFAULT_SMOOTHING, FaceTracker

    tracker = FaceTracker(detector, face=face,
                          detect_every=DEFAULT_DETECT_EVERY if detect_every is None else detect_every,
                          smoothing=DEFAULT_SMOOTHING if smoothing is None else smoothing)
    for stem, rgb, alpha in clip.frames():
        yield stem, rgb, alpha, tracker.align(rgb, size=size, method=method), tracker


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def parse_smoothing(value: str) -> float:
    """argparse type for --smoothing: a number in [0, 1]."""
    import argparse

    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid smoothing '{value}' (a number from 0 = off to 1 = strongest)") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"smoothing {v} is out of range (0 = off to 1 = strongest)")
    return v


def parse_detect_every(value: str) -> int:
    """argparse type for --detect-every: a whole number >= 1."""
    import argparse

    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"invalid --detect-every '{value}' (a whole number of frames, 1 or more)")
    return int(value)


def add_video_arguments(parser, *, stylize: bool = False) -> None:
    """The clip options of ``align`` and ``stylize``."""
    from .faces.track import DEFAULT_DETECT_EVERY, DEFAULT_SMOOTHING

    parser.add_argument("--video", action="store_true",
                        help="PHOTO is a folder of frames (natural order) or a video file (needs PyAV); --out is "
                             "a folder. Faces are tracked across frames and their alignment smoothed"
                             + (" (implies --align-face --paste-back)" if stylize else
                                ": OUT/<frame>.png, or OUT/<frame>_face<K>.png with --face all (K = track id)"))
    parser.add_argument("--smoothing", type=parse_smoothing, default=DEFAULT_SMOOTHING, metavar="S",
                        help=f"with --video: smoothing of the alignment over time, 0 (off) to 1 (default {DEFAULT_SMOOTHING})")
    parser.add_argument("--detect-every", type=parse_detect_every, default=DEFAULT_DETECT_EVERY, metavar="N",
                        help=f"with --video: run the face detector every N frames and track in between "
                             f"(default {DEFAULT_DETECT_EVERY}; 1 = every frame)")
    if stylize:
        parser.add_argument("--batch", type=parse_detect_every, default=8, metavar="B",
                            help="with --video: faces stylised per generator call (default 8)")


def _note_skipped(clip: Clip) -> None:
    if clip.skipped:
        names = ", ".join(p.name for p in clip.skipped[:5]) + (", ..." if len(clip.skipped) > 5 else "")
        print(f"note: skipped {len(clip.skipped)} entries of '{clip.name}' that are not image frames: {names}",
              file=sys.stderr)


def _parse_clip_face(value) -> str | int:
    v = str(value).strip().lower()
    if v in ("largest", "all"):
        return v
    if v.isdigit():
        return int(v)
    raise InputError(f"--face '{value}' is not a choice for a clip (use largest, all or a number 0, 1, ...)")


def run_align_video(args) -> int:
    """``align FRAMES --out DIR --video``."""
    from .faces.detect import NoFaceError, get_detector
    from .faces.io import save_image

    face = _parse_clip_face(args.face)
    clip = open_clip(args.photo)
    out_dir = prepare_out_dir(args.out, args.photo)
    _note_skipped(clip)
    all_faces = face == "all"
    n_frames = n_crops = 0
    missing: list[str] = []
    tracks: set[int] = set()
    tracker = None
    t0 = time.perf_counter()
    for stem, _rgb, _alpha, aligned, tracker in align_clip(
            clip, detector=get_detector(args.detector), size=args.size, face=face,
            detect_every=args.detect_every, smoothing=args.smoothing):
        n_frames += 1
        if not aligned:
            missing.append(stem)
        for af in aligned:
            save_image(out_dir / crop_name(stem, af.params["track_id"], all_faces), af.image)
            tracks.add(af.params["track_id"])
            n_crops += 1
    dt = time.perf_counter() - t0
    if n_crops == 0:
        raise NoFaceError(f"no face found in any of the {n_frames} frames of '{clip.name}' "
                          f"(detector {tracker.detector.describe() if tracker else args.detector})")
    print(f"{out_dir}: {n_crops} crops from {n_frames} frames, {len(tracks)} face track(s) "
          f"{sorted(tracks)}, {tracker.detections} detector passes, {n_frames / max(dt, 1e-9):.1f} frames/s")
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        print(f"note: no face in {len(missing)} frame(s), no crop written: {shown}", file=sys.stderr)
    return 0


def run_stylize_video(args) -> int:
    """``stylize FRAMES --video --out DIR``: align (tracked, smoothed), stylise in batches, paste back."""
    import json

    import torch

    from .commands.common import save_png, torch_device_dtype
    from .faces.detect import get_detector
    from .faces.paste import paste_faces
    from .pipeline import StylePipeline, draw_demo_caption, exemplar_face, resolve_weights, to_model_input, to_uint8

    face = _parse_clip_face(args.face)
    batch = int(getattr(args, "batch", 8) or 8)
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    layer_w = resolve_weights(args.weights, args.structure, args.color)
    if not 0.0 <= float(args.truncation) <= 1.0:
        raise InputError(f"truncation must be in [0, 1], got {args.truncation}")
    clip = open_clip(args.photo)
    if args.exemplar and Path(args.exemplar).resolve().parent == Path(args.photo).resolve():
        print(f"note: the exemplar '{args.exemplar}' is inside the frames folder and is stylised as a frame too",
              file=sys.stderr)
    device, dtype = torch_device_dtype(args)
    pipe = StylePipeline.from_folder(args.checkpoints, args.style, device=device, dtype=dtype,
                                     low_memory=args.low_memory, generator=getattr(args, "generator", None))
    if args.exemplar is not None:
        ex_rgb = exemplar_face(args.exemplar, args.detector)
        ex_latent = (pipe.faithful_exemplar_code(ex_rgb, args.exemplar_steps) if args.exemplar_steps
                     else pipe.exemplar_code(ex_rgb))
        style_name = Path(args.exemplar).name
    else:
        ex_latent, style_name = pipe.style_code(args.style_id)
    # the folder is made once the options and the style are known good, so a refused run leaves nothing
    out_dir = prepare_out_dir(args.out, args.photo)
    _note_skipped(clip)
    space = "w+" if args.wplus else "z+"
    meta = {"pastiche:style": str(style_name),
            "pastiche:settings": json.dumps({"weights": layer_w, "truncation": args.truncation, "seed": args.seed,
                                             "wplus": args.wplus, "preserve_color": args.preserve_color,
                                             "video": {"smoothing": args.smoothing, "detect_every": args.detect_every}})}

    pending: list = []  # (stem, rgb, alpha, aligned) waiting for the generator
    counts = {"frames": 0, "faces": 0, "no_face": 0}

    def stylise(crops: list[np.ndarray]) -> list[np.ndarray]:
        content = torch.cat([to_model_input(c) for c in crops])
        instyle = pipe.encode(content, space)
        # with a seed every face gets the noise maps of a one-face call with that seed (the same
        # maps on every frame, which does not flicker), still in one generator call per batch
        seeds = None if args.seed is None else [args.seed] * len(crops)
        raw = pipe.generate(instyle, ex_latent, wplus=args.wplus, preserve_color=args.preserve_color,
                            weights=layer_w, truncation=args.truncation, seed=seeds)[0]
        return [to_uint8(r) for r in raw]

    def flush() -> None:
        crops = [af.image for _s, _r, _a, aligned in pending for af in aligned]
        styled = stylise(crops) if crops else []
        k = 0
        for stem, rgb, alpha, aligned in pending:
            if aligned:
                image = paste_faces(rgb, styled[k:k + len(aligned)], aligned, alpha=alpha)
                k += len(aligned)
            else:
                image = rgb if alpha is None else np.dstack([rgb, alpha])
            if pipe.demo:
                image = draw_demo_caption(image)
            save_png(out_dir / f"{stem}.png", image, demo=pipe.demo, text=meta)
        counts["frames"] += len(pending)
        if not args.quiet:
            total = f"/{clip.count}" if clip.count else ""
            print(f"[frames {counts['frames']}{total}] {counts['faces']} faces stylised", file=sys.stderr, flush=True)
        pending.clear()

    t0 = time.perf_counter()
    tracker = None
    for stem, rgb, alpha, aligned, tracker in align_clip(
            clip, detector=get_detector(args.detector), size=256, face=face,
            detect_every=args.detect_every, smoothing=args.smoothing):
        pending.append((stem, rgb, alpha, aligned))
        counts["faces"] += len(aligned)
        counts["no_face"] += not aligned
        if sum(len(p[3]) for p in pending) >= batch:
            flush()
    if pending:
        flush()
    dt = time.perf_counter() - t0
    label = " [DEMO WEIGHTS]" if pipe.demo else ""
    print(f"{out_dir}: {counts['frames']} frames, {counts['faces']} faces stylised, style {style_name}{label}, "
          f"{counts['frames'] / max(dt, 1e-9):.2f} frames/s")
    if counts["no_face"]:
        print(f"note: no face in {counts['no_face']} frame(s); written unchanged", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------
# measuring flicker
# --------------------------------------------------------------------------------------

def synthetic_clip(photo: np.ndarray, n: int = 24, *, window: tuple[float, float] | None = None,
                   center: tuple[float, float] | None = None, amplitude: tuple[float, float] | None = None,
                   out_width: int = 256, noise: float = 3.0, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, float]:
    """A clip made by moving a window smoothly over ``photo`` (a camera pan), with seeded
    Gaussian sensor noise of ``noise`` grey levels.

    ``window``: (width, height) in photo pixels (default a square of 0.75 x the shorter side);
    ``center``: its mean centre (default the photo's centre); ``amplitude``: how far it swings
    in x and y (default 6 % and 3 % of the shorter side). The path is one swing there and back
    in x and a half swing in y: smooth, never at constant speed. Each frame is the window
    resampled to ``out_width`` pixels wide. Returns ``(frames, offsets (n, 2), scale)``: the
    photo point P (continuous pixel coordinates) shows at frame point ``(P - offset) * scale``.
    """
    from PIL import Image

    img = Image.fromarray(np.asarray(photo, dtype=np.uint8))
    w, h = img.size
    short = min(w, h)
    ww, wh = window if window is not None else (0.75 * short, 0.75 * short)
    cx, cy = center if center is not None else (w / 2, h / 2)
    ax, ay = amplitude if amplitude is not None else (0.06 * short, 0.03 * short)
    scale = out_width / ww
    out_size = (int(out_width), int(round(wh * scale)))
    t = np.linspace(0.0, 1.0, n)
    ox = cx - ww / 2 + ax * np.sin(2 * np.pi * t)
    oy = cy - wh / 2 + ay * np.cos(np.pi * t)
    offsets = np.stack([ox, oy], axis=1)
    if ox.min() < 0 or oy.min() < 0 or ox.max() + ww > w or oy.max() + wh > h:
        raise InputError(f"the window {ww:.0f}x{wh:.0f} swinging by {ax:.0f}, {ay:.0f} px around ({cx:.0f}, {cy:.0f}) "
                         f"leaves the {w}x{h} photo")
    rng = np.random.default_rng(seed)
    frames = []
    for x0, y0 in offsets:
        # PIL samples at pixel centres: frame point U shows photo point offset + U / scale, an exact
        # sub-pixel window; a reduction is cut at full resolution first, then resized with anti-aliasing
        if scale >= 1:
            f = img.transform(out_size, Image.Transform.AFFINE, (1 / scale, 0, x0, 0, 1 / scale, y0),
                              Image.Resampling.BICUBIC)
        else:
            nw, nh = int(round(ww)), int(round(wh))
            big = img.transform((nw, nh), Image.Transform.AFFINE, (ww / nw, 0, x0, 0, wh / nh, y0),
                                Image.Resampling.BICUBIC)
            f = big.resize(out_size, Image.Resampling.LANCZOS)
        arr = np.asarray(f, dtype=np.float32)
        if noise > 0:
            arr = arr + rng.normal(0.0, noise, arr.shape).astype(np.float32)
        frames.append(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return frames, offsets, scale


def mean_crop_change(crops: list[np.ndarray]) -> float:
    """Mean absolute change (grey levels) between consecutive aligned crops: what shows as
    shaking. A still face in a moving camera would ideally give the sensor noise only."""
    if len(crops) < 2:
        return 0.0
    diffs = [np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() for a, b in zip(crops[:-1], crops[1:])]
    return float(np.mean(diffs))
