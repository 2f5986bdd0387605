"""Paste stylised face crops back into the original photo.

Each crop is warped with the inverse of its alignment transform (``AlignedFace.matrix``),
with kornia, into the photo's frame (the EXIF-upright frame that :func:`load_image` and
:func:`align_file` return), and blended through a feathered face-shaped mask. The crop may
have any size (a 1024 generator output for a 256 alignment, say): the transform is rescaled.

Guarantees:
* pixels where every face mask is exactly 0 are returned bit-for-bit unchanged;
* an RGBA photo (HxWx4) comes back RGBA with its alpha plane untouched.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from ..errors import InputError
from .align import AlignedFace

__all__ = ["face_mask", "face_masks", "paste_faces", "DEFAULT_ELLIPSE"]

#: Default mask ellipse in crop-relative units: centre x, centre y, radius x, radius y.
#: In an FFHQ-aligned crop the eyes sit near y=0.47 and the mouth near y=0.75; this covers
#: forehead to chin and cheek to cheek, and stays clear of the crop's edges.
DEFAULT_ELLIPSE = (0.5, 0.53, 0.40, 0.45)

_MASK_WORK_SIZE = 256


def _blur(mask, sigma: float):
    import kornia  # noqa: PLC0415

    if sigma <= 0:
        return mask
    k = int(2 * round(3 * sigma) + 1)
    return kornia.filters.gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="constant")


@functools.lru_cache(maxsize=16)
def _ellipse_mask_cached(size: int, ellipse: tuple[float, float, float, float], feather: float) -> np.ndarray:
    m = _face_mask(size, shape="ellipse", ellipse=ellipse, landmarks=None, feather=feather)
    m.setflags(write=False)
    return m


def face_mask(
    size: int,
    *,
    shape: str = "ellipse",
    ellipse: tuple[float, float, float, float] = DEFAULT_ELLIPSE,
    landmarks: np.ndarray | None = None,
    feather: float = 0.03,
) -> np.ndarray:
    """A ``size`` x ``size`` float32 mask in [0, 1] for an aligned crop: 1 inside the face,
    a soft inner edge (Gaussian of sigma ``feather * size``, kornia) that fades to about
    0.001 at the shape's outline, and exactly 0 outside it.

    ``shape="ellipse"`` uses ``ellipse`` (crop-relative centre x, centre y, radius x,
    radius y). ``shape="landmarks"`` uses the jaw line and the eyebrows raised to the
    hairline, from 68 ``landmarks`` given in crop pixel coordinates.
    """
    if shape == "ellipse":
        return _ellipse_mask_cached(int(size), tuple(float(v) for v in ellipse), float(feather)).copy()
    return _face_mask(size, shape=shape, ellipse=ellipse, landmarks=landmarks, feather=feather)


def _face_mask(
    size: int,
    *,
    shape: str = "ellipse",
    ellipse: tuple[float, float, float, float] = DEFAULT_ELLIPSE,
    landmarks: np.ndarray | None = None,
    feather: float = 0.03,
) -> np.ndarray:
    """Uncached :func:`face_mask`."""
    import torch  # noqa: PLC0415
    from PIL import Image, ImageDraw  # noqa: PLC0415

    size = int(size)
    if size > _MASK_WORK_SIZE:
        # a feathered mask is smooth: build it at a working size and upsample (fast, and
        # the result does not depend on the crop size)
        scale = size / _MASK_WORK_SIZE
        lm_small = None if landmarks is None else (np.asarray(landmarks, dtype=np.float64) + 0.5) / scale - 0.5
        small = _face_mask(_MASK_WORK_SIZE, shape=shape, ellipse=ellipse, landmarks=lm_small, feather=feather)
        big = torch.nn.functional.interpolate(
            torch.from_numpy(small)[None, None], size=(size, size), mode="bilinear", align_corners=False
        )
        return big[0, 0].numpy().astype(np.float32)
    if shape == "ellipse":
        cx, cy, rx, ry = ellipse
        t = (np.arange(size, dtype=np.float64) + 0.5) / size
        r2 = ((t[None, :] - cx) / rx) ** 2 + ((t[:, None] - cy) / ry) ** 2
        binary = (r2 <= 1.0).astype(np.float32)
    elif shape == "landmarks":
        if landmarks is None or np.asarray(landmarks).shape != (68, 2):
            raise InputError("a landmark-shaped face mask needs the 68 landmarks of the face")
        lm = np.asarray(landmarks, dtype=np.float64)
        jaw = lm[0:17]
        brows = lm[17:27][::-1]
        lift = 0.6 * (lm[8, 1] - lm[27, 1])  # hairline above the brows: 0.6 x nose-bridge-to-chin
        forehead = brows - np.array([0.0, lift])
        poly = np.concatenate([jaw, forehead])
        ss = 4  # supersample the polygon
        canvas = Image.new("L", (size * ss, size * ss), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in ((poly + 0.5) * ss).tolist()], fill=255)
        binary = (np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)
    else:
        raise InputError(f"face mask shape '{shape}' is unknown (use 'ellipse' or 'landmarks')")
    # keep a 1-pixel zero frame so the crop's own edge never shows
    binary[:1, :] = binary[-1:, :] = 0
    binary[:, :1] = binary[:, -1:] = 0
    sigma = float(feather) * size
    m = torch.from_numpy(binary)[None, None]
    if sigma > 0:
        eroded = (_blur(m, sigma) >= 0.999).to(m.dtype)  # erode by ~3 sigma
        m = _blur(eroded, sigma) * m  # feather inward; exactly 0 outside the shape
    return m[0, 0].numpy().astype(np.float32)


def _crops_to_list(crops, value_range: tuple[float, float]) -> list[np.ndarray]:
    """Normalise crops to a list of float32 HxWx3 arrays in 0-255."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        torch = None
    items: list = []
    if torch is not None and isinstance(crops, torch.Tensor):
        t = crops.detach().to("cpu", torch.float32)
        if t.ndim == 3:
            t = t[None]
        items = [x for x in t]
    elif isinstance(crops, np.ndarray) and crops.ndim == 4:
        items = list(crops)
    elif isinstance(crops, np.ndarray):
        items = [crops]
    else:
        items = list(crops)
    lo, hi = float(value_range[0]), float(value_range[1])
    out = []
    for x in items:
        if torch is not None and isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
            is_float = True
        else:
            x = np.asarray(x)
            is_float = x.dtype != np.uint8
        if x.ndim != 3:
            raise InputError(f"a stylised crop must be a 3-D image, got shape {x.shape}")
        if x.shape[0] == 3 and x.shape[2] != 3:  # CHW -> HWC
            x = np.transpose(x, (1, 2, 0))
        if x.shape[2] != 3 or x.shape[0] != x.shape[1]:
            raise InputError(f"a stylised crop must be square RGB (HxWx3 or 3xHxW), got shape {x.shape}")
        if is_float:
            x = (x.astype(np.float32) - lo) * (255.0 / (hi - lo))
        out.append(np.clip(x.astype(np.float32), 0.0, 255.0))
    return out


