"""Fuzzing the command line with broken and hostile inputs.

A few hundred seeded cases (byte flips, truncations, edited PNG/JPEG/BMP/GIF headers, wrong
extensions, 1-bit decompression bombs, formats outside the allow-list, awkward paths) go
through ``align`` and, a few, through ``stylize`` (demo weights), in-process via
``pastiche_core.cli.main`` inside ONE child process with an address-space limit (so a decoder
that allocates without bound fails here instead of taking the machine down). The child's
timeout only guards against a hang; nothing here asserts how long a case takes.

Each case must either succeed with a valid output image, or print exactly one ``error: ...``
line on stderr, exit with status 2, print no traceback and leave no output file behind.

The child is this file run as a script: ``python tests/test_fuzz_images.py CASES.json RESULTS.jsonl``.
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

FIX = Path(__file__).parent / "fixtures"
PHOTO = FIX / "images" / "content_081680_256.jpg"
EXEMPLAR = FIX / "images" / "exemplar_cartoon_256.jpg"
SEED = 20261201
MEMORY_LIMIT = 6 << 30  # address space of the child: torch + dlib + the models fit with room to spare
HANG_GUARD_S = 1800  # only catches a hang; a normal run takes a small fraction of this
MAX_ERROR_CHARS = 1010  # "error: " + the cap on messages (pastiche_core.errors.MAX_OWN_MESSAGE)


# ------------------------------------------------------------------------------------------
# building the cases (in the test process)
# ------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_one_bit(w: int, h: int, *, full: bool) -> bytes:
    """A 1-bit grey PNG of ``w`` x ``h``: ``full`` = every row really present (a few KB of zlib
    that inflates to w*h/8 bytes and then to 3*w*h of RGB), else only the header is honest."""
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    co = zlib.compressobj(9)
    rows = h if full else 4
    data = b"".join(co.compress(row) for _ in range(rows)) + co.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bases():
    from PIL import Image

    with Image.open(PHOTO) as im:
        rgb = im.convert("RGB")
    small = rgb.resize((160, 160))
    return rgb, {
        "jpg": _encode(rgb, "JPEG", quality=90),
        "progressive.jpg": _encode(rgb, "JPEG", quality=85, progressive=True),
        "png": _encode(rgb, "PNG"),
        "webp": _encode(small, "WEBP", quality=80),
        "bmp": _encode(small, "BMP"),
        "tif": _encode(small, "TIFF", compression="tiff_lzw"),
        "gif": _encode(small, "GIF"),
    }


def _set_png_dims(data: bytes, w: int, h: int, fix_crc: bool) -> bytes:
    ihdr = data[16:29]
    new = struct.pack(">II", w, h) + ihdr[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + new) & 0xFFFFFFFF) if fix_crc else data[29:33]
    return data[:16] + new + crc + data[33:]


def _set_jpeg_dims(data: bytes, w: int, h: int) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        i = data.find(marker)
        if i > 0:
            return data[:i + 5] + struct.pack(">HH", h & 0xFFFF, w & 0xFFFF) + data[i + 9:]
    return data


def _set_bmp_dims(data: bytes, w: int, h: int) -> bytes:
    return data[:18] + struct.pack("<ii", w, h) + data[26:]


def _set_gif_dims(data: bytes, w: int, h: int) -> bytes:
    return data[:6] + struct.pack("<HH", w & 0xFFFF, h & 0xFFFF) + data[10:]


def _other_formats(rgb) -> dict[str, bytes]:
    small = rgb.resize((64, 64))
    out = {
        "figure.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n",
        "binary.eps": b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, 40, 0, 0, 0, 0) + b"\xff\xff"
                      + b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
        "doc.ps": b"%!PS\n/Helvetica findfont 12 scalefont setfont 72 72 moveto (hi) show showpage\n",
        "doc.pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
        "vector.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9000" height="9000"><rect width="10" height="10"/></svg>',
        "page.html": b"<html><body><img src=x></body></html>",
        "archive.zip": b"PK\x03\x04" + bytes(40),
        "random.bin": random.Random(SEED).randbytes(5000),
        "png_sig_only.png": b"\x89PNG\r\n\x1a\n",
        "png_sig_junk.png": b"\x89PNG\r\n\x1a\n" + random.Random(SEED + 1).randbytes(3000),
        "jpeg_soi_junk.jpg": b"\xff\xd8\xff" + random.Random(SEED + 2).randbytes(3000),
    }
    for name, fmt, kw in [("icon.ico", "ICO", {}), ("image.tga", "TGA", {}), ("image.pcx", "PCX", {}),
                          ("image.ppm", "PPM", {}), ("image.sgi", "SGI", {}),
                          ("image.dds", "DDS", {}), ("image.jp2", "JPEG2000", {}), ("image.qoi", "QOI", {})]:
        try:
            out[name] = _encode(small, fmt, **kw)
        except Exception:  # a Pillow build without that writer
            pass
    return out


def _multi_frame(rgb) -> dict[str, bytes]:
    from PIL import Image, ImageOps

    frames = [rgb, ImageOps.invert(rgb), rgb.rotate(90)]
    out = {
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "animated.png": _encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "pages.tif": _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "grey16.png": _encode(Image.fromarray((__import__("numpy").asarray(rgb.convert("L"), dtype="uint16") * 257)), "PNG"),
        "palette.png": _encode(rgb.convert("P"), "PNG"),
        "one_bit_small.png": _encode(rgb.convert("1"), "PNG"),
        "rgba.webp": _encode(rgb.convert("RGBA"), "WEBP"),
    }
    return out


def build_cases(root: Path) -> list[dict]:
    """Every case as ``{"id", "kind", "argv", "out"}``; files under ``root/in``."""
    rng = random.Random(SEED)
    rgb, bases = _bases()
    inputs = root / "in"
    inputs.mkdir()
    cases: list[dict] = []

    def add(kind: str, name: str, data: bytes | None, command: str = "align", extra: list[str] | None = None,
            photo: str | None = None, out_name: str = "out.png") -> None:
        i = len(cases)
        if photo is None:
            path = inputs / f"{i:03d}_{name}"
            path.write_bytes(data)
            photo = str(path)
        out_dir = root / "out" / f"{i:03d}"
        out_dir.mkdir(parents=True)
        out = str(out_dir / out_name)
        argv = [command, photo, "--out", out]
        if command == "stylize":
            argv += ["--checkpoints", str(root / "no_checkpoints"), "--quiet"]
        cases.append({"id": i, "kind": kind, "argv": argv + (extra or []), "out": out, "out_dir": str(out_dir)})

    # untouched bases: the success path of each format
    for ext, data in bases.items():
        add("valid", f"photo.{ext}", data)
    # byte flips
    exts = list(bases)
    for n in range(130):
        ext = exts[n % len(exts)]
        data = bytearray(bases[ext])
        for _ in range(rng.choice([1, 2, 4, 16, 64])):
            pos = rng.randrange(len(data)) if rng.random() < 0.7 else rng.randrange(min(len(data), 64))
            data[pos] = rng.randrange(256)
        add("flip", f"flip.{ext}", bytes(data))
    # truncations (anywhere, including inside the header)
    for n in range(45):
        ext = exts[n % len(exts)]
        data = bases[ext]
        cut = rng.randrange(1, len(data)) if n % 3 else rng.randrange(1, min(len(data), 80))
        add("truncate", f"cut.{ext}", data[:cut])
    # header edits: dimensions that lie
    dims = [(0, 0), (0, 256), (1, 1), (15, 15), (256, 1), (300, 300), (3000, 2000), (9000, 9000),
            (10001, 10000), (30000, 30000), (65535, 65535), (2 ** 31 - 1, 2 ** 31 - 1)]
    for w, h in dims:
        add("png-ihdr", "ihdr.png", _set_png_dims(bases["png"], w, h, fix_crc=True))
    for w, h in dims[::3]:
        add("png-ihdr-crc", "ihdr_badcrc.png", _set_png_dims(bases["png"], w, h, fix_crc=False))
    for w, h in dims[:-1]:
        add("jpeg-sof", "sof.jpg", _set_jpeg_dims(bases["jpg"], w, h))
        add("jpeg-sof", "sof_prog.jpg", _set_jpeg_dims(bases["progressive.jpg"], w, h))
    for w, h in [(0, 0), (160, -160), (-160, 160), (2 ** 31 - 1, 1), (1, -(2 ** 31)), (40000, 40000)]:
        add("bmp-header", "dims.bmp", _set_bmp_dims(bases["bmp"], w, h))
    for w, h in [(0, 0), (65535, 65535), (1, 1)]:
        add("gif-header", "dims.gif", _set_gif_dims(bases["gif"], w, h))
    # wrong extensions (the content decides, the name does not)
    for ext, data in bases.items():
        wrong = {"jpg": "png", "png": "jpg", "webp": "bmp", "bmp": "tif", "tif": "webp", "gif": "jpg"}.get(ext, "gif")
        add("extension", f"misnamed.{wrong}", data)
    add("extension", "no_extension", bases["png"])
    # decompression bombs: 1-bit PNGs of a few KB
    add("bomb", "bomb_46000.png", png_one_bit(46000, 46000, full=False))
    add("bomb", "bomb_20000_full.png", png_one_bit(20000, 20000, full=True))
    add("bomb", "bomb_12000_full.png", png_one_bit(12000, 12000, full=True))
    add("bomb", "bomb_10001x10000.png", png_one_bit(10001, 10000, full=False))
    add("bomb", "big_8000x6000_full.png", png_one_bit(8000, 6000, full=True))  # 48 MP: admitted, no face
    # formats outside the allow-list, under their own name and disguised as a photo
    for name, data in _other_formats(rgb).items():
        add("format", name, data)
        add("format", name.rsplit(".", 1)[0] + "_disguised.jpg", data)
    for name, data in _multi_frame(rgb).items():
        add("modes", name, data)
    # paths
    add("path", "empty.jpg", b"")
    add("path", "x", None, photo=str(inputs / "does_not_exist.jpg"))
    add("path", "x", None, photo=str(inputs))
    add("path", "x", None, photo="/dev/zero")
    add("path", "x", None, photo=str(inputs / ("n" * 300 + ".jpg")))
    add("path", "x", None, photo="/" + "/".join(["d" * 200] * 30) + ".jpg")
    loop = inputs / "loop.jpg"
    loop.symlink_to(loop)
    add("path", "x", None, photo=str(loop))
    add("path", "bad\nname\r.eps", _other_formats(rgb)["figure.eps"])
    add("path", "long_out.jpg", bases["jpg"], out_name="o" * 300 + ".png")
    add("path", "out_ext.jpg", bases["jpg"], out_name="out.gif")
    add("path", "out_in_missing_dir.jpg", bases["jpg"], out_name="missing/out.png")
    add("path", "align_all.jpg", bases["jpg"], extra=["--face", "all"])

    # stylize: slow when it succeeds, so few cases, most failing at the image
    add("stylize", "valid.png", bases["png"], command="stylize")
    add("stylize", "cut.jpg", bases["jpg"][: len(bases["jpg"]) // 3], command="stylize")
    add("stylize", "figure.eps", _other_formats(rgb)["figure.eps"], command="stylize")
    add("stylize", "bomb.png", png_one_bit(46000, 46000, full=False), command="stylize")
    add("stylize", "ihdr.png", _set_png_dims(bases["png"], 30000, 30000, fix_crc=True), command="stylize")
    add("stylize", "sof.jpg", _set_jpeg_dims(bases["jpg"], 0, 0), command="stylize")
    add("stylize", "not_square.png", _encode(rgb.resize((256, 200)), "PNG"), command="stylize")
    add("stylize", "long_out.png", bases["png"], command="stylize", out_name="o" * 300 + ".png")
    ex = inputs / "exemplar_cut.jpg"
    ex.write_bytes(EXEMPLAR.read_bytes()[:2000])
    add("stylize", "ex_photo.png", bases["png"], command="stylize", extra=["--exemplar", str(ex)])
    ex_eps = inputs / "exemplar.eps"
    ex_eps.write_bytes(_other_formats(rgb)["figure.eps"])
    add("stylize", "ex_photo2.png", bases["png"], command="stylize", extra=["--exemplar", str(ex_eps)])
    return cases


# ------------------------------------------------------------------------------------------
# the child: run every case in-process, stderr captured at the file-descriptor level
# ------------------------------------------------------------------------------------------
def run_child(cases_path: str, results_path: str) -> None:
    import resource
    import tempfile
    import traceback

    import torch

    from pastiche_core import cli

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    cases = json.loads(Path(cases_path).read_text())
    devnull = os.open(os.devnull, os.O_WRONLY)
    with open(results_path, "a", encoding="utf-8") as results:
        for case in cases:
            # the case is recorded before it runs: a crash of the child names the culprit
            results.write(json.dumps({"id": case["id"], "started": True}) + "\n")
            results.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            saved_out, saved_err = os.dup(1), os.dup(2)
            with tempfile.TemporaryFile() as cap:
                os.dup2(devnull, 1)
                os.dup2(cap.fileno(), 2)  # C libraries (libjpeg, dlib) write to fd 2 directly
                try:
                    try:
                        rc = cli.main(case["argv"])
                    except SystemExit as exc:
                        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                    except BaseException as exc:  # escaped the CLI: breaks the contract
                        traceback.print_exc()
                        rc = f"escaped {type(exc).__name__}"
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os.dup2(saved_out, 1)
                    os.dup2(saved_err, 2)
                    os.close(saved_out)
                    os.close(saved_err)
                cap.seek(0)
                stderr = cap.read().decode("utf-8", "replace")
            results.write(json.dumps({"id": case["id"], "rc": rc, "stderr": stderr}) + "\n")
            results.flush()


# ------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------
def _check_output(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.size[0] < 16 or im.size[1] < 16:
                return f"output {path.name} is only {im.size}"
    except Exception as exc:
        return f"output {path.name} is not a valid image: {exc}"
    return None


def test_fuzzed_inputs_succeed_or_fail_with_one_error_line(tmp_path):
    cases = build_cases(tmp_path)
    assert len(cases) >= 250
    results_path = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PASTICHE_DEBUG", "PASTICHE_MAX_PIXELS")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    # One child per command, each under the same address-space bound: hundreds of align cases
    # (full-resolution dlib pyramids of large photos among them) leave the allocator's arenas
    # fragmented, which is no reason to fail the stylize cases' generator that follows.
    for command in ("align", "stylize"):
        group = [c for c in cases if c["argv"][0] == command]
        (tmp_path / f"cases_{command}.json").write_text(json.dumps(group))
        proc = subprocess.run([sys.executable, __file__, str(tmp_path / f"cases_{command}.json"), str(results_path)],
                              capture_output=True, text=True, timeout=HANG_GUARD_S, env=env, cwd=tmp_path)
        rows = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
        done = {r["id"]: r for r in rows if "rc" in r}
        started = [r["id"] for r in rows if r.get("started")]
        if proc.returncode != 0 or not all(c["id"] in done for c in group):
            last = cases[started[-1]] if started else None
            raise AssertionError(f"the fuzz child died (status {proc.returncode}) during case {last}; "
                                 f"stderr tail: {proc.stderr[-2000:]}")
    assert len(done) == len(cases)

    failures, outcomes = check_results(cases, done)
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the contract:\n" + "\n".join(failures[:20])
    # the fuzz exercises both sides of the contract
    assert outcomes["ok"] >= 10 and outcomes["error"] >= 100, outcomes
    valid = done[[c["id"] for c in cases if c["kind"] == "stylize"][0]]
    assert valid["rc"] == 0, valid["stderr"][-1500:]  # the valid stylize case


def check_results(cases: list[dict], done: dict) -> tuple[list[str], dict]:
    failures, outcomes = [], {"ok": 0, "error": 0}
    for case in cases:
        r = done[case["id"]]
        rc, stderr, out_dir = r["rc"], r["stderr"], Path(case["out_dir"])
        lines = stderr.splitlines()
        errors = [ln for ln in lines if ln.startswith("error:")]
        left = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if not p.is_dir())
        where = f"case {case['id']} ({case['kind']}: {Path(case['argv'][1]).name[:60]})"
        if "Traceback" in stderr:
            failures.append(f"{where}: traceback\n{stderr[-1500:]}")
        elif rc == 0:
            outcomes["ok"] += 1
            produced = [out_dir / n for n in left]
            if errors or not produced:
                failures.append(f"{where}: status 0 but errors {errors} / outputs {left}")
            for p in produced:
                problem = _check_output(p)
                if problem:
                    failures.append(f"{where}: {problem}")
        elif rc == 2:
            outcomes["error"] += 1
            if len(errors) != 1 or len(errors[0]) > MAX_ERROR_CHARS:
                failures.append(f"{where}: want one short error line, got {errors!r}")
            if left:
                failures.append(f"{where}: failed but left {left}")
        else:
            failures.append(f"{where}: exit status {rc!r}, stderr {stderr[-500:]!r}")
    return failures, outcomes


if __name__ == "__main__":
    run_child(sys.argv[1], sys.argv[2])
