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