def paste_faces(
    photo: np.ndarray,
    crops,
    faces: Sequence[AlignedFace] | AlignedFace,
    *,
    mask: str = "ellipse",
    feather: float = 0.03,
    ellipse: tuple[float, float, float, float] = DEFAULT_ELLIPSE,
    value_range: tuple[float, float] = (0.0, 1.0),
    device: str = "cpu",
    alpha: np.ndarray | None = None,
) -> np.ndarray:
    """Paste stylised crops into ``photo`` (HxWx3 or HxWx4 uint8), one per aligned face.

    ``crops``: a uint8 HxWx3 array, a float array/tensor (CHW or HWC, values in
    ``value_range``), a batch (N, ...) of those, or a list. Crops are square, any size.
    ``faces``: the :class:`AlignedFace` records they came from (same order).
    ``mask``: ``"ellipse"`` or ``"landmarks"`` (68-point faces only), see :func:`face_mask`.
    ``alpha``: an HxW uint8 alpha plane for an RGB ``photo`` (what :func:`load_image`
    returns); the result is then HxWx4 with that alpha.
    Returns a new uint8 array shaped like ``photo`` (HxWx4 when it has alpha or ``alpha`` is
    given); the alpha plane is kept as is.
    """
    base = np.asarray(photo)
    if base.dtype != np.uint8 or base.ndim != 3 or base.shape[2] not in (3, 4):
        raise InputError(f"paste-back needs an HxWx3 or HxWx4 uint8 photo, got {base.dtype} {base.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if base.shape[2] != 3 or alpha.dtype != np.uint8 or alpha.shape != base.shape[:2]:
            raise InputError(
                f"paste-back alpha must be HxW uint8 matching an RGB photo {base.shape[:2]}, got {alpha.dtype} {alpha.shape}"
            )
        base = np.dstack([base, alpha])
    if isinstance(faces, AlignedFace):
        faces = [faces]
    faces = list(faces)
    crop_list = _crops_to_list(crops, value_range)
    if len(crop_list) != len(faces):
        raise InputError(f"paste-back got {len(crop_list)} crops for {len(faces)} aligned faces")

    out = base.copy()
    rgb = out[:, :, :3]
    h, w = rgb.shape[:2]
    for crop, af in zip(crop_list, faces):
        s = crop.shape[0]
        roi = _frame_roi(af, s, h, w)
        if roi is None:
            continue  # the face lies outside this photo
        x0, y0, x1, y1, m_roi = roi
        fm = _crop_mask(af, s, mask, feather, ellipse)
        warped = _warp_to_roi(np.dstack([crop, fm[:, :, None] * 255.0]), m_roi, (y1 - y0, x1 - x0), device)
        colour = warped[:, :, :3]
        alpha_m = np.clip(warped[:, :, 3:4] / 255.0, 0.0, 1.0)
        roi_px = rgb[y0:y1, x0:x1].astype(np.float32)
        blended = np.clip(np.rint(roi_px + (colour - roi_px) * alpha_m), 0, 255).astype(np.uint8)
        touch = alpha_m[:, :, 0] > 0
        rgb[y0:y1, x0:x1][touch] = blended[touch]
    return out


def _frame_roi(af: AlignedFace, s: int, h: int, w: int):
    """The photo rectangle a ``s`` px crop of ``af`` lands in, and the crop-to-rectangle
    affine (2x3); None when it misses the photo."""
    m_crop2img = af.matrix(s)
    corners = np.array([[-0.5, -0.5, 1], [s - 0.5, -0.5, 1], [s - 0.5, s - 0.5, 1], [-0.5, s - 0.5, 1]]) @ m_crop2img.T
    x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 2, w)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    return x0, y0, x1, y1, (shift @ m_crop2img)[:2]


