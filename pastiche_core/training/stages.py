"""Each training stage as one object: its Config, what ``--data`` holds, the files it reads and
writes, and how it finds them and runs.

:data:`TRAINING_STAGES` is the table :func:`~.runner.run_stage` dispatches on. A stage's
``inputs(cfg)`` names the files it reads (:class:`~.inputs.Input`: the file, what for, under
which settings); the lookups in ``run`` take the names and the error wording from there, and
the ``train`` help lists them (:func:`stages_help`). Inputs are looked up in ``out``,
``checkpoints/style`` and ``checkpoints`` (:func:`~.files.search_folders`), loss networks in
``--loss-models``, the same folders and the torch hub cache; everything is loaded and checked
before the first step, so a missing file never costs training time. Heavy modules are imported
inside ``run``: the help stays light.
"""
from __future__ import annotations

import os
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import CheckpointError, InputError
from . import inputs as I
from .options import CONFIGS, default

if TYPE_CHECKING:  # .common imports torch; the help reads this module
    from .common import StageResult

STYLE_IMAGES = "the style images (official data/<style>/images/train)"


@dataclass
class Job:
    """One stage run as the stages see it: its Config, folders and callbacks."""
    stage: str
    cfg: object
    checkpoints: Path
    out: Path
    data: Path | None
    style: str | None
    options: dict
    folders: list[Path]        # where inputs are looked up (out, checkpoints/style, checkpoints)
    net_folders: list[Path]    # where the loss networks are looked up
    kwargs: dict               # resume, progress, should_stop
    is_lmdb: bool = False      # --data is an official lmdb dataset (prepare_data.py)

    def missing(self, inp: I.Input) -> CheckpointError:
        return missing_file(inp, self.folders)

    def find(self, inp: I.Input) -> Path:
        """``inp`` in the first folder that has it."""
        return I.find_in(self.folders, inp.name, inp.what)

    def bank(self, inp: I.Input, given: str | None = None):
        return find_bank(inp, self.folders, given)

    def encoder(self, inp: I.Input):
        from ..models.psp import PSPEncoder

        return PSPEncoder.from_checkpoint(self.find(inp), device=self.cfg.device)

    def network(self, inp: I.Input, **kw):
        """The loss network ``inp`` names, found and loaded (VGG19 takes ``n_slices``)."""
        from .losses import load_id_loss, load_vgg19
        from .lpips import load_lpips

        load = {"vgg19": load_vgg19, "vgg16": load_lpips, "irse50": load_id_loss}[inp.network]
        return load(self.net_folders, purpose=inp.what, **kw)

    def check_faces(self) -> None:
        """After every file is found (a missing one is the first thing to fix), before training.
        Not over an lmdb: an official prepared set (FFHQ) is aligned already, and a pass over it
        would decode the whole database."""
        if self.data and self.options.get("face_check", True) and Path(self.data).is_dir() and not self.is_lmdb:
            check_faces(self.data, "face photos" if self.stage == "pretrain" else "style images")


def find_bank(inp: I.Input, folders: list[Path], given: str | None = None):
    """A style bank (``inp``: a ``.npy`` name; its ``.safetensors`` twin first, unless stale) in
    the first folder that has it, or the file ``given`` by its option -> ``(StyleBank, path)``."""
    from ..styles import StyleBank
    from ..weight_files import first_existing

    if given:
        path = Path(given)
        if not path.is_file():
            raise CheckpointError(f"style bank '{path}' does not exist")
        return StyleBank.load(path), path
    stem = Path(inp.name).stem
    for folder in folders:
        found = first_existing(folder, [stem], (".safetensors", ".npy"))
        if found is not None:
            return StyleBank.load(found), found
    raise missing_file(inp, folders)


def missing_file(inp: I.Input, folders: list[Path]) -> CheckpointError:
    return I.missing_input(inp.name, inp.what, folders)


