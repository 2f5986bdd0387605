"""Train the stages of the official DualStyleGAN pipeline.

    python -m pastiche_core train STAGE --checkpoints DIR [--style NAME] --data FOLDER --out DIR
        [--iters N] [--batch B] [--size S] [--resume]

Stages (official script in brackets; in the order they run):

  finetune-stylegan  StyleGAN2 fine-tuned on the style (finetune_stylegan.py)      not implemented yet
  destylize          intrinsic/extrinsic codes of the style images (destylize.py)  not implemented yet
  pretrain           DualStyleGAN on FFHQ (pretrain_dualstylegan.py)              not implemented yet
  finetune           DualStyleGAN on the style (finetune_dualstylegan.py)         not implemented yet
  refine-exstyle     refine the extrinsic codes (refine_exstyle.py)
                     reads DIR[/NAME]/generator.pt, exstyle_code.npy, instyle_code.npy (optional)
                     and the style images in --data; needs vgg19-dcbb9e9d.pth (--loss vgg)
                     writes OUT/refined_exstyle_code.npy (+ .safetensors)
  sampler            train the random-style sampler (train_sampler.py)
                     reads OUT/ or DIR[/NAME]/refined_exstyle_code.npy, else exstyle_code.npy
                     writes OUT/sampler.pt (+ sampler.safetensors)

A run checkpoints itself to OUT/train_state/STAGE.pt (atomically); Ctrl-C stops at the next
step with the state saved, and --resume continues bit for bit. Multi-process (CPU: gloo,
GPU: NCCL):  torchrun --nproc_per_node N -m pastiche_core train STAGE ...
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

STAGES = ("finetune-stylegan", "destylize", "pretrain", "finetune", "refine-exstyle", "sampler")
IMPLEMENTED = ("refine-exstyle", "sampler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=STAGES, metavar="STAGE", help=f"one of: {', '.join(STAGES)}")
    parser.add_argument("--checkpoints", default="checkpoint", metavar="DIR",
                        help="folder laid out like the official checkpoint/ release (default ./checkpoint)")
    parser.add_argument("--style", default=None, metavar="NAME",
                        help="style sub-folder of DIR (official layout DIR/NAME/...); default: the files are in DIR")
    parser.add_argument("--data", metavar="FOLDER", help="the style images (official data/NAME/images/train)")
    parser.add_argument("--out", metavar="DIR", help="output folder (results and the resumable training state)")
    parser.add_argument("--iters", type=int, metavar="N",
                        help="refine-exstyle: steps per image batch (official 100); sampler: Adam steps per net "
                             "(default: the official int(500000 / n_codes) epochs)")
    parser.add_argument("--batch", type=int, metavar="B",
                        help="global batch, split over processes (refine-exstyle: images per batch, default 1; "
                             "sampler: default 128)")
    parser.add_argument("--size", type=int, default=256, metavar="S",
                        help="refine-exstyle: resolution the losses compare at (official 256)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state/STAGE.pt")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--save-every", type=int, metavar="N", help="steps between checkpoints")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    parser.add_argument("--loss-models", action="append", default=[], metavar="DIR",
                        help="folder with the loss networks (vgg19-dcbb9e9d.pth, model_ir_se50.pth); searched "
                             "before DIR and the torch hub cache (repeatable)")
    parser.add_argument("--bank", metavar="FILE",
                        help="style bank to use (refine-exstyle: the encoder codes, default exstyle_code.npy; "
                             "sampler: default the refined bank)")
    parser.add_argument("--instyle", metavar="FILE", help="refine-exstyle: intrinsic codes (default instyle_code.npy)")
    parser.add_argument("--lr-preset", choices=("script", "readme"), default="script",
                        help="refine-exstyle learning rates: script = the official defaults (colour 0.01, "
                             "structure 0.005), readme = the README's example (colour 0.1, structure 0.005)")
    parser.add_argument("--lr-color", type=float, metavar="LR", help="refine-exstyle: colour-code learning rate")
    parser.add_argument("--lr-structure", type=float, metavar="LR", help="refine-exstyle: structure-code learning rate")
    parser.add_argument("--loss", choices=("vgg", "pixel"), default="vgg",
                        help="refine-exstyle: vgg = VGG19 perceptual + contextual loss (default; LPIPS is replaced "
                             "by a VGG19 perceptual distance), pixel = L1 image loss (no VGG19 needed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


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


def _bank_path(args, sdir: Path, out: Path, stems_out, stems_dir) -> Path:
    from ..errors import CheckpointError
    from ..training.common import first_existing

    if args.bank:
        path = Path(args.bank)
        if not path.is_file():
            raise CheckpointError(f"--bank '{path}' does not exist")
        return path
    for folder, stems in ((out, stems_out), (sdir, stems_dir)):
        if stems:
            found = first_existing(folder, stems, (".safetensors", ".npy"))
            if found is not None:
                return found
    names = " or ".join(f"{s}.npy" for s in stems_dir)
    raise CheckpointError(f"missing style bank: no {names} in '{sdir}' (give one with --bank FILE)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training.common import StageNotImplemented, style_dir

    if args.stage not in IMPLEMENTED:
        raise StageNotImplemented(f"training stage '{args.stage}' is not implemented yet in this version "
                                  f"(implemented: {', '.join(IMPLEMENTED)})")
    if not args.out:
        raise InputError("--out DIR is required (the results and the training state go there)")
    for name in ("iters", "batch", "save_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' exists and is not a folder")
    sdir = style_dir(args.checkpoints, args.style)
    if args.resume:
        from ..training.checkpointing import state_path

        state = state_path(out, args.stage)
        _say(f"resuming from {state}" if state.is_file() else f"--resume: no training state at {state}; starting afresh")
    with _StopOnSigint() as stop:
        bar = _Bar(args.quiet, args.stage)
        try:
            result = (_run_sampler if args.stage == "sampler" else _run_refine)(args, sdir, out, bar, stop)
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


def _run_sampler(args, sdir: Path, out: Path, bar, stop):
    from ..styles import StyleBank
    from ..training.sampler_stage import SamplerConfig, train_sampler

    bank_path = _bank_path(args, sdir, out, ["refined_exstyle_code"], ["refined_exstyle_code", "exstyle_code"])
    bank = StyleBank.load(bank_path)
    _say(f"sampler: {len(bank)} styles from {bank_path}")
    cfg = SamplerConfig(iters=args.iters, seed=args.seed, device=args.device)
    if args.batch is not None:
        cfg.batch = args.batch
    if args.save_every is not None:
        cfg.save_every = args.save_every
    return train_sampler(bank, out, cfg, resume=args.resume, progress=bar, should_stop=stop)


def _run_refine(args, sdir: Path, out: Path, bar, stop):
    from ..checkpoints import load_dualstylegan
    from ..errors import CheckpointError, InputError
    from ..styles import StyleBank
    from ..training.common import first_existing
    from ..training.losses import load_vgg19
    from ..training.refine_stage import RefineConfig, lr_preset, refine_exstyle_codes

    if not args.data:
        raise InputError("refine-exstyle needs --data FOLDER: the style images the bank was made from "
                         "(official data/<style>/images/train)")
    gen_path = first_existing(sdir, ["generator"], (".safetensors", ".pt"))
    if gen_path is None:
        raise CheckpointError(f"missing generator.pt: refine-exstyle needs the style's DualStyleGAN in '{sdir}' "
                              f"(the official checkpoint/<style>/generator.pt, or our generator.safetensors)")
    exstyle_path = _bank_path(args, sdir, out, None, ["exstyle_code"])
    if args.instyle:
        instyle_path = Path(args.instyle)
        if not instyle_path.is_file():
            raise CheckpointError(f"--instyle '{instyle_path}' does not exist")
    else:
        instyle_path = first_existing(sdir, ["instyle_code"], (".safetensors", ".npy"))
    lr_color, lr_structure = lr_preset(args.lr_preset)
    cfg = RefineConfig(iters=args.iters or 100, batch=args.batch or 1, size=args.size, loss=args.loss, seed=args.seed,
                       device=args.device,
                       lr_color=args.lr_color if args.lr_color is not None else lr_color,
                       lr_structure=args.lr_structure if args.lr_structure is not None else lr_structure)
    if args.save_every is not None:
        cfg.save_every = args.save_every
    # Every input, the loss network included, is checked before the first step.
    vgg = None
    if cfg.loss == "vgg":
        vgg = load_vgg19([*args.loss_models, args.checkpoints, sdir], n_slices=5,
                         purpose="the perceptual and contextual losses of refine-exstyle (or use --loss pixel)")
    generator = load_dualstylegan(gen_path)
    exstyle = StyleBank.load(exstyle_path)
    instyle = StyleBank.load(instyle_path) if instyle_path is not None else None
    _say(f"refine-exstyle: {len(exstyle)} codes from {exstyle_path}; generator {gen_path}; "
         f"lr colour {cfg.lr_color}, structure {cfg.lr_structure}")
    return refine_exstyle_codes(generator, exstyle, instyle, args.data, out, cfg, vgg=vgg, resume=args.resume,
                                progress=bar, should_stop=stop)
