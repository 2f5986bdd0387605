"""``convert IN OUT``: official ``.pt`` <-> our ``.safetensors`` (direction from OUT's suffix)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="IN", help="generator.pt, stylegan2-ffhq-config-f.pt, finetune-*.pt or .safetensors")
    parser.add_argument("dst", metavar="OUT", help="output file: .safetensors (our format) or .pt (official layout)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import convert

    print(convert(args.src, args.dst))
    return 0
