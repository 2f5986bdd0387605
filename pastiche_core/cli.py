"""``python -m pastiche_core COMMAND ...``: the command-line face of the library.

Every command prints ``error: <one line>`` and exits with status 2 on bad input (never a
traceback), and writes outputs atomically (no half-written file on failure).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import PasticheError

# name -> (module, help). Each module defines ``add_arguments(parser)`` and ``run(args) -> int``;
# modules are imported lazily so ``--help`` and unrelated commands stay fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("pastiche_core.commands.convert", "convert a generator between the official .pt and our .safetensors"),
}


def _import(module: str):
    import importlib

    return importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pastiche_core",
                                     description="DualStyleGAN exemplar-based portrait style transfer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _import(module).add_arguments(p)
        p.set_defaults(_run=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = _import(args._run).run
    try:
        return int(run(args) or 0)
    except PasticheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
