"""Large photos get the official boxes and landmarks (issue 13, item 2).

The default dlib detector searches a copy of a large photo, then runs the official detector
at full resolution on the top-left part that holds the faces. These tests compare that, box
for box and landmark for landmark, with the official call on the whole photo
(``detector(img, 1)``, here ``detect_max_side=None``), on photos upscaled to phone sizes, on
an EXIF-rotated one, and check that the aligned crops are identical. Slow-ish (dlib on 5-24
Mpx): about a minute on a 2-core machine.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pastiche_core.faces import detect
from pastiche_core.faces.align import align_faces, align_file

FIX = Path(__file__).parent / "fixtures"
PHOTO = FIX / "align" / "dsg_unsplash-rDEOVtE7vOs" / "input.jpg"  # 1536x1024, one face

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or detect.default_dlib_model_dir() is None,
    reason="dlib not installed: pip install dlib-bin face-recognition-models",
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _portrait(size: tuple[int, int]) -> np.ndarray:
    # a 2:3 portrait around the face, upscaled as a phone would shoot it
    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB").crop((430, 0, 1113, 1024)).resize(size, Image.Resampling.BICUBIC))


def _off_centre(canvas: tuple[int, int], at: tuple[int, int], side: int) -> np.ndarray:
    # a face in one part of a big photo (a travel shot): the region search pays off here
    with Image.open(PHOTO) as im:
        face = im.convert("RGB").crop((300, 0, 1324, 1024)).resize((side, side), Image.Resampling.BICUBIC)
    out = Image.new("RGB", canvas, (96, 120, 88))
    out.paste(face, at)
    return np.asarray(out)


@pytest.fixture(scope="module")
def detectors():
    return detect.DlibDetector(), detect.DlibDetector(detect_max_side=None)


def _same_as_official(rgb: np.ndarray, detectors, expect_search: str) -> None:
    fast, official = detectors
    got, ref = fast.detect(rgb), official.detect(rgb)
    assert fast.last_search.startswith(expect_search), fast.last_search
    assert official.last_search == "full"
    assert len(got) == len(ref) >= 1
    for g, r in zip(got, ref):
        assert g.box == r.box
        assert np.array_equal(g.landmarks, r.landmarks)
    a = align_faces(rgb, faces=got, face="all")
    b = align_faces(rgb, faces=ref, face="all")
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and psnr(x.image, y.image) == float("inf")


@pytest.mark.parametrize("size", [(1920, 2880), (4000, 6000)], ids=["1920x2880", "4000x6000"])
def test_large_portrait_gets_the_official_box_and_landmarks(size, detectors):
    _same_as_official(_portrait(size), detectors, "region")


def test_face_in_a_corner_of_a_big_photo_searches_a_small_region(detectors):
    _same_as_official(_off_centre((4000, 3000), (200, 150), 900), detectors, "region")


def test_face_far_from_the_origin_falls_back_to_the_whole_photo(detectors):
    # the region must start at the top-left corner: here it would be the whole photo
    _same_as_official(_off_centre((3000, 2200), (2080, 1280), 900), detectors, "full")


def test_exif_rotated_large_photo_matches_official_on_the_upright_image(tmp_path, detectors):
    upright = _portrait((1920, 2880))
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: stored sideways
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    aligned, rgb, _alpha, info = align_file(path, detector=detectors[0])
    assert info["transposed"] and rgb.shape == (2880, 1920, 3)
    ref = detectors[1].detect(rgb)  # the official detector on the upright pixels
    assert len(ref) == 1 and aligned[0].face.box == ref[0].box
    assert np.array_equal(aligned[0].landmarks, ref[0].landmarks)
    official_crop = align_faces(rgb, faces=ref)[0].image
    assert np.array_equal(aligned[0].image, official_crop)


def test_region_doubts_fall_back():
    cands = [(100.0, 100.0, 300.0, 300.0)]
    ok = [((102, 98, 301, 297), 1.0, 0)]
    assert detect._region_doubt(ok, cands, 400, 400, 1000, 1000, 16) == ""
    assert "2 faces" in detect._region_doubt(ok * 2, cands, 400, 400, 1000, 1000, 16)
    assert "edge" in detect._region_doubt([((102, 98, 390, 297), 1.0, 0)], cands, 400, 400, 1000, 1000, 16)
    # the edge of the photo itself is not a cut edge
    assert detect._region_doubt([((102, 98, 390, 297), 1.0, 0)], [(100.0, 100.0, 390.0, 300.0)], 400, 400, 400, 1000, 16) == ""
    assert "does not match" in detect._region_doubt([((600, 600, 700, 700), 1.0, 0)], cands, 800, 800, 1000, 1000, 16)
