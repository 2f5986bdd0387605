"""FFHQ face alignment, as the official DualStyleGAN aligner does it (see ALIGNMENT.md).

The recipe, step by step (each step is a small function below):

1. anchors: eye centres (mean of iBUG points 36-41 / 42-47) and outer mouth corners (48, 54);
2. oriented square: half-width ``x`` along ``normalize(e2e - rot90(e2m))`` of length
   ``max(2|e2e|, 1.8|e2m|)``, half-height ``y = rot90(x)``, centre ``eye_avg + 0.1 e2m``;
3. shrink big faces: whole image LANCZOS-resized by ``floor(qsize / size / 2)`` when >= 2;
4. crop to the quad plus a border of ``max(rint(0.1 qsize), 3)``;
5. pad faces near or past an edge: reflect pad, blur (sigma ``0.02 qsize``) and fade to the
   median colour with a distance mask;
6. bilinear quad warp to ``size`` x ``size``.

Two warps for step 6: ``method="pil"`` (the reference: PIL's QUAD/BILINEAR transform, which
reproduces the official 256 crops to the bit) and ``method="torch"`` (a batched
``grid_sample`` in float64 that imitates PIL's sampling rules: centre convention, clamped
neighbours, zero outside, values truncated; it matches the official crops bit-for-bit on
both fixtures, but only the PIL path is the reference). Steps 1-5 are shared, and are
numpy/PIL with the official numerics (float32 image, numpy-2 type promotion, and
scipy.ndimage's Gaussian, or an equivalent numpy one when scipy is not installed).

Each result carries its forward transform: ``quad`` (the official quad, corners TL, BL, BR,
TR in source pixels), ``quad_effective`` (where the crop's corners really sit in the source
once the shrink step's half-pixel shift is accounted for) and :meth:`AlignedFace.matrix`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from .detect import (
    OFFICIAL_DECODE_FORMATS, DlibDetector, Face, FaceDetector, NoFaceError, anchors_from_landmarks, get_detector,
)
from .io import load_image

__all__ = [
    "AlignedFace",
    "face_quad",
    "align_from_landmarks",
    "align_faces",
    "align_file",
    "select_faces",
    "order_faces",
    "parse_face_spec",
    "FACE_ORDERS",
    "gaussian_filter_reference",
    "FACE_CHOICES",
]

FACE_CHOICES = ("largest", "all", "official", "best")


# --------------------------------------------------------------------------------------
# step 1-2: anchors and the oriented square
# --------------------------------------------------------------------------------------

def _rot90(v: np.ndarray) -> np.ndarray:
    """(vx, vy) -> (-vy, vx)."""
    return np.array([-v[1], v[0]], dtype=np.float64)


def face_quad(landmarks_or_anchors: np.ndarray) -> dict[str, Any]:
    """The oriented square of the FFHQ recipe for one face.

    Returns a dict with the anchors, ``center``, ``x``, ``y``, ``quad`` (4, 2) and ``qsize``,
    all in the coordinates of the landmarks.
    """
    a = anchors_from_landmarks(landmarks_or_anchors)
    eye_left, eye_right, mouth_left, mouth_right = a
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - _rot90(eye_to_mouth)
    x = x / np.hypot(x[0], x[1])
    x = x * max(np.hypot(eye_to_eye[0], eye_to_eye[1]) * 2.0, np.hypot(eye_to_mouth[0], eye_to_mouth[1]) * 1.8)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = float(np.hypot(x[0], x[1]) * 2)
    return {
        "eye_left": eye_left, "eye_right": eye_right,
        "mouth_left": mouth_left, "mouth_right": mouth_right,
        "center": c, "x": x, "y": y, "quad": quad, "qsize": qsize,
    }


# --------------------------------------------------------------------------------------
# step 5 helper: a Gaussian with scipy.ndimage's numerics
# --------------------------------------------------------------------------------------

def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (float(sigma) * float(sigma)) * t * t)
    return w / w.sum()


def _blur_axis_numpy(img: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Correlate float32 ``img`` with symmetric ``weights`` along ``axis`` ('reflect' edges:
    d c b a | a b c d | d c b a), accumulating in float64, result float32."""
    r = len(weights) // 2
    n = img.shape[axis]
    # half-sample symmetric index map, valid for any radius
    idx = np.arange(-r, n + r)
    period = 2 * n
    idx = np.mod(idx, period)
    idx = np.where(idx >= n, period - 1 - idx, idx)
    ext = np.take(img, idx, axis=axis).astype(np.float64)

    def sl(start: int) -> tuple:
        s = [slice(None)] * img.ndim
        s[axis] = slice(start, start + n)
        return tuple(s)

    acc = ext[sl(r)] * weights[r]
    for j in range(1, r + 1):
        acc += (ext[sl(r + j)] + ext[sl(r - j)]) * weights[r + j]
    return acc.astype(np.float32)


