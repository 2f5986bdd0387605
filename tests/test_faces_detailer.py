"""Faces and masks for detailer graphs (issue 13, item 3): face selection forms, masks in the
photo's frame, several renders of one face pasted back, and where facexlib's weights are found.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pastiche_core.faces import detect

FIX = Path(__file__).parent / "fixtures"
EDGE = FIX / "edge"


# ===================================================================== facexlib weight lookup


def test_facexlib_lookup_order(tmp_path, monkeypatch):
    comfy = tmp_path / "ComfyUI" / "models" / "facedetection"
    pkg = tmp_path / "site" / "facexlib"
    env = tmp_path / "env"
    for d in (comfy, pkg / "weights", env):
        d.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported by the lookup')\n")
    fake_fp = types.SimpleNamespace(models_dir=str(tmp_path / "ComfyUI" / "models"),
                                    get_folder_paths=lambda name: [str(comfy)] if name == "facedetection" else [])
    monkeypatch.setitem(sys.modules, "folder_paths", fake_fp)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PASTICHE_FACEXLIB_DIR", str(env))
    importlib.invalidate_caches()
    dirs = detect.facexlib_model_dirs()
    assert dirs[:3] == [comfy, pkg / "weights", env] and dirs[3].parts[-2:] == ("pastiche", "facexlib")

    det = detect.FacexlibDetector()
    with pytest.raises(detect.DetectorUnavailableError) as err:
        det.check_files()
    msg = str(err.value)
    assert all(str(d) in msg for d in (comfy, pkg / "weights", env)) and "nothing is downloaded" in msg
    name = "detection_Resnet50_Final.pth"
    (env / name).write_bytes(b"")
    assert det.check_files() == env / name  # found late: looked up on every use
    (pkg / "weights" / name).write_bytes(b"")
    assert det.check_files() == pkg / "weights" / name
    (comfy / name).write_bytes(b"")
    assert det.check_files() == comfy / name and det.model_dir == comfy
    # an explicit folder is the only place looked at
    assert detect.FacexlibDetector(model_dir=tmp_path).search_dirs() == [tmp_path]


def test_facexlib_lookup_outside_comfyui_without_registered_folder(tmp_path, monkeypatch):
    # ComfyUI itself does not register "facedetection": its models/facedetection is still searched
    def unknown(name):
        raise KeyError(name)

    monkeypatch.setitem(sys.modules, "folder_paths", types.SimpleNamespace(models_dir=str(tmp_path), get_folder_paths=unknown))
    assert detect.facexlib_model_dirs()[0] == tmp_path / "facedetection"
    monkeypatch.delitem(sys.modules, "folder_paths")
    assert tmp_path / "facedetection" not in detect.facexlib_model_dirs()


# ===================================================================== face choice forms

from PIL import Image  # noqa: E402

from pastiche_core.errors import InputError  # noqa: E402
from pastiche_core.faces import command  # noqa: E402
from pastiche_core.faces.align import align_from_landmarks, parse_face_spec, select_faces  # noqa: E402
from pastiche_core.faces.detect import Face  # noqa: E402
from pastiche_core.faces.paste import face_masks, paste_faces  # noqa: E402


def _faces():
    def mk(i, x, scale):
        lm = np.array([[0, 0], [10, 0], [1, 10], [9, 10]], float) * scale + [x, 50]
        return Face(box=(0, 0, 1, 1), score=1.0 - i * 0.1, landmarks=lm, index=i)

    # detector order 0, 1, 2; sizes 1, 3, 2; positions: middle, right, left
    return [mk(0, 200, 1.0), mk(1, 400, 3.0), mk(2, 10, 2.0)]


def test_selection_forms():
    faces = _faces()
    idx = lambda chosen: [f.index for f in chosen]  # noqa: E731
    assert idx(select_faces(faces, "all")) == [1, 2, 0]  # largest first (the default numbering)
    assert idx(select_faces(faces, "largest-first")) == [1, 2, 0]
    assert idx(select_faces(faces, "left-to-right")) == [2, 0, 1]
    assert idx(select_faces(faces, "all", order="left-to-right")) == [2, 0, 1]
    assert idx(select_faces(faces, "0,2")) == [1, 0]
    assert idx(select_faces(faces, "2,0")) == [0, 1]  # the list's order
    assert idx(select_faces(faces, [0, 2], order="left-to-right")) == [2, 1]
    assert idx(select_faces(faces, "left-to-right:0,2")) == [2, 1]
    assert idx(select_faces(faces, "left-to-right:1")) == [0]
    assert idx(select_faces(faces, 1, order="left-to-right")) == [0]
    assert idx(select_faces(faces, "largest", order="left-to-right")) == [1]  # the largest whatever the numbering
    assert parse_face_spec(" Left-To-Right : 0, 2") == ("left-to-right", [0, 2])
    with pytest.raises(InputError, match="face index 3 is out of range: found 3 faces"):
        select_faces(faces, "0,3")
    with pytest.raises(InputError, match="twice"):
        select_faces(faces, "1,1")
    with pytest.raises(InputError, match="unknown"):
        select_faces(faces, "sideways")
    with pytest.raises(InputError, match="order"):
        select_faces(faces, "left-to-right:0", order="largest-first")


def test_cli_face_argument_forms():
    assert command.parse_face("0,2") == "0,2" and command.parse_face("3") == 3
    assert command.parse_face("Left-to-right:1") == "left-to-right:1"
    for bad in ("0,x", "smallest", "-1", "1,1"):
        with pytest.raises(Exception, match="invalid face choice"):
            command.parse_face(bad)
    assert command.selects_one(2) and command.selects_one("left-to-right:1") and command.selects_one("largest")
    assert not command.selects_one("0,2") and not command.selects_one("all") and not command.selects_one("left-to-right")


# ===================================================================== masks in the photo's frame


@pytest.fixture(scope="module")
def aligned_case():
    import json

    d = FIX / "align" / "dsg_unsplash-rDEOVtE7vOs"
    meta = json.loads((d / "align.json").read_text())
    with Image.open(d / "input.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb, align_from_landmarks(rgb, np.array(meta["landmarks68"]), size=256)


def test_masks_shape_frame_and_values(aligned_case):
    rgb, af = aligned_case
    h, w = rgb.shape[:2]
    soft, hard = face_masks((h, w), [af, af])
    assert soft.shape == hard.shape == (2, h, w) and soft.dtype == hard.dtype == np.float32
    assert np.array_equal(soft[0], soft[1])
    s, hd = soft[0], hard[0]
    assert set(np.unique(hd)) == {0.0, 1.0}
    assert s.min() == 0.0 and s.max() == pytest.approx(1.0)
    assert ((s > 0) <= (hd > 0)).all()  # the hard mask covers all the soft one touches
    edge = (s > 0.01) & (s < 0.99)
    assert edge.sum() > 0.05 * (s > 0).sum()  # a feathered band, not a step
    # in the photo's frame: the face's anchors are inside, the photo's corners outside
    for x, y in np.rint(af.anchors).astype(int):
        assert hd[y, x] == 1.0 and s[y, x] > 0.5
    assert hd[0, 0] == hd[-1, -1] == 0.0
    # the soft mask is exactly paste-back's blend: a white crop on a black photo shows it
    pasted = paste_faces(np.zeros_like(rgb), np.full((256, 256, 3), 255, np.uint8), af)
    assert np.abs(pasted[:, :, 0] / 255.0 - s).max() <= 0.5 / 255 + 1e-6


# ===================================================================== CLI on a real two-face photo


needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or detect.default_dlib_model_dir() is None,
    reason="dlib not installed: pip install dlib-bin face-recognition-models",
)


@needs_dlib
def test_cli_selection_on_two_faces(tmp_path, capsys):
    photo = str(EDGE / "two_faces.jpg")  # 006750 on the left, 081680 on the right

    def run(face, name):
        assert command.main(["align", photo, "--out", str(tmp_path / name), "--face", face]) == 0
        return capsys.readouterr().out

    def crop(name):
        with Image.open(tmp_path / name) as im:
            return np.asarray(im)

    run("left-to-right", "ltr.png")
    left, right = crop("ltr_0.png"), crop("ltr_1.png")
    run("left-to-right:1", "right.png")
    assert np.array_equal(crop("right.png"), right)
    run("0,1", "size.png")  # largest first, files named by face number
    by_size = [crop("size_0.png"), crop("size_1.png")]
    assert {a.tobytes() for a in by_size} == {left.tobytes(), right.tobytes()}
    run("1,0", "rev.png")
    assert np.array_equal(crop("rev_0.png"), by_size[0])
    out = run("1", "one.png")
    assert "face 1 of 2" in out and np.array_equal(crop("one.png"), by_size[1])
