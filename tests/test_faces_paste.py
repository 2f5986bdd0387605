"""Paste-back (pastiche_core.faces.paste): inverse warp + feathered mask.

The two faces of tests/fixtures/edge/two_faces.jpg are aligned from anchors recorded from a
dlib run (so these tests need no detector).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pastiche_core.errors import InputError
from pastiche_core.faces.align import align_from_landmarks
from pastiche_core.faces.io import load_image
from pastiche_core.faces.paste import face_mask, paste_faces

torch = pytest.importorskip("torch")
pytest.importorskip("kornia")

FIX = Path(__file__).parent / "fixtures"
TWO_FACES = FIX / "edge" / "two_faces.jpg"
# eye_left, eye_right, mouth_left, mouth_right (dlib 68-point anchors of both faces)
ANCHORS = [
    [[706.8333333333334, 247.16666666666666], [836.3333333333334, 246.33333333333334], [705.0, 362.0], [825.0, 361.0]],
    [[193.66666666666666, 245.83333333333334], [321.3333333333333, 246.5], [189.0, 365.0], [317.0, 365.0]],
]


@pytest.fixture(scope="module")
def two_faces():
    rgb, alpha, _ = load_image(TWO_FACES)
    aligned = [align_from_landmarks(rgb, np.array(a), size=256) for a in ANCHORS]
    return rgb, aligned


def quad_footprint(shape, aligned) -> np.ndarray:
    """Pixels covered by the crops' quads (slightly grown): nothing outside may change."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for a in aligned:
        draw.polygon([tuple(p) for p in a.quad_effective.tolist()], fill=255, outline=255, width=3)
    return np.asarray(canvas) > 0


def test_pixels_outside_the_masks_are_unchanged(two_faces):
    rgb, aligned = two_faces
    crops = [255 - a.image for a in aligned]  # a "style" that changes every pixel it touches
    out = paste_faces(rgb, crops, aligned)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    changed = (out != rgb).any(axis=2)
    outside = ~quad_footprint(rgb.shape, aligned)
    assert not changed[outside].any()
    # and much more than the quads' complement is untouched: the masks are face-shaped
    footprint = (~outside).sum()
    assert 0.3 * footprint < changed.sum() < 0.85 * footprint
    # exact zero-mask region: recompute each face's warped mask footprint
    masks = np.zeros(rgb.shape[:2], bool)
    for a in aligned:
        one = paste_faces(np.zeros_like(rgb), [np.full((256, 256, 3), 255, np.uint8)], [a])
        masks |= one.any(axis=2)
    assert not changed[~masks].any()
    # the face centres did change (between the eyes, for each face)
    for a in aligned:
        cx, cy = np.rint(a.anchors[:2].mean(axis=0)).astype(int)
        assert changed[cy, cx]


def test_identity_paste_reproduces_the_photo(two_faces):
    """Pasting each aligned crop back where it came from gives the photo again, up to the
    resampling blur: proves the inverse transform (incl. the half-pixel conventions)."""
    rgb, aligned = two_faces
    out = paste_faces(rgb, [a.image for a in aligned], aligned)
    inner = np.zeros(rgb.shape[:2], bool)
    for a in aligned:
        (x0, y0), (x1, y1) = a.anchors[:2].min(0).astype(int), a.anchors[2:].max(0).astype(int)
        inner[y0:y1, x0:x1] = True
    err = np.abs(out.astype(float) - rgb.astype(float))[inner].mean()
    assert err < 2.5, err
    # moving the transform by half a pixel either way only makes it worse
    for dx, dy in [(0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5)]:
        moved = [dataclasses.replace(a, quad_effective=a.quad_effective + [dx, dy]) for a in aligned]
        out_m = paste_faces(rgb, [a.image for a in aligned], moved)
        err_m = np.abs(out_m.astype(float) - rgb.astype(float))[inner].mean()
        assert err < err_m - 0.1, (dx, dy, err, err_m)


