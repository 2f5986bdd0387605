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
