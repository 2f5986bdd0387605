"""List the styles of a style bank (index, name), as the official --style_id counts them, or
render a page of them on a face to pick one by sight.

    python -m pastiche_core styles --checkpoints DIR --style cartoon
    python -m pastiche_core styles --checkpoints DIR --style cartoon --preview FACE --out grid.png [--page N]

--preview renders 16 styles a page (pages counted from 0) on FACE, an aligned face crop (or any
photo with --align-face), in a 4x4 grid whose tiles are labelled with index and name.
"""
from __future__ import annotations

import argparse

from .common import check_output, progress_printer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default="checkpoint", metavar="DIR", help="official-layout checkpoint folder")
    parser.add_argument("--style", default="cartoon", help="style sub-folder (default cartoon)")
    parser.add_argument("--bank", metavar="FILE", help="a bank file (.npy or .safetensors) instead of DIR/STYLE's")
    preview = parser.add_argument_group("preview (pick a style by sight)")
    preview.add_argument("--preview", metavar="FACE",
                         help="render a page of the bank's styles on this face (an aligned face crop, or any photo "
                              "with --align-face)")
    preview.add_argument("--out", metavar="GRID.png", help="with --preview: the grid image (.png, .jpg, .webp)")
    preview.add_argument("--page", type=int, default=0, metavar="N", help="with --preview: page N, 16 styles a page, "
                                                                           "counted from 0 (default 0)")
    preview.add_argument("--align-face", action="store_true", help="with --preview: detect and align the face first")
    preview.add_argument("--detector", default="dlib", help="face detector backend for --align-face (default dlib)")
    preview.add_argument("--batch", type=int, default=4, metavar="B", help="styles per generator call (default 4)")
    preview.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    preview.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                         help="compute precision (default float32; float16 only on GPUs)")
    preview.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if args.preview is None:
        for opt in ("out", "align_face"):
            if getattr(args, opt):
                raise InputError(f"--{opt.replace('_', '-')} needs --preview FACE")
        return _list(args)
    if not args.out:
        raise InputError("--preview needs --out GRID.png")
    if args.batch < 1:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    return _preview(args)


def _list(args: argparse.Namespace) -> int:
    from ..pipeline import StylePipeline
    from ..styles import StyleBank

    if args.bank:
        bank, where = StyleBank.load(args.bank), args.bank
    else:
        pipe = StylePipeline.from_folder(args.checkpoints, args.style)
        bank = pipe.bank
        where = "built-in DEMO bank" if pipe.demo else str(pipe.paths.bank)
    print(f"# {len(bank)} styles in {where} ({bank.space})")
    for i, name in enumerate(bank.names):
        print(f"{i}\t{name}")
    return 0


def _preview(args: argparse.Namespace) -> int:
    from ..pipeline import StylePipeline
    from ..preview import load_face, page_indices, render_page
    from ..styles import StyleBank
    from .common import save_png, torch_device_dtype

    out = check_output(args.out, [args.preview, args.bank])
    device, dtype = torch_device_dtype(args)
    pipe = StylePipeline.from_folder(args.checkpoints, args.style, device=device, dtype=dtype)
    bank = StyleBank.load(args.bank) if args.bank else pipe.bank
    page_indices(len(bank), args.page)  # a page past the last fails before any model is loaded
    face = load_face(args.preview, align_face=args.align_face, detector=args.detector)
    report = progress_printer(args.quiet)
    progress = None if report is None else (lambda done, total: report(f"styles batch {done}/{total}", done / total))
    page = render_page(pipe, face, args.page, bank=bank, batch=args.batch, progress=progress)
    save_png(out, page.image, demo=page.demo,
             text={"pastiche:style": args.style, "pastiche:page": str(page.page), "pastiche:styles": page.listing()})
    label = " [DEMO WEIGHTS]" if page.demo else ""
    first, last = page.entries[0][0], page.entries[-1][0]
    print(f"{out}: page {page.page} (pages 0-{page.pages - 1}), styles {first}-{last}{label}")
    for i, name in page.entries:
        print(f"{i}\t{name}")
    return 0
