"""Temporal face alignment for a sequence of frames: tracked faces, smoothed transforms.

Aligning every frame on its own makes pasted faces shake: dlib's landmarks jitter by a pixel
or two from frame to frame, and "the largest face" can switch between two similar faces. A
:class:`FaceTracker` instead

* runs the full detector only every ``detect_every`` frames (and whenever it has no face);
  in between it re-runs the 68-point predictor inside each face's previous box, moved with
  the face (a few ms instead of a HOG pass over the whole frame);
* matches detections to tracks by box overlap (IoU), so each face keeps one ``track_id``
  for as long as it is seen; the selected face ("largest", "N") is chosen once and kept;
* smooths the FFHQ alignment square (a similarity transform: centre, scale, angle) with
  constant-velocity filters whose gain rises with the surprise, so the jitter is filtered
  while a moving face is followed without lag (``smoothing`` 0 = off, 1 = strongest; see
  :class:`MotionFilter`);
* aligns each face with the smoothed square through the ordinary recipe (shrink, crop, pad,
  warp), so the :class:`~pastiche_core.faces.align.AlignedFace` records carry the smoothed
  transform and :func:`~pastiche_core.faces.paste.paste_faces` puts crops back with it.

It works online (one frame in, its faces out), so a clip never has to fit in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .align import AlignedFace, _as_pil_rgb, _check_size, _effective_quad, face_quad, warp_square
from .detect import DlibDetector, Face, FaceDetector, get_detector

__all__ = [
    "FaceTracker",
    "MotionFilter",
    "TrackedFace",
    "align_quad",
    "quad_params",
    "quad_from_params",
    "box_iou",
    "DEFAULT_SMOOTHING",
    "DEFAULT_DETECT_EVERY",
]

DEFAULT_SMOOTHING = 0.5
DEFAULT_DETECT_EVERY = 5


# --------------------------------------------------------------------------------------
# the alignment square as 4 numbers
# --------------------------------------------------------------------------------------

def quad_params(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ square of a face as (cx, cy, xx, xy): centre and half-width vector. The
    half-height vector is rot90 of the half-width one, so these 4 numbers are the whole
    similarity transform (position, scale, rotation)."""
    g = face_quad(landmarks)
    return np.array([g["center"][0], g["center"][1], g["x"][0], g["x"][1]], dtype=np.float64)


def quad_from_params(p: np.ndarray) -> tuple[np.ndarray, float]:
    """(quad TL, BL, BR, TR; qsize) from :func:`quad_params`' 4 numbers."""
    c = np.asarray(p[:2], dtype=np.float64)
    x = np.asarray(p[2:4], dtype=np.float64)
    y = np.array([-x[1], x[0]])
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(x[0], x[1]) * 2)


# --------------------------------------------------------------------------------------
# smoothing
# --------------------------------------------------------------------------------------

