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
* Only photo formats are decoded (:data:`ALLOWED_FORMATS`): every other Pillow plugin (EPS
  and PostScript hand the file to Ghostscript, PDF, ICO, PSD, ...) is never consulted.
* The pixel count is checked from the header, before any pixel is decoded
  (:func:`pixel_limit`: 100 megapixels unless ``PASTICHE_MAX_PIXELS`` or the ``max_pixels``
  argument says otherwise). A 1-bit PNG of a few KB can declare billions of pixels, and every
  one of them becomes 3 bytes of RGB, then 12 of float.
* :func:`load_image_bytes` decodes an image held in memory (a record of an lmdb training set)
  the same way, under the same rules.

:func:`save_image` writes through a temporary file in the target folder and renames it into
place, so a failure never leaves a half-written output (and never clobbers an existing one).
"""
from __future__ import annotations

import os
import re
import struct
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

__all__ = ["ImageLoadError", "load_image", "load_image_bytes", "to_rgb_uint8", "resize_center_crop", "save_image",
           "DEFAULT_BACKGROUND", "ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "pixel_limit", "check_image_header"]

#: Colour that transparent pixels are composited onto (documented choice: white).
DEFAULT_BACKGROUND = (255, 255, 255)

_EXIF_ORIENTATION_TAG = 0x0112

#: Formats :func:`load_image` decodes (Pillow format names; "JPEG" includes the multi-picture
#: JPEGs of many cameras, which Pillow reports as MPO). Everything we save is readable back.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

#: 100 megapixels: above a 48 MP (8000x6000) phone photo with room to spare, while the
#: pipeline's working copies of the largest admitted image stay around a few GB.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "PASTICHE_MAX_PIXELS"

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
_FORMAT_NAMES = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")


class ImageLoadError(InputError):
    """An image file could not be read (missing, empty, not an image, truncated, too small)."""


def _describe(path: Path) -> str:
    # A path can be as long as the OS allows (or crafted to be): keep both ends, which say
    # where and which file.
    s = str(path)
    return f"'{s}'" if len(s) <= 160 else f"'{s[:60]}...{s[-90:]}'"


def pixel_limit(value: int | None = None) -> int:
    """The pixel limit: ``value`` when given, else ``$PASTICHE_MAX_PIXELS``, else 100 megapixels."""
    if value is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(float(raw.replace("_", "")))
        except ValueError:
            raise InputError(f"{MAX_PIXELS_ENV}={raw[:40]!r} is not a number of pixels (e.g. 100000000)") from None
        what = MAX_PIXELS_ENV
    else:
        what = "max_pixels"
    if int(value) < 1:
        raise InputError(f"{what} must be a positive number of pixels, got {value}")
    return int(value)


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


def _too_many_pixels(label: str, w: int | None, h: int | None, n: int, limit: int) -> ImageLoadError:
    dims = f"{w}x{h} = " if w is not None else ""
    hint = f"set {MAX_PIXELS_ENV} to allow more"
    return ImageLoadError(
        f"image {label} is too large: {dims}{n} pixels ({_megapixels(n)}), "
        f"the limit is {limit} ({_megapixels(limit)}; {hint})"
    )


def _open(source: Path | BytesIO, label: str, limit: int, formats: tuple[str, ...]) -> Image.Image:
    """``Image.open`` of a file or of bytes in memory (``label`` names it in errors), restricted
    to ``formats``, with the pixel limit checked on the header.

    Pillow's decompression-bomb warning (above ``Image.MAX_IMAGE_PIXELS``, ~89 MP) is caught
    and replaced by our own limit, which is the one that decides; its hard error (twice that)
    still refuses the file, with our wording."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            im = Image.open(source, formats=list(formats))
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            n = int(found.group(1)) if found else 0
            if n > limit or not found:
                raise _too_many_pixels(label, None, None, n, limit) from None
            # Our limit was raised above Pillow's own hard stop (2x Image.MAX_IMAGE_PIXELS).
            raise ImageLoadError(
                f"image {label} is too large for Pillow: {n} pixels ({_megapixels(n)}), over twice "
                f"Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}) although {MAX_PIXELS_ENV} allows {limit}"
            ) from None
    for w in caught:
        if not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    width, height = im.size
    if width * height > limit:
        im.close()
        raise _too_many_pixels(label, width, height, width * height, limit)
    return im


def check_image_header(
    path: str | os.PathLike, *, max_pixels: int | None = None, formats: tuple[str, ...] = ALLOWED_FORMATS
) -> tuple[str, tuple[int, int]]:
    """``(format, (W, H))`` of ``path`` from its header alone, or :class:`ImageLoadError` when
    the format is not allowed or the image has more pixels than the limit. Callers that hand
    a file to another decoder (dlib) check it here first, so that one limit holds everywhere."""
    p = Path(path)
    limit = pixel_limit(max_pixels)
    try:
        with _open(p, _describe(p), limit, formats) as im:
            return str(im.format), im.size
    except UnidentifiedImageError:
        raise _unidentified(p, _describe(p), formats) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise ImageLoadError(f"image {_describe(p)} is corrupt or unreadable ({_first_line(exc)})") from None


