"""The ``align`` command: detect, align and save face crops.

    python -m pastiche_core.faces.command align PHOTO --out OUT.png [--size 256]
        [--face largest|all|N] [--detector NAME]

``register(subparsers)`` adds the same command to another argparse program (the main
``python -m pastiche_core`` CLI). Failures print one line, ``error: <message>``, to stderr
and exit with status 2 (argparse usage errors also exit 2).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import PasticheError

__all__ = ["register", "main", "run_align", "parse_face"]

HELP = "detect and align faces (FFHQ recipe, as DualStyleGAN's --align_face)"
DESCRIPTION = """\
Detect faces in PHOTO, align them with the FFHQ recipe the official DualStyleGAN uses, and
save SIZE x SIZE crops. With one face selected, the crop goes to OUT. With several (--face all,
--face 0,2, --face left-to-right), each goes to a file named by its face number next to OUT:
OUT_0.png, OUT_2.png, ... (for --out crops/me.png: crops/me_0.png, ...). Faces are numbered
largest first, or from the left with left-to-right. The photo's EXIF orientation is
applied first. Exit status 2 with a one-line message when no face is found or the photo
cannot be read."""


FACE_METAVAR = "largest|all|N|N,M,...|left-to-right[:N,M,...]"
FACE_HELP = ("which faces: the largest (default); all (largest first); the N-th counting from 0, or a list "
             "such as 0,2 (faces numbered largest first); left-to-right (all, numbered from the left) or "
             "left-to-right:0,2 (the 1st and 3rd from the left); largest-first[:LIST] is the default numbering")


def parse_face(value: str) -> str | int:
    """argparse type for --face: the forms of :func:`pastiche_core.faces.align.parse_face_spec`
    (checked here, so a typo is a usage error before any work)."""
    from ..errors import InputError  # noqa: PLC0415
    from .align import parse_face_spec  # noqa: PLC0415

    v = value.strip().lower()
    try:
        parse_face_spec(v)
    except InputError:
        raise argparse.ArgumentTypeError(
            f"invalid face choice '{value}' (use largest, all, a number 0, 1, ..., a list such as 0,2, "
            "left-to-right or left-to-right:0,2)"
        ) from None
    return int(v) if v.isdigit() else v


def selects_one(face: str | int) -> bool:
    """Whether a --face value always selects a single face (written to OUT itself)."""
    if isinstance(face, int):
        return True
    pick = str(face).split(":", 1)[-1]
    return pick in ("largest", "official", "best") or pick.isdigit()


def _parse_size(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size '{value}' (a whole number of pixels, e.g. 256)") from None
    if not 8 <= n <= 8192:
        raise argparse.ArgumentTypeError(f"size {n} is out of range (8-8192)")
    return n


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from .detect import detector_names  # noqa: PLC0415 - light module, no heavy imports

    p.add_argument("photo", metavar="PHOTO", help="the photo to read (JPEG, PNG, WebP, ...)")
    p.add_argument(
        "--out", required=True, metavar="OUT.png",
        help="where to write the aligned crop; with --face all, numbered files OUT_0.png, OUT_1.png, ...",
    )
    p.add_argument("--size", type=_parse_size, default=256, help="side of the aligned crop in pixels (default 256, as DualStyleGAN)")
    p.add_argument(
        "--face", type=parse_face, default="largest", metavar=FACE_METAVAR,
        help=FACE_HELP + "; several faces go to numbered files OUT_<face number>",
    )
    names = detector_names()
    p.add_argument(
        "--detector", default="dlib", metavar="NAME",
        help=f"face detector backend: {', '.join(names)} (default dlib: needs "
        "'pip install dlib-bin face-recognition-models'; facexlib reads its weights from $PASTICHE_FACEXLIB_DIR)",
    )
    from ..video import add_video_arguments  # noqa: PLC0415 - light module

    add_video_arguments(p)
    p.set_defaults(func=run_align)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``align`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "align", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_arguments(p)
    return p


def numbered_path(out: Path, i: int) -> Path:
    return out.with_name(f"{out.stem}_{i}{out.suffix}")


def _check_numbered_outputs(out: Path, photo: Path) -> None:
    """With several faces the crops go to OUT_0, OUT_1, ...: none of them may be the photo."""
    import os
    import re

    from ..errors import InputError  # noqa: PLC0415

    folder = out.parent if str(out.parent) else Path(".")
    pattern = re.compile(re.escape(out.stem) + r"_\d+" + re.escape(out.suffix) + "$")
    hit = pattern.match(photo.name) and os.path.abspath(photo.parent) == os.path.abspath(folder)
    if not hit and photo.is_file():
        for entry in os.scandir(folder):
            try:
                if pattern.match(entry.name) and os.path.samefile(entry.path, photo):
                    hit = True
                    break
            except OSError:  # a dangling link is not the photo
                continue
    if hit:
        raise InputError(f"output '{out}' with several faces writes {out.stem}_0{out.suffix}, {out.stem}_1{out.suffix}, "
                         f"...: one of them is the input '{photo}'; choose another --out")


def run_align(args: argparse.Namespace) -> int:
    from .align import align_file  # noqa: PLC0415
    from .detect import get_detector  # noqa: PLC0415
    from .io import _SAVE_FORMATS, save_image  # noqa: PLC0415

    from ..atomic import check_output  # noqa: PLC0415

    if getattr(args, "video", False):  # a clip: tracked, smoothed alignment into a folder
        from ..video import run_align_video  # noqa: PLC0415

        return run_align_video(args)
    out = Path(args.out)
    if out.suffix.lower() not in _SAVE_FORMATS:
        raise PasticheError(f"output '{out}': unknown image extension '{out.suffix}' (use .png, .jpg or .webp)")
    check_output(out, [args.photo])  # before any work: writable, valid name, not the photo itself
    if not selects_one(args.face):
        _check_numbered_outputs(out, Path(args.photo))
    detector = get_detector(args.detector)
    aligned, _rgb, _alpha, _info = align_file(args.photo, detector=detector, size=args.size, face=args.face)
    found = aligned[0].params.get("faces_found", len(aligned))
    if not selects_one(args.face):
        targets = [numbered_path(out, a.index) for a in aligned]
    else:
        targets = [out]
    written = []
    try:
        for a, target in zip(aligned, targets):
            save_image(target, a.image)
            written.append(target)
    except BaseException:
        # all faces or none: a failure part-way must not leave some of them behind
        for target in written:
            try:
                os.unlink(target)
            except OSError:
                pass
        raise
    for a, target in zip(aligned, targets):
        print(f"{target}: face {a.index} of {found}, {a.qsize:.0f} px in the photo, aligned to {a.size}x{a.size}")
    for a in aligned:
        for w in a.params.get("warnings", []):
            print(f"note: {w}", file=sys.stderr)
    if found > 1 and selects_one(args.face):
        print(
            f"note: {found} faces found in '{args.photo}'; wrote face {aligned[0].index} "
            "(use --face all or --face N for others)",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..commands.common import CLIParser  # noqa: PLC0415

    parser = CLIParser(prog="python -m pastiche_core.faces.command", description="Pastiche face tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..commands.common import run_parsed  # noqa: PLC0415

    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
