"""dlib's HOG face detector started at a coarse level of its own image pyramid, exactly.

The official aligner runs ``dlib.get_frontal_face_detector()(img, 1)``: dlib doubles the
photo (``pyramid_up`` with ``pyramid_down<2>``), then scans every level of a
``pyramid_down<6>`` pyramid of that copy (each level 5/6 of the last, resampled from the
level before it) and keeps the best boxes. On a phone photo most of the time goes into the
first, largest levels, which only find faces far smaller than the ones people stylise.

The pyramid is a chain, so its level ``j`` can be rebuilt bit for bit with dlib's own
resizers (:func:`dlib.resize_image` is the bilinear ``pyramid_up`` uses, :class:`dlib.pyramid_down`
the level step), and the detector run on that image scans exactly the official levels
``j, j+1, ...``: same HOG features, same scores. What changes is the box arithmetic: dlib
maps a box from level ``L`` with ``L`` steps of ``p * 6/5 + 0.3`` and rounds once, and our
run rounds after ``L - j`` steps. So each box is taken back to its integer HOG-window
rectangle (one integer rounds to each value, the map stretches by 1.2 per level) and mapped
again the official way, including the final ``pyramid_down<2>`` step back to the photo.

What the coarse run cannot see is boxes from the skipped levels, and dlib's non-maximum
suppression compares boxes of all levels. The frontal detector's overlap test (read from its
serialised form) calls two boxes overlapping when their intersection is more than 0.33 of their
bounding rectangle, or more than 0.79 of either box. The first needs boxes within three levels
of each other (four levels apart, concentric boxes reach (1/1.2^4)^2 = 0.23), so the four finest
levels of the run are a guard band: if a box survives there, the skipped levels might have
changed it, and :func:`search` starts again four levels below that box (down to a floor; past
it, it returns ``None`` and the caller runs the whole pyramid). The second cannot be ruled out
from the coarse run: a skipped, smaller box lying almost wholly inside a face's box with a
higher score would have suppressed that face in the official run (a face detected inside a
face: not seen in ``benchmarks/dlib_pyramid_parity.py``'s random photos, but possible). Apart
from that case every box returned is an official box with its official score, in the official
order, and the only boxes missing are faces too small for the run's floor
(:func:`smallest_exact_box`), which the caller only may drop when it wants the largest face.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["start_level", "smallest_exact_box", "search", "window_level", "GUARD_LEVELS", "WINDOW_SPAN"]

#: right - left of a detection box at the level that found it (the 80 px window's box)
WINDOW_SPAN = 72
#: levels at the fine end of a coarse run whose boxes may interact with skipped levels
GUARD_LEVELS = 4
_STEP = 6 / (6 - 1.0)  # pyramid_down<6>::point_up ratio, computed as dlib does
_UP2_OFFSET = (1.25, 0.75)  # pyramid_down<2>'s point offsets for x and y


def _lround(v: float) -> int:
    """C's ``lround`` (halves away from zero), which dlib uses to turn boxes into pixels."""
    r = math.floor(abs(v) + 0.5)
    return int(r if v >= 0 else -r)


def _up6(v: float, levels: int) -> float:
    for _ in range(levels):
        v = v * _STEP + 0.3
    return v


def _down2(v: float, offset: float, levels: int) -> float:
    for _ in range(levels):
        v = v / 2.0 - offset
    return v


def _upsampled_size(rows: int, cols: int) -> tuple[int, int]:
    """The size ``pyramid_up`` gives: the image rectangle mapped by ``pyramid_down<2>::rect_up``."""
    ox, oy = _UP2_OFFSET
    return _lround((rows - 1 + oy) * 2) + 1, _lround((cols - 1 + ox) * 2) + 1


def _level_size(rows: int, cols: int, upsample: int, level: int) -> tuple[int, int]:
    for _ in range(upsample):
        rows, cols = _upsampled_size(rows, cols)
    for _ in range(level):  # pyramid_down<N>::operator(): lround(((N-1)*size)/N), integer division
        rows, cols = (5 * rows) // 6, (5 * cols) // 6
    return rows, cols


