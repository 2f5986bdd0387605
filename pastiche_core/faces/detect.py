"""Face detectors: one small class per backend, a registry by name.

Every backend turns an ``HxWx3`` uint8 RGB array into a list of :class:`Face` records in
image pixel coordinates. The alignment recipe only needs four anchors (the two eye centres
and the two outer mouth corners), so a backend with 68 landmarks and one with 5 points drive
the same code.

Backends
--------
``dlib`` (default)
    dlib's HOG + linear-SVM frontal detector (``upsample_num_times=1``, as the official
    DualStyleGAN aligner) and the iBUG-68 shape predictor from the ``face-recognition-models``
    package (or a file you name). ``pip install dlib-bin face-recognition-models``.
    The 68-point model's training data (iBUG 300-W) excludes commercial use.
    Boxes and landmarks are the official ones at any photo size. When only the largest face
    is wanted (``detect(..., largest_only=True)``, what the aligner asks for by default), a
    photo longer than 1600 px is scanned from a coarse level of dlib's own pyramid, rebuilt
    exactly (:mod:`.hog_pyramid`): the same boxes, 2-3x faster, with the whole pyramid run
    whenever the coarse run cannot vouch for its result. ``detect_max_side=N`` (opt-in,
    approximate) detects on a copy at most N px long and scales the box back, which moves
    the 68 landmarks (20 px measured on a 1920x2880 portrait).
``facexlib``
    RetinaFace (ResNet-50 or MobileNet-0.25) from ``facexlib``; 5 points. Only used when its
    weight file is already on disk: ComfyUI's ``models/facedetection``, facexlib's own
    ``weights`` folder, ``$PASTICHE_FACEXLIB_DIR`` (see :func:`facexlib_model_dirs`); it never
    downloads. Needs ``facexlib`` and a torchvision that loads beside your torch.

Heavy imports (dlib, facexlib) happen inside the backends, on first use.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..errors import InputError
from . import hog_pyramid

__all__ = [
    "Face",
    "FaceDetector",
    "DlibDetector",
    "FacexlibDetector",
    "facexlib_model_dirs",
    "NoFaceError",
    "DetectorUnavailableError",
    "register_detector",
    "get_detector",
    "available_detectors",
    "detector_names",
    "anchors_from_landmarks",
]

DLIB_INSTALL_HINT = "pip install dlib-bin face-recognition-models"


class NoFaceError(InputError):
    """The detector found no face in the image."""


class DetectorUnavailableError(InputError):
    """A detector backend cannot run here (package or model file missing)."""


def anchors_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The 4 alignment anchors (eye_left, eye_right, mouth_left, mouth_right) as (4, 2) float64.

    Accepts iBUG-68 (eye contours 36-41 / 42-47, mouth corners 48 / 54), the 5-point layout
    (eye_left, eye_right, nose, mouth_left, mouth_right) or the 4 anchors themselves.
    "Left" is the image's left.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2:
        raise ValueError(f"landmarks must be (N, 2), got {lm.shape}")
    n = lm.shape[0]
    if n == 68:
        return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[48], lm[54]])
    if n == 5:
        return lm[[0, 1, 3, 4]].copy()
    if n == 4:
        return lm.copy()
    raise ValueError(f"cannot take alignment anchors from {n} landmarks (need 68, 5 or 4)")


@dataclass
class Face:
    """One detected face, in the pixel coordinates of the image given to ``detect``.

    ``box`` is (left, top, right, bottom); ``landmarks`` is (68, 2) for dlib, (5, 2) for
    RetinaFace; ``anchors`` is (4, 2): eye_left, eye_right, mouth_left, mouth_right.
    ``index`` is the position in the backend's own output order (dlib: by score, highest
    first).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    anchors: np.ndarray = field(default=None)  # type: ignore[assignment]
    index: int = 0
    detector: str = ""
    #: which detection pass found it: "primary", or a fallback ("upsample0", "padded")
    detect_pass: str = "primary"

    def __post_init__(self) -> None:
        self.landmarks = np.asarray(self.landmarks)
        if self.anchors is None:
            self.anchors = anchors_from_landmarks(self.landmarks)
        else:
            self.anchors = np.asarray(self.anchors, dtype=np.float64)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"face detection needs an HxWx3 uint8 RGB image, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


