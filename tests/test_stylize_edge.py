"""Every awkward input of shared/images/edge (copies in fixtures/edge, big ones generated here)
through the `stylize` command: a correct result, or one `error:` line, exit 2, no output file."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import needs_faces
from pastiche_core import cli

EDGE = Path(__file__).parent / "fixtures" / "edge"
PHOTO = Path(__file__).parent / "fixtures" / "images" / "content_081680_256.jpg"
needs_dlib = needs_faces


def make_variant(kind: str, folder: Path) -> Path:
    img = Image.open(PHOTO).convert("RGB").resize((384, 384))
    if kind == "cmyk":
        path = folder / "cmyk.jpg"
        img.convert("CMYK").save(path)
    elif kind == "rgba":
        path = folder / "rgba.png"
        rgba = img.convert("RGBA")
        alpha = np.full((384, 384), 255, np.uint8)
        alpha[:40] = 0
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(path)
    elif kind == "gray16":
        path = folder / "gray16.png"
        Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257)).save(path)
    elif kind == "noise":
        path = folder / "noise.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    return path


def stylize(photo: Path, out: Path, capsys, *extra):
    code = cli.main(["stylize", str(photo), "--checkpoints", str(out.parent / "no_checkpoints"), "--align-face",
                     "--quiet", "--out", str(out), *extra])
    return code, capsys.readouterr().err


@needs_dlib
@pytest.mark.parametrize("name", ["exif_orientation6.jpg", "face_at_border.jpg", "grayscale.jpg", "palette_P.png",
                                  "tiny_face_60px.jpg", "cmyk", "rgba", "gray16"])
def test_handled(name, tmp_path, capsys):
    src = EDGE / name if "." in name else make_variant(name, tmp_path)
    out = tmp_path / "out.png"
    code, err = stylize(src, out, capsys, "--paste-back")
    assert code == 0, err
    with Image.open(src) as original, Image.open(out) as result:
        from PIL import ImageOps

        w, h = ImageOps.exif_transpose(original).size
        assert result.size == (w, h)  # pasted back into the upright photo frame
        assert result.mode == ("RGBA" if name == "rgba" else "RGB")


@pytest.mark.parametrize("name,message", [
    ("zero_bytes.jpg", "empty"),
    ("not_an_image.png", "not an image"),
    ("truncated.jpg", "truncated"),
    pytest.param("no_face_landscape.jpg", "no face", marks=needs_dlib),
    pytest.param("tiny_32x32.png", "small", marks=needs_dlib),
    pytest.param("noise", "no face", marks=needs_dlib),
])
def test_refused_with_one_line(name, message, tmp_path, capsys):
    src = EDGE / name if "." in name else make_variant(name, tmp_path)
    out = tmp_path / "out.png"
    code, err = stylize(src, out, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(errors) == 1 and message in errors[0].lower() and src.name in errors[0], err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@needs_dlib
def test_two_faces_both_stylised_in_place(tmp_path, capsys):
    out = tmp_path / "two.png"
    code, err = stylize(EDGE / "two_faces.jpg", out, capsys, "--face", "all", "--paste-back")
    assert code == 0, err
    photo = np.asarray(Image.open(EDGE / "two_faces.jpg").convert("RGB")).astype(int)
    result = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert result.shape == photo.shape
    changed = np.abs(result - photo).max(-1) > 0
    changed[:40] = False  # the DEMO WEIGHTS caption band
    h, w = changed.shape
    left, right = changed[:, : w // 2], changed[:, w // 2:]
    assert left.mean() > 0.05 and right.mean() > 0.05  # both faces were replaced
    # outside the faces (image borders, away from both face masks) nothing moved
    assert not changed[h - 8:, :].any() and not changed[40:, :8].any() and not changed[40:, w - 8:].any()


@needs_dlib
def test_exemplar_without_a_face_is_refused(tmp_path, capsys):
    out = tmp_path / "out.png"
    code = cli.main(["stylize", str(PHOTO), "--checkpoints", str(tmp_path), "--exemplar",
                     str(EDGE / "no_face_landscape.jpg"), "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "no face was found" in err and "no_face_landscape.jpg" in err and not out.exists()


def test_exemplar_that_is_not_an_image(tmp_path, capsys):
    out = tmp_path / "out.png"
    code = cli.main(["stylize", str(PHOTO), "--checkpoints", str(tmp_path), "--exemplar",
                     str(EDGE / "not_an_image.png"), "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "not an image" in err and not out.exists()
