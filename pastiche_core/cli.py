"""``python -m pastiche_core COMMAND ...``: the command-line face of the library.

Every command prints ``error: <one line>`` and exits with status 2 on any failure (never a
traceback; ``PASTICHE_DEBUG=1`` shows it for unexpected errors), and writes outputs atomically (no half-written file
on failure). Ctrl-C prints ``error: interrupted`` and exits with 130.
"""
from __future__ import annotations

import argparse
import importlib

from .training import STAGES  # light: the stages are imported lazily
from .commands.common import CLIParser, run_parsed  # noqa: F401 (run_parsed: part of the CLI's API)

# name -> (module, help). Each module defines ``add_arguments(parser)`` and ``run(args) -> int``
# and imports its heavy dependencies inside ``run``, so ``--help`` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "stylize": ("pastiche_core.commands.stylize", "stylise a portrait photo after a bank style or an exemplar image"),
    "generate": ("pastiche_core.commands.generate", "random stylised faces from the style sampler"),
    "styles": ("pastiche_core.commands.styles", "list the styles of a style bank"),
    "train": ("pastiche_core.commands.train",
              f"train a stage of the official pipeline ({', '.join(STAGES)}; resumable, torchrun)"),
    "download": ("pastiche_core.commands.download",
                 "fetch a style's official files from the Hugging Face Hub (only when run; resumable)"),
    "convert": ("pastiche_core.commands.convert", "convert a generator between the official .pt and our .safetensors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python -m pastiche_core",
                                     description="DualStyleGAN exemplar-based portrait style transfer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=mod.__doc__ or help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    from .faces.command import register as register_align

    register_align(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))