_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP",
}


def _unidentified(source: Path | BytesIO, label: str, formats: tuple[str, ...] = ALLOWED_FORMATS) -> ImageLoadError:
    """Pillow identified no allowed format: a photo format with a broken header, or another
    kind of file altogether (the message says which, from the first bytes)."""
    if isinstance(source, BytesIO):
        head = source.getvalue()[:16]
    else:
        try:
            with open(source, "rb") as fh:
                head = fh.read(16)
        except OSError:
            head = b""
    kind = next((f for sig, f in _SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WEBP"
    if kind is not None and kind in formats:
        return ImageLoadError(f"image {label} is a corrupt {kind} file (its header cannot be read)")
    names = ", ".join(_FORMAT_NAMES) if formats == ALLOWED_FORMATS else "/".join(formats)
    return ImageLoadError(f"image {label} is not an image in an accepted format ({names})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


def load_image(
    path: str | os.PathLike,
    *,
    background: tuple[int, int, int] | None = DEFAULT_BACKGROUND,
    min_side: int = 16,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read ``path`` as ``(rgb, alpha, info)``.

    ``rgb`` is ``HxWx3`` uint8 in display orientation (EXIF applied); ``alpha`` is ``HxW``
    uint8 or ``None`` when the file has no transparency; ``info`` records what was done
    (``path``, ``format``, ``mode``, ``stored_size``, ``size`` as (W, H),
    ``exif_orientation``, ``transposed``, ``bit_depth``, ``background``).

    ``max_pixels``: the largest W*H decoded (default: :func:`pixel_limit`), checked on the
    header before decoding.

    Raises :class:`ImageLoadError` with a one-line message for any unreadable file, a format
    outside :data:`ALLOWED_FORMATS`, or too many pixels.
    """
    p = Path(path)
    limit = pixel_limit(max_pixels)
    try:
        if not p.exists():
            raise ImageLoadError(f"image {_describe(p)} does not exist")
        if p.is_dir():
            raise ImageLoadError(f"image {_describe(p)} is a folder, not an image file")
        nbytes = p.stat().st_size
    except OSError as exc:  # a name too long, a path through a file, ...
        raise ImageLoadError(f"image {_describe(p)} cannot be read: {exc.strerror or exc}") from None
    if nbytes == 0:
        raise ImageLoadError(f"image {_describe(p)} is an empty file (0 bytes)")
    return _decode(p, _describe(p), str(p), limit, background, min_side)


def load_image_bytes(
    data: bytes,
    name: str,
    *,
    background: tuple[int, int, int] | None = DEFAULT_BACKGROUND,
    min_side: int = 16,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """:func:`load_image` of an encoded image held in memory (a record of an lmdb training set):
    the same decoder, format allow-list and pixel limit. ``name`` says in every error which
    image it was (e.g. ``"record '256-00007' of lmdb '/data/ffhq'"``); ``info["path"]`` is it."""
    limit = pixel_limit(max_pixels)
    if not data:
        raise ImageLoadError(f"image {name} is empty (0 bytes)")
    return _decode(BytesIO(data), name, name, limit, background, min_side)


def _decode(source: Path | BytesIO, label: str, where: str, limit: int,
            background: tuple[int, int, int] | None, min_side: int):
    """The decoding half of :func:`load_image`, for a checked file or bytes in memory."""
    try:
        with _open(source, label, limit, ALLOWED_FORMATS) as im:
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
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise _unidentified(source, label) from None
    except PermissionError:
        raise ImageLoadError(f"image {label} cannot be read: permission denied") from None
    except MemoryError:
        raise ImageLoadError(f"image {label} needs more memory to decode than is available") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
            ZeroDivisionError, OverflowError, RuntimeError) as exc:
        # Pillow's plugins report malformed headers and data with any of these.
        msg = _first_line(exc)
        if "truncated" in msg.lower():
            raise ImageLoadError(f"image {label} is truncated or corrupt ({msg})") from None
        raise ImageLoadError(f"image {label} is corrupt or unreadable ({msg})") from None

    w, h = upright.size
    if min(w, h) < min_side:
        raise ImageLoadError(
            f"image {label} is too small ({w}x{h} px; at least {min_side} px per side needed)"
        )

    rgb, alpha, bit_depth = to_rgb_uint8(upright, background=background)
    info: dict[str, Any] = {
        "path": where,
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
        raise InputError(f"output {_describe(p)} could not be written: {exc.strerror or exc}") from None
    except CheckpointError as exc:  # a full disk: the writer's message, as an input error of this output
        raise InputError(f"output {_describe(p)} could not be written: {exc}") from None
    return p