def start_level(shape: tuple[int, ...], upsample: int, max_side: int) -> int:
    """The first pyramid level whose image is at most ``max_side`` pixels long."""
    level = 0
    while max(_level_size(shape[0], shape[1], upsample, level)) > max_side:
        level += 1
    return level


def smallest_exact_box(level: int, upsample: int) -> float:
    """Width in photo pixels of the smallest box a run from ``level`` returns."""
    return WINDOW_SPAN * _STEP ** (level + GUARD_LEVELS) / 2**upsample


def _level_images(dlib: Any, image: np.ndarray, upsample: int, level: int, keep_from: int) -> dict[int, np.ndarray]:
    """Pyramid levels ``keep_from..level`` of ``image``, made by dlib's own resizers."""
    img = image
    for _ in range(upsample):
        rows, cols = _upsampled_size(*img.shape[:2])
        img = dlib.resize_image(img, rows, cols)
    down = dlib.pyramid_down(6)
    kept = {}
    for k in range(level + 1):
        if k:
            img = down(img)
        if k >= keep_from:
            assert img.shape[:2] == _level_size(image.shape[0], image.shape[1], upsample, k)
            kept[k] = np.ascontiguousarray(img)
    return kept


def window_level(span: float) -> int:
    """How many pyramid steps above its own level a box of ``right - left == span`` (in one
    level's pixels) was found: the detection window's box grows by 1.2 per level."""
    return int(round(math.log(max(span, 1) / WINDOW_SPAN) / math.log(_STEP)))


def _window_coordinate(value: int, levels: int) -> int | None:
    """The integer ``f`` with ``lround(_up6(f, levels)) == value`` (at most one exists)."""
    guess = round((value - _up6(0.0, levels)) / _STEP**levels)
    for f in (guess, guess - 1, guess + 1, guess - 2, guess + 2):
        if _lround(_up6(float(f), levels)) == value:
            return f
    return None


def _scan(detector: Any, level_image: np.ndarray, *, upsample: int, level: int):
    """One run from ``level``: (boxes in photo pixels, score, subdetector), or the absolute
    level of the first box in the guard band (an int), or ``None`` for an unmappable box."""
    rects, scores, subs = detector.run(level_image, 0, 0.0)
    found = []
    for rect, score, sub in zip(rects, scores, subs):
        rel = window_level(rect.right() - rect.left())
        if rel < GUARD_LEVELS:
            return level + rel
        window = [_window_coordinate(v, rel) for v in (rect.left(), rect.top(), rect.right(), rect.bottom())]
        if any(v is None for v in window):
            return None
        box = tuple(
            _lround(_down2(float(_lround(_up6(float(v), level + rel))), _UP2_OFFSET[i % 2], upsample))
            for i, v in enumerate(window)
        )
        found.append((box, float(score), int(sub)))
    return found


def search(
    detector: Any, dlib: Any, image: np.ndarray, *, upsample: int, level: int, min_level: int | None = None
) -> tuple[list[tuple[tuple[int, int, int, int], float, int]], int] | None:
    """``detector.run(image, upsample)``'s boxes from pyramid level ``start + GUARD_LEVELS`` up.

    Scans from ``level``; when a box lands in the guard band (at level ``L``) it scans again
    from ``L - GUARD_LEVELS`` (the finer levels are already made), down to ``min_level``
    (default ``level``: no retry). Returns (boxes, start) with boxes as ((left, top, right,
    bottom), score, subdetector) in dlib's order, identical to those boxes in the whole run,
    or ``None`` when no start could vouch for its result.
    """
    floor = level if min_level is None else max(0, min(min_level, level))
    levels = _level_images(dlib, image, upsample, level, floor)
    start = level
    while True:
        result = _scan(detector, levels[start], upsample=upsample, level=start)
        if result is None or isinstance(result, list):
            return None if result is None else (result, start)
        start = result - GUARD_LEVELS
        if start < floor:
            return None
