"""Stylise a portrait photo after a style-bank entry or your own exemplar image.

    python -m pastiche_core stylize PHOTO --checkpoints DIR --style cartoon --style-id 26 --out OUT.png

PHOTO is an aligned square face crop (as the official sample content), or any photo with
--align-face. With no checkpoints in DIR, built-in DEMO weights run the whole pipeline (the
output is then marked DEMO WEIGHTS and is not a real stylisation).
"""
from __future__ import annotations

import argparse
import json

from .common import add_model_options, check_output, progress_printer, save_png, torch_device_dtype


def _style_id(value: str):
    return int(value) if value.lstrip("-").isdigit() else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", metavar="PHOTO", help="portrait photo (aligned face crop unless --align-face)")
    add_model_options(parser)
    parser.add_argument("--style-id", type=_style_id, default=None, metavar="ID",
                        help="index (official --style_id) or name of the style in the bank "
                             "(default 53 as the official script; 0 for banks with fewer styles)")
    parser.add_argument("--exemplar", metavar="IMG", help="use this image's style instead of a bank entry")
    parser.add_argument("--exemplar-steps", type=int, default=0, metavar="N",
                        help="faithful mode: refine the exemplar's code against the generator for N steps "
                             "(default 0 = fast mode, one encoder pass; ~100 steps is the official refinement)")
    parser.add_argument("--preserve-color", action="store_true", help="keep the photo's colours (official --preserve_color)")
    parser.add_argument("--wplus", action="store_true", help="encode the photo in W+ with encoder_wplus.pt (official --wplus)")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="18 per-layer weights (0-6 structure, 7-17 colour); default 0.75 x7, 1 x11")
    parser.add_argument("--structure", type=float, metavar="S", help="structure weight for layers 0-6 (default 0.75)")
    parser.add_argument("--color", type=float, metavar="C", help="colour weight for layers 7-17 (default 1)")
    parser.add_argument("--truncation", type=float, default=0.75, metavar="T", help="truncation of the photo's code (default 0.75)")
    parser.add_argument("--align-face", action="store_true", help="detect and align the face first (FFHQ recipe)")
    from ..faces.command import FACE_HELP, FACE_METAVAR, parse_face  # noqa: PLC0415 - numpy/PIL only

    parser.add_argument("--face", type=parse_face, default="largest", metavar=FACE_METAVAR,
                        help="with --align-face: " + FACE_HELP)
    parser.add_argument("--detector", default="dlib", help="face detector backend (default dlib)")
    parser.add_argument("--paste-back", action="store_true", help="paste the stylised face back into the photo (with --align-face)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="draw the noise maps as the official script after torch.manual_seed(N) (default: fixed stored noise)")
    parser.add_argument("--generator", metavar="FILE",
                        help="this DualStyleGAN generator instead of the style's generator.pt (e.g. a training "
                             "snapshot OUT/generator-001400.pt written with --snapshot-every)")
    parser.add_argument("--low-memory", action="store_true", help="keep only one model in memory at a time")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--out", required=True, metavar="OUT.png", help="output image (.png, .jpg, .webp); with --video a folder")
    from ..video import add_video_arguments

    add_video_arguments(parser, stylize=True)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import stylize

    if args.video:  # a clip: every frame aligned (tracked, smoothed), stylised and pasted back
        from ..video import run_stylize_video

        return run_stylize_video(args)
    out = check_output(args.out, [args.photo, args.exemplar])
    device, dtype = torch_device_dtype(args)
    result = stylize(args.photo, checkpoints=args.checkpoints, style=args.style, style_id=args.style_id,
                     exemplar=args.exemplar, exemplar_steps=args.exemplar_steps, preserve_color=args.preserve_color, wplus=args.wplus,
                     weights=args.weights, structure=args.structure, color=args.color, truncation=args.truncation,
                     align_face=args.align_face, paste_back=args.paste_back,
                     face=int(args.face) if str(args.face).isdigit() else args.face, detector=args.detector, seed=args.seed, device=device,
                     dtype=dtype, low_memory=args.low_memory, progress=progress_printer(args.quiet),
                     generator=args.generator)
    save_png(out, result.image, demo=result.demo,
             text={"pastiche:style": str(result.style_name), "pastiche:settings": json.dumps(result.info)})
    label = " [DEMO WEIGHTS]" if result.demo else ""
    print(f"{out}: {result.image.shape[1]}x{result.image.shape[0]}, style {result.style_name}{label}")
    return 0
