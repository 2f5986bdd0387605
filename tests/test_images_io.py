"""pastiche_core.faces.io: loading every kind of photo, atomic saving.

Edge files come from tests/fixtures/edge (copied from the project's shared edge set, see its
README); the large ones are generated here instead of being stored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pastiche_core.errors import InputError
from pastiche_core.faces import io as fio
from pastiche_core.faces.io import ImageLoadError, load_image, save_image

FIX = Path(__file__).parent / "fixtures"
EDGE = FIX / "edge"
PHOTO = FIX / "align" / "dsg_019706" / "input.jpg"


@pytest.fixture(scope="module")
def photo512() -> np.ndarray:
    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB").resize((512, 512), Image.Resampling.LANCZOS))


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "name, words",
    [
        ("zero_bytes.jpg", "empty file"),
        ("not_an_image.png", "not an image"),
        ("truncated.jpg", "truncated"),
    ],
)
def test_broken_files_give_one_line_errors(name, words):
    with pytest.raises(ImageLoadError) as err:
        load_image(EDGE / name)
    msg = str(err.value)
    assert isinstance(err.value, InputError)
    assert words in msg and name in msg and "\n" not in msg


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_tiny_image_below_min_side_is_an_error(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (8, 5), (10, 20, 30)).save(p)
    with pytest.raises(ImageLoadError, match=r"too small \(8x5 px"):
        load_image(p)
    rgb, _, _ = load_image(p, min_side=1)
    assert rgb.shape == (5, 8, 3)


def test_truncated_does_not_flip_global_pil_setting():
    from PIL import ImageFile

    with pytest.raises(ImageLoadError):
        load_image(EDGE / "truncated.jpg")
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# --------------------------------------------------------------------------- modes


def test_exif_orientation_is_applied():
    rgb, alpha, info = load_image(EDGE / "exif_orientation6.jpg")
    assert info["stored_size"] == (480, 640)
    assert info["size"] == (640, 480) and rgb.shape == (480, 640, 3)
    assert info["exif_orientation"] == 6 and info["transposed"]
    with Image.open(EDGE / "exif_orientation6.jpg") as im:
        raw = np.asarray(im.convert("RGB"))
    # orientation 6 = displayed rotated 90 degrees clockwise
    assert np.array_equal(rgb, np.rot90(raw, k=-1))
    assert alpha is None


def test_grayscale_and_palette_become_rgb():
    rgb, alpha, info = load_image(EDGE / "grayscale.jpg")
    assert rgb.shape == (1024, 1024, 3) and info["mode"] == "L" and alpha is None
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    rgb, alpha, info = load_image(EDGE / "palette_P.png")
    assert info["mode"] == "P" and rgb.shape == (512, 512, 3) and alpha is None


def test_gray16_is_scaled_not_truncated(tmp_path, photo512):
    grey8 = np.asarray(Image.fromarray(photo512).convert("L"))
    p = tmp_path / "gray16.png"
    Image.fromarray(grey8.astype(np.uint16) * 257).save(p)
    with Image.open(p) as im:
        assert im.mode == "I;16"
    rgb, alpha, info = load_image(p)
    assert info["bit_depth"] == 16 and alpha is None
    assert np.array_equal(rgb[..., 0], grey8)


def _write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A minimal 48-bit RGB PNG writer (Pillow cannot write this mode)."""
    import struct
    import zlib

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def test_rgb48_png(tmp_path, photo512):
    p = tmp_path / "rgb48.png"
    _write_png16_rgb(p, photo512.astype(np.uint16) * 257)
    rgb, alpha, _ = load_image(p)
    assert rgb.shape == (512, 512, 3) and alpha is None
    assert np.abs(rgb.astype(int) - photo512).max() <= 1


def test_cmyk_jpeg(tmp_path, photo512):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(photo512).convert("CMYK").save(p, quality=95)
    rgb, alpha, info = load_image(p)
    assert info["mode"] == "CMYK" and rgb.shape == (512, 512, 3) and alpha is None
    assert np.abs(rgb.astype(float) - photo512).mean() < 4


