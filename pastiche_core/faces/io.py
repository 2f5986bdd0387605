"""Reading and writing photos for the face pipeline.

One decoder (PIL), one normalisation, used for everything downstream:

* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo tagged
  "rotate 90" is analysed, aligned and pasted back upright. ``info["exif_orientation"]``
  keeps the tag that was applied.
* Every mode becomes 8-bit RGB: ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` through
  PIL's conversion, 16-bit (``I;16*``) and 32-bit (``I``/``F``) grey by scaling to 0-255
  (never by truncation), 48-bit RGB PNGs as PIL decodes them (8 bits per channel).
* Transparency (``RGBA``/``LA``/``PA``/``P`` with a transparent index) is returned separately
  as an ``HxW`` uint8 alpha plane, and the colour is composited onto a solid background
  (white by default; ``background=None`` keeps the raw colour channels). The background is
  recorded in ``info["background"]``.
* Broken input is an :class:`ImageLoadError` (an ``InputError``) with one line that names the
  file and the problem: missing, a folder, empty, not an image, truncated or corrupt, too
  small, too many pixels.

:func:`save_image` writes through a temporary file in the target folder and renames it into
place, so a failure never leaves a half-written output (and never clobbers an existing one).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

__all__ = ["ImageLoadError", "load_image", "to_rgb_uint8", "resize_center_crop", "save_image", "DEFAULT_BACKGROUND"]

#: Colour that transparent pixels are composited onto (documented choice: white).
DEFAULT_BACKGROUND = (255, 255, 255)

_EXIF_ORIENTATION_TAG = 0x0112

_SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}


class ImageLoadError(InputError):
    """An image file could not be read (missing, empty, not an image, truncated, too small)."""


def _describe(path: Path) -> str:
    return f"'{path}'"


def load_image(
    path: str | os.PathLike,
    *,
    background: tuple[int, int, int] | None = DEFAULT_BACKGROUND,
    min_side: int = 16,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read ``path`` as ``(rgb, alpha, info)``.

    ``rgb`` is ``HxWx3`` uint8 in display orientation (EXIF applied); ``alpha`` is ``HxW``
    uint8 or ``None`` when the file has no transparency; ``info`` records what was done
    (``path``, ``format``, ``mode``, ``stored_size``, ``size`` as (W, H),
    ``exif_orientation``, ``transposed``, ``bit_depth``, ``background``).

    Raises :class:`ImageLoadError` with a one-line message for any unreadable file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"image {_describe(p)} does not exist")
    if p.is_dir():
        raise ImageLoadError(f"image {_describe(p)} is a folder, not an image file")
    try:
        nbytes = p.stat().st_size
    except OSError as exc:
        raise ImageLoadError(f"image {_describe(p)} cannot be read: {exc.strerror or exc}") from None
    if nbytes == 0:
        raise ImageLoadError(f"image {_describe(p)} is an empty file (0 bytes)")

    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* (between 1x and 2x the limit) is not an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                fmt = im.format
                stored_mode = im.mode
                stored_size = im.size
                try:
                    orientation = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
                except Exception:  # a broken EXIF block must not stop the photo from loading
                    orientation = 1
                im.load()
                try:
                    upright = ImageOps.exif_transpose(im)
                except Exception:
                    upright = im.copy()
                    orientation = 1
                if upright is None:  # older Pillow with in_place semantics
                    upright = im.copy()
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"image {_describe(p)} is not an image (or not a format Pillow can read)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image {_describe(p)} has too many pixels to load safely ({exc})") from None
    except PermissionError:
        raise ImageLoadError(f"image {_describe(p)} cannot be read: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower():
            raise ImageLoadError(f"image {_describe(p)} is truncated or corrupt ({msg})") from None
        raise ImageLoadError(f"image {_describe(p)} is corrupt or unreadable ({msg})") from None

    w, h = upright.size
    if min(w, h) < min_side:
        raise ImageLoadError(
            f"image {_describe(p)} is too small ({w}x{h} px; at least {min_side} px per side needed)"
        )

    rgb, alpha, bit_depth = to_rgb_uint8(upright, background=background)
    info: dict[str, Any] = {
        "path": str(p),
        "format": fmt,
        "mode": stored_mode,
        "stored_size": stored_size,
        "size": (w, h),
        "exif_orientation": orientation,
        "transposed": upright.size != stored_size or orientation not in (0, 1),
        "bit_depth": bit_depth,
        "has_alpha": alpha is not None,
        "background": background if alpha is not None else None,
    }
    return rgb, alpha, info


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    out = np.rint(arr.astype(np.float64) * (255.0 / full_scale))
    return np.clip(out, 0, 255).astype(np.uint8)


def to_rgb_uint8(
    im: Image.Image, *, background: tuple[int, int, int] | None = DEFAULT_BACKGROUND
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Convert any PIL image to ``(HxWx3 uint8 RGB, HxW uint8 alpha or None, source bit depth)``."""
    mode = im.mode
    alpha: np.ndarray | None = None
    bit_depth = 8

    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        grey = _scale_to_uint8(np.asarray(im).astype(np.uint16), 65535.0)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        return np.ascontiguousarray(rgb), None, 16
    if mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        peak = int(arr.max()) if arr.size else 0
        # 'I' usually holds 16-bit data (PNG/TIFF); scale by its nominal range.
        full = 255.0 if peak <= 255 else (65535.0 if peak <= 65535 else float(peak))
        grey = _scale_to_uint8(np.clip(arr, 0, None), full)
        bit_depth = 8 if full == 255.0 else (16 if full == 65535.0 else 32)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), None, bit_depth
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        full = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        grey = _scale_to_uint8(np.clip(arr, 0, None), full)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), None, 32

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        alpha = np.ascontiguousarray(rgba[:, :, 3])
        colour = rgba[:, :, :3]
        if background is None:
            rgb = np.ascontiguousarray(colour)
        else:
            a = alpha[:, :, None].astype(np.float32) / 255.0
            bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
            rgb = np.clip(np.rint(colour.astype(np.float32) * a + bg * (1.0 - a)), 0, 255).astype(np.uint8)
        return rgb, alpha, bit_depth

    if mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8), None, bit_depth


