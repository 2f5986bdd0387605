"""Options and helpers shared by the commands."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..errors import InputError, PasticheError, debug_enabled, describe_exception, one_line



def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default="checkpoint", metavar="DIR",
                        help="folder laid out like the official checkpoint/ release (default ./checkpoint); "
                             "when it holds no files, built-in DEMO weights are used")
    parser.add_argument("--style", default="cartoon", help="style sub-folder of DIR (default cartoon)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="compute precision (default float32; float16 only on GPUs)")


def torch_device_dtype(args: argparse.Namespace):
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise InputError(f"--device '{args.device}' is not a torch device (use cpu, cuda, cuda:0, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here (use --device cpu)")
    dtype = getattr(torch, args.dtype)
    if dtype == torch.float16 and device.type == "cpu":
        raise InputError("--dtype float16 is not supported on CPU (use float32 or bfloat16)")
    return device, dtype


def check_output(path: str, inputs=()) -> Path:
    """Before any work: a known image extension, a writable folder, a valid name, and not one of
    ``inputs`` (the same path or the same file through a link)."""
    from ..atomic import check_output as check_writable
    from ..faces.io import _SAVE_FORMATS

    out = Path(path)
    if out.suffix.lower() not in _SAVE_FORMATS:
        raise InputError(f"output '{out}': unknown image extension '{out.suffix}' (use .png, .jpg or .webp)")
    return check_writable(out, inputs)


def progress_printer(quiet: bool):
    if quiet:
        return None

    def report(stage: str, fraction: float) -> None:
        print(f"[{fraction * 100:3.0f}%] {stage}", file=sys.stderr, flush=True)

    return report


def save_png(out: Path, rgb, *, demo: bool, text: dict[str, str] | None = None) -> None:
    """Write an image atomically, with provenance in PNG text chunks (``pastiche:weights`` says
    DEMO WEIGHTS for demo outputs). HxWx4 input keeps its alpha where the format has one."""
    from ..faces.io import save_image

    meta = {"pastiche:weights": "DEMO WEIGHTS (random, not a real stylisation)" if demo else "checkpoint"}
    meta.update(text or {})
    alpha = rgb[:, :, 3] if rgb.shape[2] == 4 else None
    save_image(out, rgb[:, :, :3], alpha, text=meta)


class CLIParser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line (status 2, as argparse's own)."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command: ``error: <one line>`` and status 2 for every failure, never a
    traceback (unless ``PASTICHE_DEBUG=1``)."""
    # Our own warnings (demo weights, ...) are printed as one plain line, not with a source excerpt.
    warnings.showwarning = lambda message, category, *a, **k: print(f"warning: {message}", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except PasticheError as exc:
        print(f"error: {describe_exception(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # OSError, MemoryError, torch's RuntimeError, ...: the user gets one line
        if debug_enabled():  # a bug of ours: show where
            raise
        print(f"error: {describe_exception(exc)}", file=sys.stderr)
        return 2