def test_rgba_alpha_kept_and_flattened_on_white(tmp_path, photo512):
    yy, xx = np.mgrid[:512, :512]
    r = np.hypot((xx - 256) / 200.0, (yy - 256) / 240.0)
    alpha = np.where(r <= 0.9, 255, np.where(r <= 1.0, 128, 0)).astype(np.uint8)
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([photo512, alpha]), "RGBA").save(p)
    rgb, a, info = load_image(p)
    assert np.array_equal(a, alpha) and info["has_alpha"] and info["background"] == (255, 255, 255)
    assert (rgb[alpha == 0] == 255).all()
    assert np.array_equal(rgb[alpha == 255], photo512[alpha == 255])
    raw, a2, _ = load_image(p, background=None)
    assert np.array_equal(raw, photo512) and np.array_equal(a2, alpha)


# --------------------------------------------------------------------------- saving


def test_save_roundtrip_png_with_alpha(tmp_path, photo512):
    alpha = np.full(photo512.shape[:2], 200, np.uint8)
    out = save_image(tmp_path / "x.png", photo512, alpha)
    rgb, a, _ = load_image(out, background=None)
    assert np.array_equal(rgb, photo512) and np.array_equal(a, alpha)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_save_jpeg_and_errors(tmp_path, photo512):
    save_image(tmp_path / "x.jpg", photo512)
    assert load_image(tmp_path / "x.jpg")[0].shape == photo512.shape
    with pytest.raises(InputError, match="unknown image extension"):
        save_image(tmp_path / "x.gifx", photo512)
    with pytest.raises(InputError, match="does not exist"):
        save_image(tmp_path / "no" / "x.png", photo512)
    with pytest.raises(InputError, match="HxWx3 uint8"):
        save_image(tmp_path / "y.png", photo512.astype(np.float32))


def test_save_is_atomic(tmp_path, photo512, monkeypatch):
    target = tmp_path / "out.png"
    save_image(target, photo512)
    before = target.read_bytes()

    real_save = Image.Image.save

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(InputError, match="could not be written"):
        save_image(target, 255 - photo512)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert target.read_bytes() == before  # the old output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left


def test_to_rgb_uint8_other_modes():
    f = Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), "F")
    rgb, a, depth = fio.to_rgb_uint8(f)
    assert rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0 and depth == 32
    i = Image.fromarray((np.arange(64 * 64, dtype=np.int32).reshape(64, 64) * 16), "I")
    rgb, _, depth = fio.to_rgb_uint8(i)
    assert depth == 16 and rgb.max() == 255
    la = Image.new("LA", (20, 20), (100, 0))
    rgb, a, _ = fio.to_rgb_uint8(la)
    assert (a == 0).all() and (rgb == 255).all()


# --------------------------------------------------------------------------- formats and pixel limit


