"""List the styles of a style bank (index, name), as the official --style_id counts them.

    python -m pastiche_core styles --checkpoints DIR --style cartoon
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default="checkpoint", metavar="DIR", help="official-layout checkpoint folder")
    parser.add_argument("--style", default="cartoon", help="style sub-folder (default cartoon)")
    parser.add_argument("--bank", metavar="FILE", help="a bank file (.npy or .safetensors) instead of DIR/STYLE's")


def run(args: argparse.Namespace) -> int:
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
