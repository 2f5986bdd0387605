"""Fetch the official DualStyleGAN files of a style from the Hugging Face Hub
(public-data/DualStyleGAN) into a checkpoint folder, ready for stylize.

    python -m pastiche_core download --style cartoon [--to DIR]

DIR defaults to ./checkpoint, the folder stylize reads. Files already there are kept; an
interrupted download resumes where it stopped; every file is opened with Pastiche's safe loaders
before it takes its name. Needs huggingface_hub (pip install "pastiche[download]").
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..download import OFFICIAL_STYLES

    parser.add_argument("--style", required=True, help=f"style to fetch (official: {', '.join(OFFICIAL_STYLES)})")
    parser.add_argument("--to", default="checkpoint", metavar="DIR",
                        help="checkpoint folder to fill (default ./checkpoint, as stylize --checkpoints)")
    parser.add_argument("--revision", default="main", help="repository revision (default main)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _progress_lines():
    """A line each 10 % of a file: readable in a log, unlike a redrawn bar."""
    last: dict[str, int] = {}

    def report(name: str, done: int, total: int) -> None:
        step = int(done * 10 // max(total, 1))
        if last.get(name) != step:
            last[name] = step
            print(f"[{done * 100 // max(total, 1):3d}%] {name} {done / 2 ** 20:.1f}/{total / 2 ** 20:.1f} MiB",
                  file=sys.stderr, flush=True)

    return report


def run(args: argparse.Namespace) -> int:
    from ..download import download_style

    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    written = download_style(args.style, args.to, revision=args.revision,
                             progress=None if args.quiet else _progress_lines(), log=log)
    if written:
        print(f"{args.to}: {len(written)} file{'s' if len(written) != 1 else ''} downloaded for style {args.style}")
        for p in written:
            print(f"  {p}")
    else:
        print(f"{args.to}: style {args.style} is already complete, nothing to download")
    return 0