def check_faces(folder: str | os.PathLike, what: str) -> list[str]:
    """Warn (before training) about images in which the dlib detector finds no face; return their
    names. Artistic faces the detector misses are fine; other pictures are not what DualStyleGAN
    trains on. Skipped with a warning when no detector is installed."""
    from ..errors import PasticheError
    from ..faces.detect import get_detector
    from ..faces.io import load_image
    from .gan import list_images

    try:
        paths = list_images(folder)
    except PasticheError:
        return []  # the stage itself reports an empty or missing folder
    try:
        detector = get_detector("dlib")
        missing = []
        for p in paths:
            rgb, _, _ = load_image(p)
            step = max(1, max(rgb.shape[:2]) // 512)  # a face fills an aligned crop: 512 px is plenty
            if not detector.detect(rgb[::step, ::step].copy()):
                missing.append(p.name)
    except PasticheError as exc:
        warnings.warn(f"face check of the {what} skipped: {exc}", stacklevel=2)
        return []
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        warnings.warn(f"no face found in {len(missing)} of the {len(paths)} {what} in '{folder}' ({shown}). "
                      f"DualStyleGAN trains on aligned portraits (align photos with `python -m pastiche_core "
                      f"align`); stylised faces the detector misses are fine, other pictures are not. "
                      f"--no-face-check skips this check", stacklevel=2)
    return missing


class Stage:
    """A training stage: class attributes, ``run``, and ``inputs`` where the files it reads depend
    on its settings."""
    name: str
    script: str                # the official script it reproduces
    summary: str               # one line for the help
    data: str | None = STYLE_IMAGES  # what --data holds (None: no data)
    reads_lmdb: bool = False   # --data may be an official lmdb dataset (it keys nothing by file name)
    reads: tuple[I.Input, ...] = ()  # the files it reads whatever the settings
    writes: tuple[str, ...] = ()     # the files it writes ({n}: the iteration count, six digits)

    @property
    def config(self) -> type:
        return CONFIGS[self.name]

    def inputs(self, cfg=None) -> list[I.Input]:
        """The files the stage reads with ``cfg``; ``None``: every file it may read."""
        return list(self.reads)

    def outputs(self, iters: int | None) -> list[str]:
        """The file names it writes into its output folder (besides ``train_state/``)."""
        n = f"{int(iters):06d}" if iters is not None else "NNNNNN"
        return [name.format(n=n) for name in self.writes]

    def run(self, job: Job) -> StageResult:
        raise NotImplementedError

    def help(self) -> str:
        """The stage's lines of the ``train`` help."""
        iters = default(self.config, "iters")
        lines = ["reads " + ", ".join(inp.describe() for inp in self.inputs())]
        if self.data:
            lines.append(f"--data = {self.data}" + (" or an official lmdb" if self.reads_lmdb else ""))
        lines.append("writes OUT/" + ", ".join(self.outputs(iters))
                     + (f"; default {iters} iterations" if iters else ""))
        indent = " " * 19
        body = [textwrap.fill(line, 100, initial_indent=indent, subsequent_indent=indent + "  ",
                              break_on_hyphens=False) for line in lines]
        return "\n".join([f"{self.name:<18} {self.summary} ({self.script})", *body])


class FinetuneStyleGANStage(Stage):
    name, script = "finetune-stylegan", "finetune_stylegan.py"
    summary = "StyleGAN2 fine-tuned on the style images"
    reads_lmdb = True
    reads = (I.FFHQ_FOR_FINETUNE,)
    writes = ("finetune-{n}.pt", "finetune-{n}.safetensors")

    def run(self, job):
        from .stylegan_stage import finetune_stylegan

        start = job.options.get("start") or job.find(I.FFHQ_FOR_FINETUNE)
        job.check_faces()
        return finetune_stylegan(job.checkpoints, job.data, job.out, job.cfg, style=job.style, start=start,
                                 **job.kwargs)


class DestylizeStage(Stage):
    name, script = "destylize", "destylize.py"
    summary = "intrinsic/extrinsic codes of the style images"
    writes = ("exstyle_code.npy", "instyle_code.npy", "exstyle_code.safetensors", "instyle_code.safetensors")

    def inputs(self, cfg=None):
        loss, identity = (cfg.loss, cfg.id_weight > 0) if cfg is not None else (None, True)
        nets = [I.vgg16("destylize's LPIPS loss (--loss lpips, the default; or use --loss pixel)",
                        when="--loss lpips, the default"),
                I.vgg19("destylize's --loss vgg (or use --loss pixel)", when="--loss vgg"),
                I.irse50("destylize's identity loss", when="--id-weight > 0, the default")]
        wanted = [loss in (None, "lpips"), loss in (None, "vgg"), identity]
        return [I.FINETUNED_FOR_DESTYLIZE, I.FFHQ_FOR_DESTYLIZE, I.ENCODER_FOR_DESTYLIZE,
                *(net for net, used in zip(nets, wanted) if used)]

    def finetuned(self, job: Job) -> Path:
        """--start; else --model-name in the folders; else the newest finetune-NNNNNN.pt of the
        first folder that has one (out first): finetune-000600.pt after the official 600
        iterations, and never a stale file from an older run elsewhere in the search path."""
        from .files import latest_numbered

        inp = I.FINETUNED_FOR_DESTYLIZE
        name = job.options.get("model_name")
        found = job.options.get("start")
        if found is None and name:
            found = next((f / name for f in job.folders if (f / name).is_file()), None)
        if found is None and not name:
            found = latest_numbered("finetune", job.folders)
        if found is None:
            raise job.missing(I.Input(name or inp.name, inp.what))
        return Path(found)

    def run(self, job):
        from ..checkpoints import load_stylegan2
        from .destylize_stage import destylize

        cfg = job.cfg
        gprime = self.finetuned(job)
        original = job.find(I.FFHQ_FOR_DESTYLIZE)
        nets = {inp.network: inp for inp in self.inputs(cfg) if inp.network}
        vgg = job.network(nets["vgg19"], n_slices=5) if "vgg19" in nets else None
        lpips = job.network(nets["vgg16"]) if "vgg16" in nets else None
        id_loss = job.network(nets["irse50"]) if "irse50" in nets else None
        encoder = job.encoder(I.ENCODER_FOR_DESTYLIZE)
        g_prime, _ = load_stylegan2(gprime)
        g_orig, _ = load_stylegan2(original)
        job.check_faces()
        result = destylize(g_prime, g_orig, encoder, job.data, job.out, cfg, vgg=vgg, id_loss=id_loss, lpips=lpips,
                           **job.kwargs)
        result.notes.append(f"g' = {gprime}; g = {original}")
        return result


class PretrainStage(Stage):
    name, script = "pretrain", "pretrain_dualstylegan.py"
    summary = "stages I-II: DualStyleGAN on real faces"
    data = "real face photos (the official FFHQ training set)"
    reads_lmdb = True
    VGG = I.vgg19("pretrain's perceptual loss")
    reads = (I.FFHQ_FOR_PRETRAIN, I.ENCODER_FOR_PRETRAIN, VGG)
    writes = ("generator-pretrain.pt", "generator-pretrain-{n}.pt")

    def run(self, job):
        from .dualstylegan_stage import pretrain_dualstylegan

        start = job.options.get("start") or job.find(I.FFHQ_FOR_PRETRAIN)
        vgg = job.network(self.VGG, n_slices=3)
        encoder = job.encoder(I.ENCODER_FOR_PRETRAIN)
        job.check_faces()
        return pretrain_dualstylegan(job.checkpoints, job.data, job.out, encoder, vgg, job.cfg, style=job.style,
                                     start=start, **job.kwargs)


class FinetuneStage(Stage):
    name, script = "finetune", "finetune_dualstylegan.py"
    summary = "stage III: DualStyleGAN on the style"
    VGG = I.vgg19("finetune's perceptual, contextual and style losses")
    ID = I.irse50("finetune's identity loss")
    reads = (I.PRETRAINED, I.INSTYLE_FOR_FINETUNE, I.EXSTYLE_FOR_FINETUNE, VGG, ID)
    writes = ("generator.pt", "generator.safetensors", "generator-{n}.pt")

    def run(self, job):
        from .dualstylegan_stage import finetune_dualstylegan

        start = job.options.get("start") or job.find(I.PRETRAINED)
        vgg = job.network(self.VGG, n_slices=3)
        id_loss = job.network(self.ID)
        instyle, _ = job.bank(I.INSTYLE_FOR_FINETUNE, job.options.get("instyle"))
        exstyle, _ = job.bank(I.EXSTYLE_FOR_FINETUNE, job.options.get("bank"))
        job.check_faces()
        return finetune_dualstylegan(job.checkpoints, job.data, job.out, vgg, id_loss, instyle, exstyle, job.cfg,
                                     style=job.style, start=start, **job.kwargs)


class RefineExstyleStage(Stage):
    name, script = "refine-exstyle", "refine_exstyle.py"
    summary = "refine the extrinsic codes"
    writes = ("refined_exstyle_code.npy", "refined_exstyle_code.safetensors")

    def inputs(self, cfg=None):
        loss = cfg.loss if cfg is not None else None
        lpips = I.vgg16("refine-exstyle's LPIPS loss (--loss lpips, the default; or use --loss vgg or pixel)",
                        when="--loss lpips, the default")
        vgg = I.vgg19(("the contextual loss of refine-exstyle" if loss == "lpips" else
                       "the perceptual and contextual losses of refine-exstyle") + " (or use --loss pixel)",
                      when="--loss lpips or vgg")
        return [I.GENERATOR_FOR_REFINE, I.EXSTYLE_FOR_REFINE, I.INSTYLE_FOR_REFINE,
                *([lpips] if loss in (None, "lpips") else []), *([vgg] if loss != "pixel" else [])]

    def generator(self, job: Job) -> Path:
        """--start, else the style's generator (our .safetensors, then the official .pt)."""
        from ..weight_files import first_existing

        found = job.options.get("start") or next(
            (p for f in job.folders if (p := first_existing(f, ["generator"], (".safetensors", ".pt")))), None)
        if found is None:
            raise job.missing(I.GENERATOR_FOR_REFINE)
        return Path(found)

    def run(self, job):
        from ..checkpoints import load_dualstylegan
        from .refine_stage import refine_exstyle_codes

        options, cfg = job.options, job.cfg
        gen_path = self.generator(job)
        exstyle, ex_path = job.bank(I.EXSTYLE_FOR_REFINE, options.get("bank"))
        try:
            instyle, _ = job.bank(I.INSTYLE_FOR_REFINE, options.get("instyle"))
        except CheckpointError:
            if options.get("instyle"):
                raise
            instyle = None
        nets = {inp.network: inp for inp in self.inputs(cfg) if inp.network}
        lpips = job.network(nets["vgg16"]) if "vgg16" in nets else None
        vgg = job.network(nets["vgg19"], n_slices=5) if "vgg19" in nets else None
        generator = load_dualstylegan(gen_path)
        job.check_faces()
        result = refine_exstyle_codes(generator, exstyle, instyle, job.data, job.out, cfg, vgg=vgg, lpips=lpips,
                                      **job.kwargs)
        result.notes.append(f"{len(exstyle)} codes from {ex_path}; generator {gen_path}; "
                            f"lr colour {cfg.lr_color}, structure {cfg.lr_structure}")
        return result


class SamplerStage(Stage):
    name, script = "sampler", "train_sampler.py"
    summary = "train the random-style sampler"
    data = None
    reads = (I.BANK_FOR_SAMPLER,)
    writes = ("sampler.pt", "sampler.safetensors")

    def run(self, job):
        from .sampler_stage import train_sampler

        given = job.options.get("bank")
        refined = I.Input(I.REFINED_EXSTYLE, I.BANK_FOR_SAMPLER.what)
        try:
            bank, bank_path = job.bank(refined, given)
        except CheckpointError:
            if given:
                raise
            bank, bank_path = job.bank(I.Input(I.EXSTYLE, I.BANK_FOR_SAMPLER.what))
        result = train_sampler(bank, job.out, job.cfg, **job.kwargs)
        result.notes.append(f"{len(bank)} styles from {bank_path}")
        return result


# in the order the stages run
TRAINING_STAGES: dict[str, Stage] = {s.name: s for s in (
    FinetuneStyleGANStage(), DestylizeStage(), PretrainStage(), FinetuneStage(), RefineExstyleStage(), SamplerStage())}


def stages_help() -> str:
    """The stage list of the ``train`` help, from the stages themselves."""
    return "\n".join("  " + TRAINING_STAGES[name].help().replace("\n", "\n  ") for name in TRAINING_STAGES)


def check_data(stage: Stage, data, is_lmdb: bool) -> None:
    if stage.data is not None and not data:
        raise InputError(f"{stage.name} needs --data FOLDER: {stage.data}")
    if is_lmdb and not stage.reads_lmdb:
        readers = " and ".join(s.name for s in TRAINING_STAGES.values() if s.reads_lmdb)
        raise InputError(f"{stage.name} needs --data as a folder of image files: it keys the style codes by file "
                         f"name, which an lmdb dataset does not keep ({readers} read lmdb)")


__all__ = ["Job", "Stage", "TRAINING_STAGES", "check_data", "check_faces", "find_bank", "missing_file", "stages_help"]