class MotionFilter:
    """Smooths the alignment square over time: centre, log-scale and angle, each with a
    constant-velocity (alpha-beta) filter whose gain opens up on surprise.

    A plain moving average lags a moving face; an alpha-beta filter (the steady state of a
    constant-velocity Kalman filter) follows steady motion without lag. The three parts are
    filtered apart because they differ: dlib's landmarks jitter mostly in the square's scale
    and angle (about 1 % of its size here, from the spread of the eye and mouth points),
    which really change slowly, while the centre is steady to a fraction of a pixel but is
    what a moving camera or head moves most. So the scale and angle get strong smoothing and
    the centre light smoothing. A residual well above the jitter (a quick turn, a stop, a cut:
    ``GATES``, in face sizes for the centre, log units and radians for the others) raises the
    gain towards 1, as a One-Euro filter does with speed, so the square never trails a real
    change. Measured on a pan over a real photo (benchmarks/bench_video.py): the crop-to-crop
    change drops to about half, and the square follows the face to within 0.5 % of its size
    (under a pixel in 256 px frames), about as closely as frame-by-frame alignment does.

    ``strength`` in [0, 1]: 0 passes the squares through unchanged, 1 is the strongest.
    """

    #: residual at which the gain is fully open: centre (fraction of the face size), log-scale, angle (rad)
    GATES = (0.01, 0.1, 0.1)

    def __init__(self, strength: float = DEFAULT_SMOOTHING) -> None:
        s = float(strength)
        if not 0.0 <= s <= 1.0:
            raise InputError(f"smoothing must be in [0, 1], got {strength}")
        self.strength = s
        self.alphas = (1.0 - 0.8 * s, 0.01 ** s, 0.01 ** s)  # centre, scale, angle; 1 = no smoothing
        self.level: np.ndarray | None = None
        self.trend: np.ndarray | None = None

    def reset(self) -> None:
        self.level = self.trend = None

    @staticmethod
    def _to_similarity(p: np.ndarray) -> np.ndarray:
        return np.array([p[0], p[1], np.log(max(np.hypot(p[2], p[3]), 1e-9)), np.arctan2(p[3], p[2])])

    @staticmethod
    def _from_similarity(q: np.ndarray) -> np.ndarray:
        r = np.exp(q[2])
        return np.array([q[0], q[1], r * np.cos(q[3]), r * np.sin(q[3])])

    def __call__(self, params: np.ndarray) -> np.ndarray:
        """Next square (cx, cy, xx, xy, as :func:`quad_params`) -> its smoothed value."""
        p = np.asarray(params, dtype=np.float64)
        if self.strength == 0.0:
            return p.copy()
        z = self._to_similarity(p)
        if self.level is None:
            self.level, self.trend = z, np.zeros(4)
            return p.copy()
        pred = self.level + self.trend
        resid = z - pred
        resid[3] = (resid[3] + np.pi) % (2 * np.pi) - np.pi  # the angle wraps
        qsize = 2.0 * np.exp(pred[2])
        level, trend = pred.copy(), self.trend.copy()
        for idx, alpha, gate, unit in (([0, 1], self.alphas[0], self.GATES[0], qsize),
                                       ([2], self.alphas[1], self.GATES[1], 1.0),
                                       ([3], self.alphas[2], self.GATES[2], 1.0)):
            surprise = float(np.abs(resid[idx]).max()) / unit / gate
            a = alpha + (1.0 - alpha) * min(1.0, surprise * surprise)
            b = a * a / (2.0 - a)  # Benedict-Bordner: critically damped for this alpha
            level[idx] = pred[idx] + a * resid[idx]
            trend[idx] = trend[idx] + b * resid[idx]
        self.level, self.trend = level, trend
        return self._from_similarity(level)


# --------------------------------------------------------------------------------------
# alignment from a given square
# --------------------------------------------------------------------------------------

def align_quad(
    image,
    quad: np.ndarray,
    qsize: float,
    *,
    size: int = 256,
    transform_size: int | None = None,
    method: str = "pil",
    face: Face | None = None,
) -> AlignedFace:
    """Align one face from its square (steps 3-6 of the recipe: shrink, crop, pad, warp).

    With the square of :func:`~pastiche_core.faces.align.face_quad` this gives exactly the
    crop of :func:`~pastiche_core.faces.align.align_from_landmarks`."""
    img = _as_pil_rgb(image)
    size, ts = _check_size(size, transform_size)
    if method not in ("pil", "torch"):
        raise InputError(f"alignment method '{method}' is unknown (choose 'pil' or 'torch')")
    quad = np.asarray(quad, dtype=np.float64)
    warped, quad_final, params = warp_square(img, quad, float(qsize), size, ts, method)
    params.update(quad_source=quad.tolist(), output_size=size, transform_size=ts, method=method)
    return AlignedFace(
        image=warped, size=size, quad=quad,
        quad_effective=_effective_quad(quad_final, params), qsize=float(qsize), face=face, params=params,
    )


# --------------------------------------------------------------------------------------
# tracking
# --------------------------------------------------------------------------------------

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _spread(lm: np.ndarray) -> float:
    return float(np.sqrt(((lm - lm.mean(axis=0)) ** 2).sum(axis=1).mean()))


@dataclass
class _Track:
    id: int
    face: Face
    box: tuple[float, float, float, float]
    filt: MotionFilter
    misses: int = 0
    first_frame: int = 0
    smoothed: np.ndarray | None = None


