import importlib.metadata
import os
from pathlib import Path

import pytest
import torch

from pastiche_core.models.workers import torch_threads

FIXTURES = Path(__file__).parent / "fixtures"

# The suite runs on 2-core CI machines; pin threads so results are stable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def single_thread():
    """Tiny ops on a shared 2-core machine run faster (and steadier) on one thread."""
    with torch_threads(1):
        yield


@pytest.fixture
def two_threads():
    """Two intra-op threads (so that banded blocks go to two band workers: models/workers.py)."""
    with torch_threads(2):
        yield


# --------------------------------------------------------------------------------------------
# The `faces` extra: the one decision whether the dlib tests run
# --------------------------------------------------------------------------------------------
FACES_INSTALL = 'pip install -e ".[faces]" (dlib-bin, face-recognition-models, scipy)'


def _installed(*names: str) -> bool:
    for name in names:
        try:
            importlib.metadata.distribution(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            pass
    return False


def faces_extra_installed() -> bool:
    """Whether the `faces` extra is installed, from package metadata alone.

    Deliberately not "does ``import dlib`` work": where the extra is installed, a broken dlib
    (a wheel for another CPU, a missing model file) must make the face tests FAIL, not skip.
    A source build of dlib (distribution ``dlib``) counts as well as ``dlib-bin``."""
    return _installed("dlib-bin", "dlib") and _installed("face-recognition-models", "face_recognition_models")


#: Marks a test that needs dlib and its landmark model: skipped only where the extra is absent.
needs_faces = pytest.mark.skipif(not faces_extra_installed(), reason=f"the faces extra is not installed: {FACES_INSTALL}")


def require_faces() -> None:
    """:data:`needs_faces` for fixtures and test bodies."""
    if not faces_extra_installed():
        pytest.skip(f"the faces extra is not installed: {FACES_INSTALL}")


# --------------------------------------------------------------------------------------------
# The `train` extra (lmdb): the one decision whether the lmdb dataset tests run
# --------------------------------------------------------------------------------------------
TRAIN_INSTALL = 'pip install -e ".[train]" (lmdb)'


def train_extra_installed() -> bool:
    """Whether the `train` extra is installed, from package metadata alone (as the faces extra:
    where it is installed, a broken lmdb must make its tests FAIL, not skip)."""
    return _installed("lmdb")


#: Marks a test that reads lmdb datasets: skipped only where the extra is absent.
needs_train = pytest.mark.skipif(not train_extra_installed(), reason=f"the train extra is not installed: {TRAIN_INSTALL}")


# --------------------------------------------------------------------------------------------
# Tolerances that follow the quantity, not a fixed number
# --------------------------------------------------------------------------------------------
#: Relative precision expected of a short float computation (a few ops, short sums) per dtype:
#: a few thousand ulps for float32 and a few ulps' worth of the coarse dtypes.
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close_scaled(actual, expected, *, rel: float | None = None, what: str = "") -> None:
    """``actual`` equals ``expected`` within ``rel`` of each element plus ``rel`` times the
    largest ``|expected|``: the absolute part follows the quantity's scale, so a gradient of
    1e-3 and a logit of 10 are compared with the same precision. ``rel`` defaults to
    :data:`REL_TOL` of the coarser dtype of the two."""
    a = torch.as_tensor(actual)
    e = torch.as_tensor(expected)
    if rel is None:
        rel = max(REL_TOL.get(a.dtype, 1e-4), REL_TOL.get(e.dtype, 1e-4))
    a64, e64 = a.detach().cpu().double(), e.detach().cpu().double()
    assert a64.shape == e64.shape, f"{what} shape {tuple(a64.shape)} != {tuple(e64.shape)}"
    scale = float(e64.abs().max()) if e64.numel() else 0.0
    err = (a64 - e64).abs()
    bound = rel * e64.abs() + rel * scale
    worst = float((err - bound).max()) if err.numel() else 0.0
    assert worst <= 0, (f"{what} differs by up to {float(err.max()):.3g} (scale {scale:.3g}, allowed "
                        f"{rel:g} x (|value| + scale))")