def _png_header_only(path: Path, w: int, h: int, bit_depth: int = 1, colour_type: int = 0) -> Path:
    """A tiny PNG that declares ``w`` x ``h`` pixels (a few rows of zeros compressed: what a
    decompression bomb looks like). Only its header matters to the limit check."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (w * bit_depth * (3 if colour_type == 2 else 1) + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * 4, 9))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("w, h", [(46000, 46000), (12000, 12000), (10001, 10000)])
def test_one_bit_bomb_is_refused_from_its_header(tmp_path, monkeypatch, w, h):
    monkeypatch.delenv(fio.MAX_PIXELS_ENV, raising=False)
    p = _png_header_only(tmp_path / "bomb.png", w, h)
    assert p.stat().st_size < 2000
    with pytest.raises(ImageLoadError) as err:
        load_image(p)
    msg = str(err.value)
    assert "bomb.png" in msg and "too large" in msg and f"{w * h} pixels" in msg and "100000000" in msg
    assert fio.MAX_PIXELS_ENV in msg and "\n" not in msg


@pytest.mark.parametrize("w, h", [(6000, 4000), (8000, 6000), (10000, 10000)])
def test_real_photo_sizes_pass_the_header_check(tmp_path, monkeypatch, w, h):
    monkeypatch.delenv(fio.MAX_PIXELS_ENV, raising=False)
    p = _png_header_only(tmp_path / "photo.png", w, h, bit_depth=8, colour_type=2)
    assert fio.check_image_header(p) == ("PNG", (w, h))


def test_a_48_megapixel_photo_loads(tmp_path):
    p = tmp_path / "phone.jpg"
    Image.new("L", (8000, 6000), 128).save(p, quality=50)
    rgb, _, info = load_image(p)
    assert rgb.shape == (6000, 8000, 3) and info["size"] == (8000, 6000)


def test_pixel_limit_from_argument_and_environment(tmp_path, monkeypatch, photo512):
    p = tmp_path / "p.png"
    Image.fromarray(photo512).save(p)
    monkeypatch.delenv(fio.MAX_PIXELS_ENV, raising=False)
    assert fio.pixel_limit() == fio.DEFAULT_MAX_PIXELS == 100_000_000
    with pytest.raises(ImageLoadError, match=r"512x512 = 262144 pixels.*limit is 1000"):
        load_image(p, max_pixels=1000)
    monkeypatch.setenv(fio.MAX_PIXELS_ENV, "200000")
    with pytest.raises(ImageLoadError, match="limit is 200000"):
        load_image(p)
    assert load_image(p, max_pixels=512 * 512)[0].shape == (512, 512, 3)  # the argument wins
    monkeypatch.setenv(fio.MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match="PASTICHE_MAX_PIXELS"):
        load_image(p)


def test_pillow_bomb_protection_is_left_on(tmp_path, monkeypatch):
    """Our limit decides below Pillow's hard stop; Pillow's global settings are untouched."""
    monkeypatch.setenv(fio.MAX_PIXELS_ENV, str(10**10))
    p = _png_header_only(tmp_path / "bomb.png", 46000, 46000)
    with pytest.raises(ImageLoadError, match="too large for Pillow"):
        load_image(p)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0


@pytest.mark.parametrize(
    "name, data",
    [
        ("figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"),
    ],
)
def test_formats_outside_the_allow_list_are_refused(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ImageLoadError, match="not an image in an accepted format"):
        load_image(p)
    # even when it claims to be a photo
    q = tmp_path / "photo.jpg"
    q.write_bytes(data)
    with pytest.raises(ImageLoadError, match="not an image in an accepted format"):
        load_image(q)


def test_other_pillow_formats_are_refused(tmp_path, photo512):
    for ext in (".ico", ".tga", ".pcx"):
        p = tmp_path / f"x{ext}"
        Image.fromarray(photo512[:64, :64]).save(p)
        with pytest.raises(ImageLoadError, match="accepted format"):
            load_image(p)
    for ext in (".png", ".jpg", ".webp", ".bmp", ".tif", ".gif"):
        p = tmp_path / f"x{ext}"
        Image.fromarray(photo512).save(p)
        assert load_image(p)[0].shape == (512, 512, 3)


def test_dlib_decoding_gets_the_same_limit(tmp_path, monkeypatch):
    """The official-decode path asks dlib to read the file only after our header check."""
    from pastiche_core.faces import detect

    called = []
    monkeypatch.setattr(detect, "_import_dlib", lambda: called.append(1))
    p = _png_header_only(tmp_path / "bomb.png", 12000, 12000)
    with pytest.raises(ImageLoadError, match="too large"):
        detect.DlibDetector().load_official(p)
    q = tmp_path / "figure.eps"
    q.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n")
    with pytest.raises(ImageLoadError):
        detect.DlibDetector().load_official(q)
    assert not called