def test_paste_precision_at_full_resolution():
    """019706 aligned at 1024 (no shrink): pasting the crop back is almost lossless."""
    case = FIX / "align" / "dsg_019706"
    meta = json.loads((case / "align.json").read_text())
    rgb, _, _ = load_image(case / "input.jpg")
    a = align_from_landmarks(rgb, np.array(meta["landmarks68"]), size=1024)
    out = paste_faces(rgb, a.image, a)
    x0, y0 = a.anchors.min(0).astype(int)
    x1, y1 = a.anchors.max(0).astype(int)
    err = np.abs(out[y0:y1, x0:x1].astype(float) - rgb[y0:y1, x0:x1]).mean()
    assert err < 1.5, err


def test_any_crop_size_and_tensor_inputs(two_faces):
    rgb, aligned = two_faces
    a = aligned[0]
    big = np.asarray(Image.fromarray(a.image).resize((1024, 1024), Image.Resampling.BICUBIC))
    out_small = paste_faces(rgb, [a.image], [a])
    out_big = paste_faces(rgb, [big], [a])
    assert np.abs(out_small.astype(float) - out_big).mean() < 1.0
    # a float tensor batch in [-1, 1], CHW
    t = torch.from_numpy(a.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    out_t = paste_faces(rgb, t, [a], value_range=(-1.0, 1.0))
    assert np.abs(out_t.astype(int) - out_small).max() <= 1
    with pytest.raises(InputError, match="2 crops for 1 aligned faces"):
        paste_faces(rgb, [a.image, a.image], [a])
    with pytest.raises(InputError, match="square RGB"):
        paste_faces(rgb, [a.image[:, :100]], [a])


def test_alpha_is_preserved(two_faces):
    rgb, aligned = two_faces
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    rgba = np.dstack([rgb, alpha])
    out = paste_faces(rgba, [255 - a.image for a in aligned], aligned)
    assert out.shape == rgba.shape
    assert np.array_equal(out[..., 3], alpha)
    assert np.array_equal(out[..., :3], paste_faces(rgb, [255 - a.image for a in aligned], aligned))
    # the same with the alpha plane given separately (as load_image returns it)
    out2 = paste_faces(rgb, [255 - a.image for a in aligned], aligned, alpha=alpha)
    assert np.array_equal(out2, out)
    with pytest.raises(InputError, match="alpha must be HxW uint8"):
        paste_faces(rgb, [aligned[0].image], [aligned[0]], alpha=alpha[:10])


def test_landmark_mask_and_mask_properties(two_faces):
    m = face_mask(256)
    assert m.shape == (256, 256) and m.dtype == np.float32
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    assert m[int(0.53 * 256), 128] == pytest.approx(1.0, abs=1e-4)
    m_big = face_mask(1024)
    small_again = np.asarray(Image.fromarray(m_big).resize((256, 256), Image.Resampling.BOX))
    assert np.abs(small_again - m).max() < 0.05
    rgb, aligned = two_faces
    # landmark-shaped mask needs 68 points: these faces only carry 4 anchors
    with pytest.raises(InputError, match="68-point"):
        paste_faces(rgb, [aligned[0].image], [aligned[0]], mask="landmarks")
    case = FIX / "align" / "dsg_unsplash-rDEOVtE7vOs"
    meta = json.loads((case / "align.json").read_text())
    photo, _, _ = load_image(case / "input.jpg")
    a = align_from_landmarks(photo, np.array(meta["landmarks68"]))
    out = paste_faces(photo, [255 - a.image], [a], mask="landmarks")
    changed = (out != photo).any(axis=2)
    nose = np.array(meta["landmarks68"])[30]
    chin = np.array(meta["landmarks68"])[8]
    assert changed[nose[1], nose[0]] and not changed[chin[1] + 40, chin[0]]


def test_paste_rejects_bad_photo(two_faces):
    _, aligned = two_faces
    with pytest.raises(InputError, match="uint8 photo"):
        paste_faces(np.zeros((10, 10), np.uint8), [aligned[0].image], [aligned[0]])