class FaceDetector:
    """Backend interface: ``detect(image_uint8) -> list[Face]``."""

    name: ClassVar[str] = ""
    #: Smallest face (in pixels) the backend can find; used for "image too small" hints.
    min_face: ClassVar[int] = 20

    def detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------
# dlib
# --------------------------------------------------------------------------------------

def _import_dlib():
    try:
        import dlib  # noqa: PLC0415 - heavy and optional, imported on first use
    except ImportError:
        raise DetectorUnavailableError(
            f"face detector 'dlib' needs the dlib package, which is not installed: {DLIB_INSTALL_HINT}"
        ) from None
    return dlib


def default_dlib_model_dir() -> Path | None:
    """The ``models`` folder of the installed ``face_recognition_models`` package, if any.

    Found without importing the package (its ``__init__`` imports ``pkg_resources``, which
    recent setuptools no longer ship).
    """
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if d.is_dir():
            return d
    return None


_DLIB_CACHE: dict[str, object] = {}


#: Formats whose dlib decoding the official aligner used (and dlib's loader reads).
OFFICIAL_DECODE_FORMATS = ("JPEG", "PNG", "BMP", "GIF")


class DlibDetector(FaceDetector):
    """dlib HOG frontal detector + 68-point shape predictor (the official DualStyleGAN pair).

    ``predictor_path``: the ``shape_predictor_68_face_landmarks.dat`` file; default
    ``$PASTICHE_DLIB_PREDICTOR``, else the copy inside ``face-recognition-models``.
    ``upsample``: HOG upsampling passes (1 = official; finds faces down to about 40 px).
    ``detect_max_side``: ``None`` (default): the official boxes. N: detect on a copy at most
    N px long (faster, approximate boxes and landmarks).
    ``pyramid_max_side``: with ``largest_only``, a photo whose pyramid level 0 is longer than
    this starts scanning at the first level at most this long (``None``: never).
    ``fallback``: when the official pass finds nothing (where the official code crashes),
    try again with ``upsample=0`` (very large faces) and then on a copy with a mirrored
    border of 10 % (faces cut by the image edge, e.g. a chin outside the frame). Faces from
    these passes have ``detect_pass`` "upsample0" / "padded".
    """

    name = "dlib"
    min_face = 40
    MODEL_FILE = "shape_predictor_68_face_landmarks.dat"

    def __init__(
        self,
        predictor_path: str | os.PathLike | None = None,
        *,
        upsample: int = 1,
        detect_max_side: int | None = None,
        fallback: bool = True,
        pyramid_max_side: int | None = 1600,
    ) -> None:
        self.upsample = int(upsample)
        self.pyramid_max_side = int(pyramid_max_side) if pyramid_max_side else None
        self.fallback = bool(fallback)
        self.detect_max_side = int(detect_max_side) if detect_max_side else None
        self._predictor_path = Path(predictor_path) if predictor_path else None
        self._dlib = None
        self.last_search = ""
        self._detector = None
        self._predictor = None

    # -- lazy set-up -----------------------------------------------------------------
    def predictor_path(self) -> Path:
        if self._predictor_path is not None:
            candidates = [self._predictor_path]
        else:
            candidates = []
            env = os.environ.get("PASTICHE_DLIB_PREDICTOR")
            if env:
                candidates.append(Path(env))
            d = default_dlib_model_dir()
            if d is not None:
                candidates.append(d / self.MODEL_FILE)
        for c in candidates:
            if c.is_file():
                return c
        where = ", ".join(f"'{c}'" for c in candidates) or "nowhere (face-recognition-models is not installed)"
        raise DetectorUnavailableError(
            f"face detector 'dlib' needs {self.MODEL_FILE}; looked in {where}: {DLIB_INSTALL_HINT}"
            " (or set PASTICHE_DLIB_PREDICTOR to the file)"
        )

    def _setup(self) -> None:
        if self._predictor is not None:
            return
        dlib = _import_dlib()
        path = self.predictor_path()
        key = str(path.resolve())
        if key not in _DLIB_CACHE:  # the 100 MB model takes ~1 s to load: share it
            try:
                _DLIB_CACHE[key] = dlib.shape_predictor(str(path))
            except RuntimeError as exc:
                raise DetectorUnavailableError(f"dlib could not load the landmark model '{path}': {exc}") from None
        if "__hog__" not in _DLIB_CACHE:
            _DLIB_CACHE["__hog__"] = dlib.get_frontal_face_detector()
        self._dlib = dlib
        self._detector = _DLIB_CACHE["__hog__"]
        self._predictor = _DLIB_CACHE[key]

    # -- API ---------------------------------------------------------------------------
    def describe(self) -> str:
        side = f", detect_max_side={self.detect_max_side}" if self.detect_max_side else ""
        return f"dlib (HOG, upsample {self.upsample}{side})"

    def rectangles(
        self, image: np.ndarray, *, upsample: int | None = None, pad_fraction: float = 0.0,
        largest_only: bool = False,
    ) -> list[tuple[tuple[int, int, int, int], float, int]]:
        """Raw HOG detections as ((left, top, right, bottom), score, subdetector) in dlib order,
        as the official ``detector(img, upsample)`` gives them on the whole image.

        ``pad_fraction``: detect on a copy with a mirrored border of this fraction of the long
        side (boxes are given in the original image's coordinates).
        ``largest_only``: faces too small to be the largest may be left out (the official boxes
        of the others are kept, in order): big photos then scan from a coarse pyramid level.
        ``self.last_search`` says how the last call ran: "full", "pyramid from level J (boxes
        of N px and more)" or "scaled copy WxH".

        A crop around the face is no shortcut: dlib resizes each pyramid level with a scale of
        ``(in - 1) / (out - 1)`` from pixel (0, 0), so a crop samples the levels on another
        grid and moves the box; a coarse start of the pyramid itself keeps the grid."""
        self._setup()
        img = _check_image(image)
        upsample = self.upsample if upsample is None else int(upsample)
        if pad_fraction > 0:
            p = max(1, int(round(pad_fraction * max(img.shape[:2]))))
            padded = np.ascontiguousarray(np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect"))
            found = self.rectangles(padded, upsample=upsample)
            return [((b[0] - p, b[1] - p, b[2] - p, b[3] - p), sc, k) for b, sc, k in found]
        h, w = img.shape[:2]
        if not (self.detect_max_side and max(h, w) > self.detect_max_side):
            if largest_only and self.pyramid_max_side:
                level = hog_pyramid.start_level(img.shape, upsample, self.pyramid_max_side)
                # below level 3 the skipped levels cost less than rebuilding the chain
                found = None
                if level >= 3:
                    found = hog_pyramid.search(self._detector, self._dlib, img, upsample=upsample, level=level,
                                               min_level=max(3, level - 6))
                if found and found[0]:
                    boxes, start = found
                    self.last_search = (f"pyramid from level {start} (boxes of "
                                        f"{hog_pyramid.smallest_exact_box(start, upsample):.0f} px and more)")
                    return boxes
            self.last_search = "full"
            return self._run(img, upsample)
        from PIL import Image  # noqa: PLC0415

        scale = self.detect_max_side / float(max(h, w))
        small = (max(1, round(w * scale)), max(1, round(h * scale)))
        self.last_search = f"scaled copy {small[0]}x{small[1]}"
        arr = np.asarray(Image.fromarray(img).resize(small, Image.Resampling.BILINEAR, reducing_gap=2.0))
        sx, sy = w / small[0], h / small[1]
        return [
            ((int(round(b[0] * sx)), int(round(b[1] * sy)), int(round((b[2] + 1) * sx)) - 1, int(round((b[3] + 1) * sy)) - 1), sc, k)
            for b, sc, k in self._run(np.ascontiguousarray(arr), upsample)
        ]

    def _run(self, img: np.ndarray, upsample: int) -> list[tuple[tuple[int, int, int, int], float, int]]:
        rects, scores, subs = self._detector.run(img, upsample, 0.0)
        return [((r.left(), r.top(), r.right(), r.bottom()), float(s), int(k)) for r, s, k in zip(rects, scores, subs)]

    def landmarks(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The 68 landmarks (integer pixel coordinates, as dlib gives them) inside ``box``."""
        self._setup()
        img = _check_image(image)
        rect = self._dlib.rectangle(int(box[0]), int(box[1]), int(box[2]), int(box[3]))
        shape = self._predictor(img, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64)

    def detect(
        self, image: np.ndarray, *, landmark_image: np.ndarray | None = None, largest_only: bool = False
    ) -> list[Face]:
        """Detect faces in ``image``; ``landmark_image`` (same size) is what the rectangles and
        the 68-point predictor run on when given (used to reproduce the official decoder).
        ``largest_only``: see :meth:`rectangles` (the primary pass only)."""
        img = _check_image(image)
        src = img if landmark_image is None else _check_image(landmark_image)
        if src.shape != img.shape:
            raise ValueError("landmark_image must have the same shape as image")
        passes = [("primary", {"largest_only": largest_only})]
        if self.fallback:
            if self.upsample != 0:
                passes.append(("upsample0", {"upsample": 0}))
            passes.append(("padded", {"pad_fraction": 0.1}))
        for pass_name, kwargs in passes:
            rects = self.rectangles(src, **kwargs)
            if rects:
                break
        faces = []
        for i, (box, score, _sub) in enumerate(rects):
            lm = self.landmarks(src, box)
            faces.append(
                Face(box=tuple(float(v) for v in box), score=score, landmarks=lm, index=i, detector=self.name,
                     detect_pass=pass_name)
            )
        return faces

    def load_official(self, path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
        """Decode ``path`` with dlib's own image loader, as the official ``get_landmark`` does.

        dlib's loader has no pixel limit and decodes whatever its libraries accept, so the
        header is checked first with the same format allow-list and pixel limit as
        :func:`~pastiche_core.faces.io.load_image`."""
        from .io import check_image_header

        check_image_header(path, max_pixels=max_pixels, formats=OFFICIAL_DECODE_FORMATS)
        dlib = _import_dlib()
        return np.ascontiguousarray(dlib.load_rgb_image(str(path)))


# --------------------------------------------------------------------------------------
# facexlib (RetinaFace)
# --------------------------------------------------------------------------------------

def facexlib_model_dirs() -> list[Path]:
    """Folders searched for facexlib's weight files, in order: ComfyUI's ``facedetection``
    folders (``models/facedetection``, when running inside ComfyUI), facexlib's own
    ``facexlib/weights`` package folder (where facexlib itself saves them), then
    ``$PASTICHE_FACEXLIB_DIR`` and ``~/.cache/pastiche/facexlib``.

    ComfyUI users usually already have ``detection_Resnet50_Final.pth`` from face-restore
    packs in one of the first two; nothing here imports ComfyUI or facexlib (facexlib imports
    torchvision at once, which may not load beside this torch)."""
    dirs: list[Path] = []
    fp = sys.modules.get("folder_paths")  # only set inside ComfyUI (or its test stand-in)
    if fp is not None:
        try:
            dirs += [Path(d) for d in fp.get_folder_paths("facedetection")]
        except Exception:  # not registered by ComfyUI itself: its default place
            if getattr(fp, "models_dir", None):
                dirs.append(Path(fp.models_dir) / "facedetection")
    try:
        spec = importlib.util.find_spec("facexlib")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(loc) / "weights" for loc in spec.submodule_search_locations]
    env = os.environ.get("PASTICHE_FACEXLIB_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.home() / ".cache" / "pastiche" / "facexlib")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


class FacexlibDetector(FaceDetector):
    """RetinaFace via facexlib, from weight files already on disk (never downloads).

    ``model_dir``: folder with the weights; default: the first of :func:`facexlib_model_dirs`
    that holds the file (looked up on every use, so a file added later is found).
    ``model``: ``retinaface_resnet50`` (file ``detection_Resnet50_Final.pth``) or
    ``retinaface_mobile0.25`` (``detection_mobilenet0.25_Final.pth``).
    """

    name = "facexlib"
    min_face = 16
    WEIGHTS = {
        "retinaface_resnet50": "detection_Resnet50_Final.pth",
        "retinaface_mobile0.25": "detection_mobilenet0.25_Final.pth",
    }

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        model: str = "retinaface_resnet50",
        conf_threshold: float = 0.8,
        device: str = "cpu",
    ) -> None:
        if model not in self.WEIGHTS:
            raise InputError(f"facexlib model '{model}' is unknown (choose from {', '.join(self.WEIGHTS)})")
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self.model = model
        self.conf_threshold = float(conf_threshold)
        self.device = device
        self._net = None

    def search_dirs(self) -> list[Path]:
        return [self._model_dir] if self._model_dir is not None else facexlib_model_dirs()

    @property
    def model_dir(self) -> Path:
        """The folder that holds the weights, else the first place searched."""
        dirs = self.search_dirs()
        return next((d for d in dirs if (d / self.WEIGHTS[self.model]).is_file()), dirs[0])

    @property
    def weight_path(self) -> Path:
        return self.model_dir / self.WEIGHTS[self.model]

    def check_files(self) -> Path:
        """Raise :class:`DetectorUnavailableError` unless the weight file is on disk."""
        path = self.weight_path
        if not path.is_file():
            where = ", ".join(f"'{d}'" for d in self.search_dirs())
            raise DetectorUnavailableError(
                f"face detector 'facexlib' needs {self.WEIGHTS[self.model]}; looked in {where} "
                "(put it in ComfyUI's models/facedetection or set PASTICHE_FACEXLIB_DIR to the folder that holds "
                "it; nothing is downloaded), or use detector 'dlib'"
            )
        return path

    def describe(self) -> str:
        return f"facexlib ({self.model})"

    def _setup(self) -> None:
        if self._net is not None:
            return
        self.check_files()  # before importing facexlib: it would try to download otherwise
        try:
            from facexlib.detection import init_detection_model  # noqa: PLC0415
        except Exception as exc:  # ImportError, or torchvision failing to load beside torch
            raise DetectorUnavailableError(
                f"face detector 'facexlib' cannot be imported ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                "pip install facexlib (it needs a torchvision that matches your torch), or use detector 'dlib'"
            ) from None
        self._net = init_detection_model(self.model, half=False, device=self.device, model_rootpath=str(self.model_dir))

    def detect(self, image: np.ndarray) -> list[Face]:
        img = _check_image(image)
        self._setup()
        import torch  # noqa: PLC0415

        bgr = np.ascontiguousarray(img[:, :, ::-1])
        with torch.no_grad():
            dets = self._net.detect_faces(bgr, self.conf_threshold)
        return faces_from_retinaface(np.asarray(dets), detector=self.name)


def faces_from_retinaface(dets: np.ndarray, detector: str = "facexlib") -> list[Face]:
    """Rows of (x1, y1, x2, y2, score, 5 x (x, y)) -> faces (order kept)."""
    faces = []
    for i, row in enumerate(np.asarray(dets, dtype=np.float64).reshape(-1, 15)):
        pts = row[5:15].reshape(5, 2)
        faces.append(Face(box=tuple(float(v) for v in row[:4]), score=float(row[4]), landmarks=pts, index=i, detector=detector))
    return faces


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., FaceDetector]] = {}
_INSTANCES: dict[str, FaceDetector] = {}


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Make ``factory(**options)`` available as ``get_detector(name)``."""
    _REGISTRY[name] = factory
    _INSTANCES.pop(name, None)


def detector_names() -> list[str]:
    return list(_REGISTRY)


def get_detector(name: str | FaceDetector = "dlib", **options) -> FaceDetector:
    """A detector by name (instances without options are shared), or ``name`` itself if it is
    already a detector."""
    if isinstance(name, FaceDetector):
        return name
    if name not in _REGISTRY:
        raise InputError(f"face detector '{name}' is unknown (choose from {', '.join(_REGISTRY)})")
    if options:
        return _REGISTRY[name](**options)
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]


def available_detectors() -> dict[str, str | None]:
    """``{name: None if usable here, else the reason}`` without loading any model."""
    out: dict[str, str | None] = {}
    for name in _REGISTRY:
        reason = None
        try:
            det = get_detector(name)
            if isinstance(det, DlibDetector):
                if importlib.util.find_spec("dlib") is None:
                    raise DetectorUnavailableError(f"dlib is not installed: {DLIB_INSTALL_HINT}")
                det.predictor_path()
            elif isinstance(det, FacexlibDetector):
                det.check_files()
                if importlib.util.find_spec("facexlib") is None:
                    raise DetectorUnavailableError("facexlib is not installed: pip install facexlib")
        except InputError as exc:
            reason = str(exc)
        out[name] = reason
    return out


register_detector("dlib", DlibDetector)
register_detector("facexlib", FacexlibDetector)