def gaussian_filter_reference(img: np.ndarray, sigma: float, *, use_scipy: bool | None = None) -> np.ndarray:
    """Blur an HxWxC float32 image over H and W like
    ``scipy.ndimage.gaussian_filter(img, [sigma, sigma, 0])`` (truncate 4, 'reflect').

    Uses scipy when it is installed (``use_scipy=None``), else an equivalent numpy path.
    """
    img = np.asarray(img, dtype=np.float32)
    if use_scipy is None or use_scipy:
        try:
            from scipy.ndimage import gaussian_filter  # noqa: PLC0415
        except ImportError:
            if use_scipy:
                raise
        else:
            return gaussian_filter(img, [sigma, sigma, 0])
    if sigma <= 1e-15:
        return img.copy()
    w = _gaussian_weights(sigma)
    out = np.empty_like(img)
    for ch in range(img.shape[2]):  # per channel keeps the float64 temporaries small
        plane = img[:, :, ch]
        plane = _blur_axis_numpy(plane, w, 0)
        out[:, :, ch] = _blur_axis_numpy(plane, w, 1)
    return out


# --------------------------------------------------------------------------------------
# steps 3-5 (shared) and 6 (two warps)
# --------------------------------------------------------------------------------------

def _prepare(img: Image.Image, quad: np.ndarray, qsize: float, output_size: int, enable_padding: bool = True):
    """Shrink, crop and pad: returns (PIL image to warp, quad in its coordinates, params)."""
    params: dict[str, Any] = {"input_size": list(img.size)}
    quad = quad.copy()

    # 3. shrink
    shrink = int(np.floor(qsize / output_size * 0.5))
    params["shrink"] = shrink
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    params["shrunk_size"] = list(img.size)

    # 4. crop
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    crop = (
        max(int(lo[0]) - border, 0),
        max(int(lo[1]) - border, 0),
        min(int(hi[0]) + border, img.size[0]),
        min(int(hi[1]) + border, img.size[1]),
    )
    params["border"] = border
    params["crop"] = list(crop)
    params["crop_applied"] = bool(crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1])
    if params["crop_applied"]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # 5. pad
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad_raw = (
        max(-int(lo[0]) + border, 0),
        max(-int(lo[1]) + border, 0),
        max(int(hi[0]) - img.size[0] + border, 0),
        max(int(hi[1]) - img.size[1] + border, 0),
    )
    params["pad_raw"] = list(pad_raw)
    params["pad_applied"] = bool(enable_padding and max(pad_raw) > border - 4)
    params["pad"] = [0, 0, 0, 0]
    params["blur_sigma"] = None
    if params["pad_applied"]:
        pad = np.maximum(np.asarray(pad_raw, dtype=np.int64), int(np.rint(qsize * 0.3)))
        pl, pt, pr, pb = (int(v) for v in pad)
        arr = np.pad(np.asarray(img, dtype=np.float32), ((pt, pb), (pl, pr), (0, 0)), mode="reflect")
        h, w = arr.shape[:2]
        # distance mask (float64, as numpy 2 promotes float32 / int64): 1 at the outer edge,
        # 0 at the original image edge, negative inside
        xs = np.arange(w, dtype=np.float64)[None, :, None]
        ys = np.arange(h, dtype=np.float64)[:, None, None]
        mask = np.maximum(
            1.0 - np.minimum(xs / pl, (w - 1 - xs) / pr),
            1.0 - np.minimum(ys / pt, (h - 1 - ys) / pb),
        )
        sigma = qsize * 0.02
        blurred = gaussian_filter_reference(arr, sigma)
        arr = (arr.astype(np.float64) + (blurred - arr).astype(np.float64) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)).astype(np.float32)
        median = np.median(arr, axis=(0, 1))  # float32, per channel
        arr = (arr.astype(np.float64) + (median - arr).astype(np.float64) * np.clip(mask, 0.0, 1.0)).astype(np.float32)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
        quad += pad[:2]
        params["pad"] = [pl, pt, pr, pb]
        params["blur_sigma"] = float(sigma)

    params["quad_final"] = quad.tolist()
    params["transform_source_size"] = list(img.size)
    return img, quad, params