@dataclass
class TrackedFace:
    """One face in one frame: its stable ``track_id``, the frame's raw :class:`Face`, the raw and
    smoothed square parameters (see :func:`quad_params`), and how it was found this frame
    (``"detect"`` or ``"track"``)."""

    track_id: int
    face: Face
    raw: np.ndarray
    smoothed: np.ndarray
    source: str
    selected: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def quad(self) -> np.ndarray:
        return quad_from_params(self.smoothed)[0]

    @property
    def qsize(self) -> float:
        return quad_from_params(self.smoothed)[1]


class FaceTracker:
    """Online face tracker + alignment smoother; feed frames in order with :meth:`update`.

    ``face``: "largest" (default: the largest face when the clip's first face appears, kept
    while it is seen), "all", or N (the N-th largest at that moment, 0-based).
    ``detect_every``: full detection every N frames (1 = every frame); between them the
    landmarks are re-predicted in the tracked boxes (dlib only; other detectors detect every
    frame). ``smoothing``: the :class:`MotionFilter` strength. ``max_misses``: detections in a
    row a track may miss before it is dropped.
    """

    def __init__(
        self,
        detector: str | FaceDetector = "dlib",
        *,
        face: str | int = "largest",
        detect_every: int = DEFAULT_DETECT_EVERY,
        smoothing: float = DEFAULT_SMOOTHING,
        iou_threshold: float = 0.3,
        max_misses: int = 1,
    ) -> None:
        if isinstance(face, str) and face.isdigit():
            face = int(face)
        if not (face in ("largest", "all") or (isinstance(face, int) and not isinstance(face, bool) and face >= 0)):
            raise InputError(f"face choice '{face}' is unknown for a clip (use largest, all or a number 0, 1, ...)")
        if int(detect_every) < 1:
            raise InputError(f"detect_every must be at least 1, got {detect_every}")
        MotionFilter(smoothing)  # validates the strength
        self.detector = get_detector(detector)
        self.face = face
        self.detect_every = int(detect_every)
        self.smoothing = float(smoothing)
        self.iou_threshold = float(iou_threshold)
        self.max_misses = int(max_misses)
        self.can_track = isinstance(self.detector, DlibDetector)
        self.tracks: list[_Track] = []
        self.selected: int | None = None  # track id of the chosen face (not for "all")
        self.frame = 0
        self._next_id = 0
        self._since_detect = 0
        self.detections = 0  # full detector passes run (for reports and benchmarks)

    # -- per frame -------------------------------------------------------------------
    def update(self, rgb: np.ndarray) -> list[TrackedFace]:
        """Process the next frame (HxWx3 uint8); returns its faces, selected ones only, in
        track-id order."""
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InputError(f"a frame must be an HxWx3 uint8 RGB image, got {arr.dtype} {arr.shape}")
        need_detect = (
            not self.can_track
            or not self.tracks
            or self._since_detect >= self.detect_every - 1
            or (self.face != "all" and self.selected is None)
        )
        if need_detect:
            sources = self._detect(arr)
            self._since_detect = 0
        else:
            sources = self._follow(arr)
            self._since_detect += 1
        self._select()
        out = []
        for t in sorted(self.tracks, key=lambda t: t.id):
            if t.misses:
                continue  # not seen in this frame
            if self.face != "all" and t.id != self.selected:
                continue
            raw = quad_params(t.face.landmarks)
            t.smoothed = t.filt(raw)
            out.append(TrackedFace(track_id=t.id, face=t.face, raw=raw, smoothed=t.smoothed, source=sources[t.id]))
        self.frame += 1
        return out

    def _detect(self, arr: np.ndarray) -> dict[int, str]:
        faces = list(self.detector.detect(arr))
        self.detections += 1
        pairs = sorted(
            ((box_iou(t.box, f.box), ti, fi) for ti, t in enumerate(self.tracks) for fi, f in enumerate(faces)),
            reverse=True,
        )
        used_t, used_f = set(), set()
        for iou, ti, fi in pairs:
            if iou < self.iou_threshold or ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            t = self.tracks[ti]
            t.face, t.box, t.misses = faces[fi], faces[fi].box, 0
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.misses += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]
        # new faces, largest first, so that ids follow size among faces that appear together
        new = sorted((f for fi, f in enumerate(faces) if fi not in used_f), key=lambda f: -face_quad(f.anchors)["qsize"])
        for f in new:
            self.tracks.append(_Track(id=self._next_id, face=f, box=f.box, filt=MotionFilter(self.smoothing),
                                      first_frame=self.frame))
            self._next_id += 1
        return {t.id: "detect" for t in self.tracks}

    def _follow(self, arr: np.ndarray) -> dict[int, str]:
        """Between detections: re-run the landmark predictor in each box, then move the box
        with the landmarks (translation and scale) for the next frame."""
        h, w = arr.shape[:2]
        keep = []
        for t in self.tracks:
            if t.misses:
                keep.append(t)  # lost at the last detection: wait for the next one
                continue
            old = np.asarray(t.face.landmarks, dtype=np.float64)
            box = tuple(int(round(v)) for v in t.box)
            lm = self.detector.landmarks(arr, box)
            new = lm.astype(np.float64)
            shift = new.mean(axis=0) - old.mean(axis=0)
            ratio = _spread(new) / max(_spread(old), 1e-6)
            cx, cy = (t.box[0] + t.box[2]) / 2 + shift[0], (t.box[1] + t.box[3]) / 2 + shift[1]
            hw, hh = (t.box[2] - t.box[0]) / 2 * ratio, (t.box[3] - t.box[1]) / 2 * ratio
            if not (0 <= cx < w and 0 <= cy < h) or hw < 4:
                continue  # the face left the frame: drop the track
            t.box = (cx - hw, cy - hh, cx + hw, cy + hh)
            t.face = Face(box=t.box, score=t.face.score, landmarks=lm, index=t.face.index,
                          detector=t.face.detector, detect_pass="tracked")
            keep.append(t)
        self.tracks = keep
        return {t.id: "track" for t in self.tracks}

    def _select(self) -> None:
        if self.face == "all":
            return
        ids = {t.id for t in self.tracks if not t.misses}
        if self.selected in ids:
            return
        if self.selected is not None and any(t.id == self.selected for t in self.tracks):
            return  # briefly unseen: keep it selected until it is dropped
        visible = sorted((t for t in self.tracks if not t.misses), key=lambda t: -face_quad(t.face.anchors)["qsize"])
        n = 0 if self.face == "largest" else int(self.face)
        self.selected = visible[n].id if len(visible) > n else None

    # -- alignment -------------------------------------------------------------------
    def align(
        self, rgb: np.ndarray, *, size: int = 256, transform_size: int | None = None, method: str = "pil",
        antialias: bool = True,
    ) -> list[AlignedFace]:
        """:meth:`update` with the frame, then align each returned face with its smoothed
        square. Each result has ``params["track_id"]``, ``params["raw_quad"]`` (the square of
        this frame's own landmarks) and ``params["tracking"]`` ("detect" or "track").

        ``antialias`` (when ``transform_size`` is not given): a face more than twice the crop
        size is warped at 2-4x the crop size and then LANCZOS-reduced. The official recipe
        warps straight to the crop size (no pre-filter below its 2x shrink step), which
        aliases: a sub-pixel move of the face then changes the crop's fine texture from frame
        to frame, a flicker no smoothing of the transform removes (measured on 1024 px frames:
        the crop-to-crop change with a perfectly still transform halves)."""
        out = []
        for tf in self.update(rgb):
            quad, qsize = quad_from_params(tf.smoothed)
            ts = transform_size
            if ts is None and antialias:
                ts = int(size) * max(1, min(4, int(qsize // int(size))))
            af = align_quad(rgb, quad, qsize, size=size, transform_size=ts, method=method, face=tf.face)
            af.index = tf.track_id
            af.params.update(track_id=tf.track_id, tracking=tf.source,
                             raw_quad=quad_from_params(tf.raw)[0].tolist(), smoothing=self.smoothing,
                             detector=self.detector.describe(), frame=self.frame - 1)
            out.append(af)
        return out
