"""Train the stages of the official DualStyleGAN pipeline.

    python -m pastiche_core train STAGE --checkpoints DIR [--style NAME] --data FOLDER --out DIR
        [--iters N] [--batch B] [--size S] [--resume]

Stages, in the order they run (official script in brackets; [when] a file is read). Inputs are
looked up in OUT, DIR/NAME and DIR, so stages chained into one --out folder find each other's
files:

{stages}

A run checkpoints itself to OUT/train_state/STAGE.pt (atomically); Ctrl-C stops at the next
step with the state saved, and --resume continues bit for bit. A fresh run over an existing
state of the same stage is refused unless --force (it would replace a finished run's outputs),
and one run at a time holds OUT (a lock file, OUT/.pastiche-train.lock): a second run on the
same folder is refused while the first is running. Multi-process (CPU: gloo,
GPU: NCCL):  torchrun --nproc_per_node N -m pastiche_core train STAGE ...
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..training import STAGES  # light: the package imports its stages lazily
from ..training.stages import stages_help  # light too: the heavy modules load when a stage runs

__doc__ = __doc__.format(stages=stages_help())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=STAGES, metavar="STAGE", help=f"one of: {', '.join(STAGES)}")
    parser.add_argument("--checkpoints", default="checkpoint", metavar="DIR",
                        help="folder laid out like the official checkpoint/ release (default ./checkpoint)")
    parser.add_argument("--style", default=None, metavar="NAME",
                        help="style sub-folder of DIR (official layout DIR/NAME/...); default: the files are in DIR")
    parser.add_argument("--data", metavar="FOLDER",
                        help="the style images (official data/NAME/images/train), or for finetune-stylegan and "
                             "pretrain an lmdb folder made by the official prepare_data.py (e.g. data/ffhq/lmdb)")
    parser.add_argument("--out", metavar="DIR", help="output folder (results and the resumable training state)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state/STAGE.pt")
    parser.add_argument("--force", action="store_true",
                        help="start afresh even though OUT already has a training state of STAGE (replacing it "
                             "and the stage's outputs); without --resume or --force such a run is refused")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--save-every", type=int, metavar="N", help="steps between checkpoints")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    parser.add_argument("--loss-models", action="append", default=[], metavar="DIR",
                        help="folder with the loss networks (vgg19-dcbb9e9d.pth, vgg16-397923af.pth, "
                             "model_ir_se50.pth); searched "
                             "before DIR and the torch hub cache (repeatable)")
    parser.add_argument("--bank", metavar="FILE",
                        help="style bank to use (refine-exstyle: the encoder codes, default exstyle_code.npy; "
                             "sampler: default the refined bank)")
    parser.add_argument("--instyle", metavar="FILE", help="refine-exstyle: intrinsic codes (default instyle_code.npy)")
    parser.add_argument("--lr-preset", choices=("script", "readme"), default="script",
                        help="refine-exstyle learning rates: script = the official defaults (colour 0.01, "
                             "structure 0.005), readme = the README's example (colour 0.1, structure 0.005)")
    parser.add_argument("--start", metavar="FILE",
                        help="starting checkpoint (default: stylegan2-ffhq-config-f.pt for finetune-stylegan and "
                             "pretrain, generator-pretrain.pt for finetune, the newest finetune-*.pt for destylize, "
                             "generator.pt for refine-exstyle)")
    parser.add_argument("--model-name", metavar="FILE",
                        help="destylize: the fine-tuned StyleGAN2 in the checkpoint folders (official "
                             "finetune-000600.pt; else the newest finetune-*.pt)")
    parser.add_argument("--no-face-check", action="store_true",
                        help="do not look for a face in every training image before training (the check only warns)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser)


def config_options() -> dict[str, dict]:
    """Every stage's user options merged by name: ``{name: {"field", "defaults": {stage: value},
    "helps": [...]}}`` (from the stages' Configs, :mod:`pastiche_core.training.options`)."""
    from ..training.options import CONFIGS, default, user_options

    merged: dict[str, dict] = {}
    for stage, cls in CONFIGS.items():
        for name, f in user_options(cls).items():
            entry = merged.setdefault(name, {"field": f, "defaults": {}, "helps": []})
            entry["defaults"][stage] = default(cls, name)
            if f.metadata["help"] not in entry["helps"]:
                entry["helps"].append(f.metadata["help"])
    return merged


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per user option of the stages' Configs, its help and defaults from there."""
    for name, entry in config_options().items():
        f, values = entry["field"], entry["defaults"]
        shown = ", ".join(f"{stage} {value}" for stage, value in values.items() if value is not None)
        text = "; ".join(entry["helps"]) + (f" (official: {shown})" if shown else "")
        kind = next(type(v) for v in [*values.values(), 0] if v is not None)
        flags = ["--" + name.replace("_", "-"), *f.metadata["flags"]]
        if kind is bool:
            parser.add_argument(*flags, dest=name, action="store_true", default=None, help=text.replace("%", "%%"))
        else:
            parser.add_argument(*flags, dest=name, type=kind, choices=f.metadata["choices"], default=None,
                                metavar=None if f.metadata["choices"] else name.split("_")[0].upper(),
                                help=text.replace("%", "%%"))


# --------------------------------------------------------------------------------------------
def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _say(text: str) -> None:
    if _rank() == 0:
        print(text, file=sys.stderr, flush=True)


class _Bar:
    """tqdm progress bar (rank 0), created on the first report when the total is known."""

    def __init__(self, quiet: bool, label: str):
        self.quiet, self.label, self.bar = quiet or _rank() != 0, label, None

    def __call__(self, done: int, total: int, info: dict) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=max(done - 1, 0), desc=self.label, dynamic_ncols=True,
                            file=sys.stderr)
        self.bar.n = done
        self.bar.set_postfix_str(f"loss {info.get('loss', float('nan')):.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopOnSigint:
    """First Ctrl-C: stop at the next step boundary (state saved); second: abort at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            _say("\nstopping after this step (Ctrl-C again to abort without saving)...")
        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False

    def __call__(self) -> bool:
        return self.requested


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training.runner import run_stage

    if not args.out:
        raise InputError("--out DIR is required (the results and the training state go there)")
    for name in ("iters", "batch", "save_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    out = Path(args.out)
    if args.resume:
        from ..training.checkpointing import state_path

        state = state_path(out, args.stage)
        _say(f"resuming from {state}" if state.is_file() else f"--resume: no training state at {state}; starting afresh")
    options = {name: getattr(args, name) for name in config_options()}
    options.update({"bank": args.bank, "instyle": args.instyle, "lr_preset": args.lr_preset, "start": args.start,
                    "model_name": args.model_name, "face_check": not args.no_face_check})
    with _StopOnSigint() as stop:
        bar = _Bar(args.quiet, args.stage)
        try:
            result = run_stage(args.stage, checkpoints=args.checkpoints, out=out, data=args.data, style=args.style,
                               options=options, seed=args.seed, resume=args.resume, device=args.device,
                               loss_models=args.loss_models, save_every=args.save_every, progress=bar,
                               should_stop=stop, overwrite=args.force)
        finally:
            bar.close()
    for note in result.notes:
        _say(f"note: {note}")
    if result.stopped:
        _say(f"stopped after step {result.steps_done}/{result.total_steps}; state saved to {result.checkpoint}; "
             f"continue with the same command plus --resume")
        return 130
    if _rank() == 0:
        for path in result.outputs:
            print(path)
    return 0