def _warp_pil(img: Image.Image, quad: np.ndarray, transform_size: int) -> Image.Image:
    return img.transform(
        (transform_size, transform_size), Image.Transform.QUAD, tuple((quad + 0.5).flatten().tolist()),
        Image.Resampling.BILINEAR,
    )


def quad_sampling_grid(quads: np.ndarray, size: int) -> np.ndarray:
    """Source pixel coordinates (x, y) sampled by each output pixel of a ``size`` crop:
    (N, size, size, 2) float64, PIL's QUAD conventions (pixel centres at +0.5)."""
    q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2) + 0.5
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    u = t[None, None, :, None]  # along x
    v = t[None, :, None, None]  # along y
    tl, bl, br, tr = (q[:, i][:, None, None, :] for i in range(4))
    return tl + (tr - tl) * u + (bl - tl) * v + (br - bl - tr + tl) * u * v


def warp_quads_torch(image: np.ndarray, quads: np.ndarray, size: int) -> np.ndarray:
    """Batched bilinear quad warp of one HxWx3 uint8 image with torch ``grid_sample``,
    imitating PIL (clamped neighbours, zero outside, values truncated): (N, size, size, 3)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    img = np.asarray(image)
    h, w = img.shape[:2]
    grid = quad_sampling_grid(quads, size)  # continuous source coords
    n = grid.shape[0]
    inside = (grid[..., 0] >= 0) & (grid[..., 0] < w) & (grid[..., 1] >= 0) & (grid[..., 1] < h)
    norm = np.empty_like(grid)
    norm[..., 0] = grid[..., 0] / w * 2.0 - 1.0  # align_corners=False normalisation
    norm[..., 1] = grid[..., 1] / h * 2.0 - 1.0
    src = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].to(torch.float64)
    out = F.grid_sample(
        src.expand(n, -1, -1, -1), torch.from_numpy(norm), mode="bilinear", padding_mode="border", align_corners=False
    )
    out = torch.floor(out + 1e-9).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = out * inside[..., None]
    return np.ascontiguousarray(out.astype(np.uint8))


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------

@dataclass
class AlignedFace:
    """One aligned crop and how it maps back into the source photo.

    ``image``: size x size x 3 uint8. ``quad``: the official quad (TL, BL, BR, TR corners, in
    source pixels). ``quad_effective``: the same corners where the crop really samples
    (differs from ``quad`` by a half pixel when the shrink step ran). ``landmarks`` and
    ``anchors`` are in source pixels. ``params`` records every recipe step.
    """

    image: np.ndarray
    size: int
    quad: np.ndarray
    quad_effective: np.ndarray
    qsize: float
    face: Face | None = None
    params: dict[str, Any] = field(default_factory=dict)
    index: int = 0

    @property
    def landmarks(self) -> np.ndarray | None:
        return None if self.face is None else self.face.landmarks

    @property
    def anchors(self) -> np.ndarray | None:
        return None if self.face is None else self.face.anchors

    def matrix(self, size: int | None = None) -> np.ndarray:
        """3x3 matrix taking pixel (x, y) of a ``size`` x ``size`` version of this crop
        (default: the crop's own size) to source-image pixel coordinates."""
        s = float(size or self.size)
        q = self.quad_effective
        ex = q[3] - q[0]  # TL -> TR
        ey = q[1] - q[0]  # TL -> BL
        m = np.eye(3)
        m[:2, 0] = ex / s
        m[:2, 1] = ey / s
        m[:2, 2] = q[0] + 0.5 * (ex + ey) / s
        return m

    def inverse_matrix(self, size: int | None = None) -> np.ndarray:
        """3x3 matrix taking source-image pixels to pixels of a ``size`` crop."""
        return np.linalg.inv(self.matrix(size))


def _effective_quad(quad_final: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    q = np.asarray(quad_final, dtype=np.float64).copy()
    q -= np.asarray(params["pad"][:2], dtype=np.float64)
    if params["crop_applied"]:
        q += np.asarray(params["crop"][:2], dtype=np.float64)
    if params["shrink"] > 1:
        sx = params["input_size"][0] / params["shrunk_size"][0]
        sy = params["input_size"][1] / params["shrunk_size"][1]
        q = (q + 0.5) * np.array([sx, sy]) - 0.5
    return q


def _as_pil_rgb(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"alignment needs an HxWx3 uint8 RGB image, got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _check_size(size: int, transform_size: int | None) -> tuple[int, int]:
    size = int(size)
    if size < 8 or size > 8192:
        raise InputError(f"alignment size {size} is out of range (8-8192)")
    ts = int(transform_size or size)
    if ts < size:
        raise InputError(f"transform_size {ts} must be at least the output size {size}")
    return size, ts


def warp_square(img: Image.Image, quad: np.ndarray, qsize: float, size: int, transform_size: int,
                method: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Steps 3-6 of the recipe on one square (shrink, crop, pad, warp, then LANCZOS down to
    ``size``): the crop as HxWx3 uint8, the final quad and the step parameters. Shared by the
    per-photo aligner and the clip tracker, so both give the same crop for the same square."""
    src, quad_final, params = _prepare(img, quad, float(qsize), transform_size)
    if method == "pil":
        warped = _warp_pil(src, quad_final, transform_size)
    else:
        warped = Image.fromarray(warp_quads_torch(np.asarray(src), quad_final[None], transform_size)[0], "RGB")
    if size < transform_size:
        warped = warped.resize((size, size), Image.Resampling.LANCZOS)
    return np.array(warped, dtype=np.uint8), quad_final, params


def align_from_landmarks(
    image: np.ndarray | Image.Image,
    landmarks: np.ndarray | Face,
    *,
    size: int = 256,
    transform_size: int | None = None,
    method: str = "pil",
) -> AlignedFace:
    """Align one face given its landmarks (68, 5 or the 4 anchors) or a :class:`Face`."""
    return _align_many(_as_pil_rgb(image), [landmarks], size=size, transform_size=transform_size, method=method)[0]


def _align_many(img: Image.Image, items: Sequence[np.ndarray | Face], *, size: int, transform_size: int | None, method: str) -> list[AlignedFace]:
    size, ts = _check_size(size, transform_size)
    if method not in ("pil", "torch"):
        raise InputError(f"alignment method '{method}' is unknown (choose 'pil' or 'torch')")
    out = []
    for i, item in enumerate(items):
        face = item if isinstance(item, Face) else Face(box=(0.0, 0.0, 0.0, 0.0), score=0.0, landmarks=np.asarray(item))
        geo = face_quad(face.landmarks if face.landmarks.shape[0] in (68, 5, 4) else face.anchors)
        warped, quad_final, params = warp_square(img, geo["quad"], geo["qsize"], size, ts, method)
        params.update(
            {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in geo.items() if k != "quad"},
            quad_source=geo["quad"].tolist(),
            output_size=size,
            transform_size=ts,
            method=method,
        )
        out.append(
            AlignedFace(
                image=warped,
                size=size,
                quad=geo["quad"],
                quad_effective=_effective_quad(quad_final, params),
                qsize=geo["qsize"],
                face=face,
                params=params,
                index=i,
            )
        )
    return out


# --------------------------------------------------------------------------------------
# detection + selection + alignment
# --------------------------------------------------------------------------------------

FACE_ORDERS = ("largest-first", "left-to-right")


def parse_face_spec(face: str | int | Sequence[int], order: str | None = None) -> tuple[str, Any]:
    """Split a face choice into (order, pick).

    Forms: ``"largest"``, ``"all"``, ``"official"``, ``"best"``, an index ``N`` / ``"N"``, a list
    ``"0,2"`` (or a list of ints), an order alone (``"left-to-right"``, ``"largest-first"``: all
    faces in that order), or ``"ORDER:PICK"`` (``"left-to-right:0,2"``). ``order`` numbers the
    faces when the spec names none; the pick then counts in that numbering.
    Returns pick as a str keyword or a list of ints.
    """
    spec_order = None
    pick: Any = face
    if isinstance(face, str):
        v = face.strip().lower().replace(" ", "")
        if ":" in v:
            spec_order, v = v.split(":", 1)
        elif v in FACE_ORDERS:
            spec_order, v = v, "all"
        pick = v
    if spec_order is not None and order is not None and spec_order != order:
        raise InputError(f"face choice '{face}' names order {spec_order}, but order {order} was asked for")
    final_order = spec_order or order or "largest-first"
    if final_order not in FACE_ORDERS:
        raise InputError(f"face order '{final_order}' is unknown (use {' or '.join(FACE_ORDERS)})")
    if isinstance(pick, (int, np.integer)) and not isinstance(pick, bool):
        return final_order, [int(pick)]
    if isinstance(pick, str):
        if pick in ("largest", "all", "official", "best"):
            return final_order, pick
        parts = pick.split(",")
        if parts and all(x.isdigit() for x in parts):
            return final_order, _check_distinct([int(x) for x in parts], face)
        raise InputError(
            f"face choice '{face}' is unknown (use largest, all, a number N, a list like 0,2, "
            f"{' or '.join(FACE_ORDERS)}, or ORDER:LIST like left-to-right:0,2)"
        )
    if isinstance(pick, (list, tuple)) and pick and all(isinstance(x, (int, np.integer)) and x >= 0 for x in pick):
        return final_order, _check_distinct([int(x) for x in pick], face)
    raise InputError(f"face choice {face!r} is unknown (use largest, all, a number or a list of numbers)")


def _check_distinct(picks: list[int], face) -> list[int]:
    if len(set(picks)) != len(picks):
        raise InputError(f"face choice '{face}' names a face twice")
    return picks


def order_faces(faces: Sequence[Face], order: str = "largest-first") -> list[Face]:
    """Number the faces: ``largest-first`` (by the size of the aligned square, then score) or
    ``left-to-right`` (by the centre of the eyes and mouth, then top to bottom)."""
    if order == "left-to-right":
        return sorted(faces, key=lambda f: (float(f.anchors[:, 0].mean()), float(f.anchors[:, 1].mean())))
    if order == "largest-first":
        return sorted(faces, key=lambda f: (-face_quad(f.anchors)["qsize"], -f.score))
    raise InputError(f"face order '{order}' is unknown (use {' or '.join(FACE_ORDERS)})")


def select_faces(faces: Sequence[Face], face: str | int | Sequence[int] = "largest", order: str | None = None) -> list[Face]:
    """Pick faces. ``order`` (or an ``ORDER:`` prefix in ``face``) numbers them, see
    :func:`order_faces` (default largest first); then ``face`` picks: ``"largest"``, ``"all"``
    (in that order), an index N or a list ``"0,2"`` (those faces, in the list's order),
    ``"official"`` (the last detection in backend order, which is what the official code
    aligns) or ``"best"`` (the highest score). See :func:`parse_face_spec` for the forms."""
    how, pick = parse_face_spec(face, order)
    if not faces:
        return []
    numbered = order_faces(faces, how)
    if isinstance(pick, list):
        bad = [n for n in pick if not 0 <= n < len(numbered)]
        if bad:
            raise InputError(
                f"face index {bad[0]} is out of range: found {len(numbered)} face{'s' if len(numbered) != 1 else ''}"
                f" (use 0-{len(numbered) - 1}, 'largest' or 'all')"
            )
        return [numbered[n] for n in pick]
    if pick == "largest":
        return order_faces(faces, "largest-first")[:1]
    if pick == "all":
        return numbered
    if pick == "official":
        return [max(faces, key=lambda f: f.index)]
    return [max(faces, key=lambda f: f.score)]  # best


def _no_face_message(shape: tuple[int, ...], detector: FaceDetector, what: str) -> str:
    h, w = shape[:2]
    msg = f"no face found in {what} ({w}x{h}) by detector {detector.describe()}"
    if min(h, w) < 2 * detector.min_face:
        msg += f"; the image is very small: this detector needs faces of about {detector.min_face} px or more"
    else:
        msg += "; try a larger, upright, frontal photo"
        others = [n for n in ("dlib", "facexlib") if n != detector.name]
        if others:
            msg += f" or another detector ({', '.join(others)})"
    return msg


def align_faces(
    image: np.ndarray,
    *,
    detector: str | FaceDetector = "dlib",
    size: int = 256,
    face: str | int | Sequence[int] = "largest",
    transform_size: int | None = None,
    method: str = "pil",
    faces: Sequence[Face] | None = None,
    landmark_image: np.ndarray | None = None,
    what: str = "the image",
    order: str | None = None,
) -> list[AlignedFace]:
    """Detect faces in an HxWx3 uint8 RGB image and align the selected ones.

    ``faces``: skip detection and use these. ``landmark_image``: a same-size decoding of the
    photo for the dlib backend to detect on (see :func:`align_file`). Raises
    :class:`NoFaceError` when nothing is found. ``face`` / ``order``: see :func:`select_faces`.
    Each result has ``index`` = its number among all detected faces in that order (largest
    first by default) and ``params["faces_found"]``.
    """
    img = _as_pil_rgb(image)
    arr = np.asarray(img)
    det = get_detector(detector)
    how, pick = parse_face_spec(face, order)  # a bad choice fails before any detection
    if faces is None:
        if isinstance(det, DlibDetector):
            # only the largest face wanted: big photos may skip the pyramid's fine levels
            faces = det.detect(arr, landmark_image=landmark_image, largest_only=pick == "largest")
        else:
            faces = det.detect(arr)
    faces = list(faces)
    if not faces:
        raise NoFaceError(_no_face_message(arr.shape, det, what))
    ranked = order_faces(faces, how)
    chosen = select_faces(faces, face, order)
    results = _align_many(img, chosen, size=size, transform_size=transform_size, method=method)
    for r in results:
        r.index = next(i for i, f in enumerate(ranked) if f is r.face)
        r.params["faces_found"] = len(faces)
        r.params["detector"] = det.describe()
        r.params["search"] = getattr(det, "last_search", "")
        r.params["detect_pass"] = r.face.detect_pass
        warnings = []
        if r.qsize < r.size:
            warnings.append(
                f"face {r.index}: its aligned region spans only {r.qsize:.0f} px in the photo, less than the {r.size} px output: "
                "the crop is upscaled and will look soft"
            )
        if r.face.detect_pass != "primary":
            warnings.append(
                f"face {r.index} was found by a fallback pass ({r.face.detect_pass}); the official detector settings find none here"
            )
        r.params["warnings"] = warnings
    return results


def align_file(
    path: str | os.PathLike,
    *,
    detector: str | FaceDetector = "dlib",
    size: int = 256,
    face: str | int | Sequence[int] = "largest",
    transform_size: int | None = None,
    method: str = "pil",
    official_decode: bool = True,
    max_pixels: int | None = None,
    order: str | None = None,
) -> tuple[list[AlignedFace], np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Load ``path`` (EXIF applied, 8-bit RGB), detect and align.

    Returns ``(aligned faces, rgb, alpha, info)``; ``rgb``/``alpha``/``info`` as
    :func:`load_image` gives them, the frame for paste-back.

    ``official_decode``: with the dlib detector, run the detector and landmarks on dlib's own
    decoding of the file (as the official code does) when that decoding has the same frame
    as ours (no EXIF rotation, plain 8-bit RGB or grey). JPEG decoders differ by a few grey
    levels on 4:2:0 files, which moves dlib's landmarks by up to several pixels; this keeps
    the result identical to the official aligner. The warp always uses our (PIL) pixels,
    as the official code does. dlib's decoding is only asked for after the file has passed
    the same format allow-list and ``max_pixels`` limit as ours (see :func:`load_image`).
    """
    rgb, alpha, info = load_image(path, max_pixels=max_pixels)
    det = get_detector(detector)
    landmark_image = None
    if (
        official_decode
        and isinstance(det, DlibDetector)
        and not info["transposed"]
        and alpha is None
        and info["mode"] in ("RGB", "L")
        and info["format"] in OFFICIAL_DECODE_FORMATS
    ):
        try:
            candidate = det.load_official(path, max_pixels=max_pixels)
        except Exception:  # dlib cannot read it: fall back to our decoding
            candidate = None
        if candidate is not None and candidate.shape == rgb.shape:
            landmark_image = candidate
    aligned = align_faces(
        rgb, detector=det, size=size, face=face, transform_size=transform_size, method=method,
        landmark_image=landmark_image, what=f"'{path}'", order=order,
    )
    info["official_decode"] = landmark_image is not None
    return aligned, rgb, alpha, info