def _crop_mask(af: AlignedFace, s: int, mask: str, feather: float, ellipse) -> np.ndarray:
    if mask == "landmarks":
        lm = af.landmarks
        if lm is None or np.asarray(lm).shape != (68, 2):
            raise InputError("mask='landmarks' needs 68-point landmarks (use the dlib detector or mask='ellipse')")
        inv = np.linalg.inv(af.matrix(s))
        lm_crop = np.c_[np.asarray(lm, dtype=np.float64), np.ones(68)] @ inv.T
        return face_mask(s, shape="landmarks", landmarks=lm_crop[:, :2], feather=feather)
    return face_mask(s, shape=mask, ellipse=ellipse, feather=feather)


def _warp_to_roi(src_hwc: np.ndarray, m_roi: np.ndarray, dsize: tuple[int, int], device: str) -> np.ndarray:
    import torch  # noqa: PLC0415
    import kornia  # noqa: PLC0415

    src = torch.from_numpy(np.ascontiguousarray(src_hwc, dtype=np.float32)).permute(2, 0, 1)[None].to(device)
    mat = torch.from_numpy(m_roi.astype(np.float32))[None].to(device)
    warped = kornia.geometry.transform.warp_affine(
        src, mat, dsize=dsize, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return warped[0].permute(1, 2, 0).cpu().numpy()


def face_masks(
    frame: tuple[int, int],
    faces: Sequence[AlignedFace] | AlignedFace,
    *,
    mask: str = "ellipse",
    feather: float = 0.03,
    ellipse: tuple[float, float, float, float] = DEFAULT_ELLIPSE,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Each face's region in the photo's frame (``frame`` = (H, W)): ``(soft, hard)``, both
    float32 ``[N, H, W]``.

    ``soft`` is paste-back's blend mask (the same shape and feather as :func:`paste_faces`
    with these options, for a crop of the alignment's size): 1 inside the face, feathered
    inward, exactly 0 outside. ``hard`` is the unfeathered shape, 0 or 1, which covers the
    soft mask's whole support (for nodes that want a binary region, e.g. to inpaint)."""
    if isinstance(faces, AlignedFace):
        faces = [faces]
    h, w = int(frame[0]), int(frame[1])
    soft = np.zeros((len(faces), h, w), np.float32)
    hard = np.zeros((len(faces), h, w), np.float32)
    for i, af in enumerate(faces):
        s = int(af.size)
        roi = _frame_roi(af, s, h, w)
        if roi is None:
            continue
        x0, y0, x1, y1, m_roi = roi
        # the hard shape is the soft mask's support, warped the same way; a pixel the soft
        # mask touches at all is inside it, so hard >= (soft > 0)
        shapes = np.dstack([_crop_mask(af, s, mask, feather, ellipse), _crop_mask(af, s, mask, 0.0, ellipse)])
        warped = _warp_to_roi(shapes, m_roi, (y1 - y0, x1 - x0), device)
        soft[i, y0:y1, x0:x1] = np.clip(warped[:, :, 0], 0.0, 1.0)
        hard[i, y0:y1, x0:x1] = (warped[:, :, 1] > 0).astype(np.float32)
    return soft, hard
