"""Faces: load a photo, detect faces, align them (FFHQ recipe), paste stylised crops back.

    from pastiche_core.faces import align_file, paste_faces, save_image
    aligned, rgb, alpha, info = align_file("me.jpg", face="all")     # dlib by default
    ...stylise each aligned[i].image...
    out = paste_faces(rgb, stylised_crops, aligned)

Modules: :mod:`.io` (load/save), :mod:`.detect` (backends), :mod:`.align` (the recipe),
:mod:`.paste` (inverse warp + blend), :mod:`.command` (the ``align`` CLI). Importing this
package loads numpy and Pillow only; dlib, torch and kornia load on first use.
"""
from .align import AlignedFace, align_faces, align_file, align_from_landmarks, face_quad, select_faces
from .detect import (
    DetectorUnavailableError,
    DlibDetector,
    Face,
    FaceDetector,
    FacexlibDetector,
    NoFaceError,
    available_detectors,
    detector_names,
    get_detector,
    register_detector,
)
from .io import ImageLoadError, load_image, save_image
from .paste import face_mask, paste_faces

__all__ = [
    "AlignedFace", "align_faces", "align_file", "align_from_landmarks", "face_quad", "select_faces",
    "DetectorUnavailableError", "DlibDetector", "Face", "FaceDetector", "FacexlibDetector", "NoFaceError",
    "available_detectors", "detector_names", "get_detector", "register_detector",
    "ImageLoadError", "load_image", "save_image", "face_mask", "paste_faces",
]