def resize_center_crop(rgb: np.ndarray, size: int = 256) -> np.ndarray:
    """The official style-image transform ``Resize(size)`` (shorter side, bilinear) then
    ``CenterCrop(size)``, on HxWx3 uint8."""
    im = Image.fromarray(rgb)
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()


def save_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    quality: int = 95,
    text: dict[str, str] | None = None,
) -> Path:
    """Write ``rgb`` (HxWx3 uint8, plus optional HxW alpha) to ``path`` atomically.

    ``text``: key/value metadata, written as PNG text chunks (ignored by other formats).

    The format comes from the extension (.png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff).
    Formats without alpha (JPEG, BMP) get the colour composited onto white. The data goes to a
    temporary file next to ``path`` that is renamed over it only once it is complete.
    """
    p = Path(path)
    fmt = _SAVE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InputError(
            f"output '{p}': unknown image extension '{p.suffix}' (use one of {', '.join(sorted(_SAVE_FORMATS))})"
        )
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"output '{p}': expected an HxWx3 uint8 image, got {arr.dtype} {arr.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != arr.shape[:2] or alpha.dtype != np.uint8:
            raise InputError(f"output '{p}': alpha must be HxW uint8 matching the image, got {alpha.dtype} {alpha.shape}")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output '{p}': folder '{folder}' does not exist")

    if alpha is not None and fmt in _ALPHA_FORMATS:
        im = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    elif alpha is not None:
        a = alpha[:, :, None].astype(np.float32) / 255.0
        flat = np.clip(np.rint(arr.astype(np.float32) * a + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)
        im = Image.fromarray(flat, "RGB")
    else:
        im = Image.fromarray(arr, "RGB")

    kwargs: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = int(quality)
    if text and fmt == "PNG":
        from PIL import PngImagePlugin

        kwargs["pnginfo"] = PngImagePlugin.PngInfo()
        for key, value in text.items():
            kwargs["pnginfo"].add_text(key, value)

    from ..atomic import atomic_write  # the one writer: short temp name, umask, fsync, cleanup

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            im.save(fh, format=fmt, **kwargs)

    from ..errors import CheckpointError

    try:
        atomic_write(p, write)
    except OSError as exc:
        raise InputError(f"output '{p}' could not be written: {exc.strerror or exc}") from None
    except CheckpointError as exc:  # a full disk: the writer's message, as an input error of this output
        raise InputError(f"output '{p}' could not be written: {exc}") from None
    return p
