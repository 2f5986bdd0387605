"""One entry point for every training stage: find and check its inputs, then run it.

:func:`run_stage` is what the CLI (``python -m pastiche_core train STAGE``) and the ComfyUI
``FineTuneStage`` node call. Inputs are looked up in ``out``, ``checkpoints/style`` and
``checkpoints`` (see :mod:`.files`), loss networks in ``loss_models``, the checkpoint folders and
the torch hub cache; everything, loss networks included, is loaded and checked before the
first step, so a missing file never costs training time.

Defaults (``None`` options) are the official ones, from the stages' Configs (:mod:`.options`);
:data:`DEFAULTS` lists them.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, InputError
from . import GAN_STAGES, STAGES
from .common import Progress, ShouldStop, StageResult
from .files import ENCODER, find_file, latest_numbered, search_folders
from .options import defaults, lr_preset, make_config

# stage -> the official defaults of its user options (from its Config, the only home of them)
DEFAULTS: dict[str, dict] = {stage: defaults(stage) for stage in STAGES}
DESTYLIZE_START = "finetune-000600.pt"  # the official --model_name of destylize.py


def _opt(options: Mapping, stage: str, key: str):
    value = options.get(key)
    return DEFAULTS[stage].get(key) if value is None else value


def _encoder(folders: Sequence[Path], device: str, purpose: str):
    from ..models.psp import PSPEncoder

    path = find_file(ENCODER, folders, f"the z+ pSp encoder (the official checkpoint/encoder.pt), needed for {purpose}")
    return PSPEncoder.from_checkpoint(path, device=device)


def _bank(folders: Sequence[Path], stem: str, purpose: str, given: str | None = None):
    from ..styles import StyleBank
    from .common import first_existing

    if given:
        path = Path(given)
        if not path.is_file():
            raise CheckpointError(f"style bank '{path}' does not exist")
        return StyleBank.load(path), path
    for folder in folders:
        found = first_existing(folder, [stem], (".safetensors", ".npy"))
        if found is not None:
            return StyleBank.load(found), found
    raise CheckpointError(f"missing {stem}.npy: {purpose}. Put it in one of: "
                          + ", ".join(f"'{f}'" for f in folders))


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


def stage_outputs(stage: str, options: Mapping) -> list[str]:
    """The file names a stage writes into its output folder (besides ``train_state/``)."""
    iters = _opt(options, stage, "iters")
    n = f"{int(iters):06d}" if iters is not None else None
    names = {"finetune-stylegan": [f"finetune-{n}.pt", f"finetune-{n}.safetensors"],
             "destylize": ["exstyle_code.npy", "instyle_code.npy", "exstyle_code.safetensors",
                           "instyle_code.safetensors"],
             "pretrain": ["generator-pretrain.pt", f"generator-pretrain-{n}.pt"],
             "finetune": ["generator.pt", "generator.safetensors", f"generator-{n}.pt"],
             "refine-exstyle": ["refined_exstyle_code.npy", "refined_exstyle_code.safetensors"],
             "sampler": ["sampler.pt", "sampler.safetensors"]}[stage]
    return [x for x in names if "None" not in x]


def _check_out(out: Path) -> None:
    """The output folder can be made and written, checked before any work."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder '{out}' exists and is not a folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{out}' cannot be written ('{probe}' is not a writable folder)")


def _check_inputs_not_outputs(stage: str, out: Path, options: Mapping) -> None:
    """An input file given explicitly (--start, --bank, --instyle) must not be one the stage
    writes: the run would replace the input it started from."""
    from ..atomic import check_output

    given = [options.get(k) for k in ("start", "bank", "instyle") if options.get(k)]
    if not given:
        return
    from .checkpointing import state_path

    for name in [*stage_outputs(stage, options), str(state_path(out, stage).relative_to(out))]:
        target = out / name
        if target.parent.is_dir():
            check_output(target, given, what=f"{stage} output", option="--out (or another input file)")


def run_stage(stage: str, *, checkpoints: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
              style: str | None = None, options: Mapping | None = None, seed: int = 0, resume: bool = False,
              device: str = "cpu", loss_models: Sequence[str | os.PathLike] = (), save_every: int | None = None,
              progress: Progress | None = None, should_stop: ShouldStop | None = None,
              overwrite: bool = False) -> StageResult:
    """Run one training stage (see the module doc). ``options``: the user options of the stage's
    Config (:mod:`.options`: ``iters``, ``batch``, ``lr``, ...; ``None`` = the official default;
    the names of earlier versions, such as ``CX_loss``, are accepted), ``sample_every``, and the
    inputs ``start`` (the starting checkpoint), ``bank``, ``instyle``, ``model_name``,
    ``lr_preset`` and ``face_check`` (default True: warn about training images without a
    detectable face).

    Nothing is lost: the run holds ``out``'s training lock (a second run on the same folder is
    refused), and a fresh run (no ``resume``) over an existing state of the stage is refused
    unless ``overwrite`` -- that state may be a finished run whose outputs it would replace."""
    if stage not in STAGES:
        raise InputError(f"unknown training stage {stage!r}; stages: {', '.join(STAGES)}")
    options = dict(options or {})
    out = Path(out)
    _check_out(out)
    for key in ("iters", "batch"):
        if options.get(key) is not None and int(options[key]) < 1:
            raise InputError(f"--{key} must be at least 1, got {options[key]}")
    _check_inputs_not_outputs(stage, out, options)
    from ..atomic import remove_dead_temps
    from .checkpointing import state_path
    from .lock import run_lock

    with run_lock(out, stage):
        state = state_path(out, stage)
        if not resume and not overwrite and state.is_file():
            raise InputError(f"'{out}' already has a training state of stage {stage} ({state}): add --resume to "
                             f"continue it, or --force to start afresh and replace it and the stage's outputs")
        for folder in (out, state.parent):  # leftovers of a writer that died; a live one's files stay
            remove_dead_temps(folder)
        return _run_stage(stage, checkpoints=checkpoints, out=out, data=data, style=style, options=options,
                          seed=seed, resume=resume, device=device, loss_models=loss_models,
                          save_every=save_every, progress=progress, should_stop=should_stop)


@dataclass
class Job:
    """One stage run as the stage functions see it: its Config, folders and callbacks."""
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

    def check_faces(self) -> None:
        """After every file is found (a missing one is the first thing to fix), before training.
        Not over an lmdb: an official prepared set (FFHQ) is aligned already, and a pass over it
        would decode the whole database."""
        if self.data and self.options.get("face_check", True) and Path(self.data).is_dir() and not self.is_lmdb:
            check_faces(self.data, "face photos" if self.stage == "pretrain" else "style images")


def _finetune_stylegan(job: Job) -> StageResult:
    from .stylegan_stage import finetune_stylegan

    job.check_faces()
    return finetune_stylegan(job.checkpoints, job.data, job.out, job.cfg, style=job.style,
                             start=job.options.get("start"), **job.kwargs)


def _destylize(job: Job) -> StageResult:
    from ..checkpoints import load_stylegan2
    from .destylize_stage import destylize
    from .files import STYLEGAN_FFHQ
    from .losses import load_id_loss, load_vgg19
    from .lpips import load_lpips

    folders, cfg = job.folders, job.cfg
    # An explicit --model-name, else the newest finetune-NNNNNN.pt of the first folder that has
    # one (out first): finetune-000600.pt after the official 600 iterations, and never a stale
    # file from an older run elsewhere in the search path.
    name = job.options.get("model_name")
    gprime = job.options.get("start")
    if gprime is None and name:
        gprime = next((f / name for f in folders if (f / name).is_file()), None)
    if gprime is None and not name:
        gprime = latest_numbered("finetune", folders)
    if gprime is None:
        raise CheckpointError(f"missing {name or DESTYLIZE_START}: destylize needs the StyleGAN2 fine-tuned on the "
                              f"style (written by the finetune-stylegan stage). Put it in one of: "
                              + ", ".join(f"'{f}'" for f in folders))
    original = find_file(STYLEGAN_FFHQ, folders, "rosinality's FFHQ StyleGAN2, the generator destylize renders "
                                                 "the realistic faces with")
    vgg = (load_vgg19(job.net_folders, n_slices=5, purpose="destylize's --loss vgg (or use --loss pixel)")
           if cfg.loss == "vgg" else None)
    lpips = (load_lpips(job.net_folders, purpose="destylize's LPIPS loss (--loss lpips, the default; or use --loss "
                                                 "pixel)") if cfg.loss == "lpips" else None)
    id_loss = load_id_loss(job.net_folders, purpose="destylize's identity loss") if cfg.id_weight > 0 else None
    encoder = _encoder(folders, cfg.device, "destylize")
    g_prime, _ = load_stylegan2(gprime)
    g_orig, _ = load_stylegan2(original)
    job.check_faces()
    result = destylize(g_prime, g_orig, encoder, job.data, job.out, cfg, vgg=vgg, id_loss=id_loss, lpips=lpips,
                       **job.kwargs)
    result.notes.append(f"g' = {gprime}; g = {original}")
    return result


def _pretrain(job: Job) -> StageResult:
    from .dualstylegan_stage import pretrain_dualstylegan
    from .losses import load_vgg19

    vgg = load_vgg19(job.net_folders, n_slices=3, purpose="pretrain's perceptual loss")
    encoder = _encoder(job.folders, job.cfg.device, "pretrain (the extrinsic codes of sampled faces)")
    job.check_faces()
    return pretrain_dualstylegan(job.checkpoints, job.data, job.out, encoder, vgg, job.cfg, style=job.style,
                                 start=job.options.get("start"), **job.kwargs)


def _finetune(job: Job) -> StageResult:
    from .dualstylegan_stage import finetune_dualstylegan
    from .losses import load_id_loss, load_vgg19

    vgg = load_vgg19(job.net_folders, n_slices=3, purpose="finetune's perceptual, contextual and style losses")
    id_loss = load_id_loss(job.net_folders, purpose="finetune's identity loss")
    instyle, _ = _bank(job.folders, "instyle_code", "finetune needs the destylized intrinsic codes (destylize "
                                                    "writes them)", job.options.get("instyle"))
    exstyle, _ = _bank(job.folders, "exstyle_code", "finetune needs the exemplars' extrinsic codes (destylize "
                                                    "writes them)", job.options.get("bank"))
    job.check_faces()
    return finetune_dualstylegan(job.checkpoints, job.data, job.out, vgg, id_loss, instyle, exstyle, job.cfg,
                                 style=job.style, start=job.options.get("start"), **job.kwargs)


def _refine_exstyle(job: Job) -> StageResult:
    from ..checkpoints import load_dualstylegan
    from .common import first_existing
    from .losses import load_vgg19
    from .lpips import load_lpips
    from .refine_stage import refine_exstyle_codes

    folders, options, cfg = job.folders, job.options, job.cfg
    gen_path = options.get("start")
    if gen_path is None:
        gen_path = next((p for f in folders if (p := first_existing(f, ["generator"], (".safetensors", ".pt")))),
                        None)
    if gen_path is None:
        raise CheckpointError("missing generator.pt: refine-exstyle needs the style's DualStyleGAN (the official "
                              "checkpoint/<style>/generator.pt, or our generator.safetensors) in one of: "
                              + ", ".join(f"'{f}'" for f in folders))
    exstyle, ex_path = _bank(folders, "exstyle_code", "refine-exstyle refines the extrinsic codes", options.get("bank"))
    instyle = None
    if options.get("instyle"):
        instyle, _ = _bank(folders, "instyle_code", "", options["instyle"])
    else:
        try:
            instyle, _ = _bank(folders, "instyle_code", "")
        except CheckpointError:
            instyle = None
    vgg = lpips = None
    if cfg.loss == "lpips":
        lpips = load_lpips(job.net_folders, purpose="refine-exstyle's LPIPS loss (--loss lpips, the default; or use "
                                                    "--loss vgg or pixel)")
    if cfg.loss != "pixel":
        vgg = load_vgg19(job.net_folders, n_slices=5,
                         purpose=("the contextual loss of refine-exstyle" if cfg.loss == "lpips" else
                                  "the perceptual and contextual losses of refine-exstyle") + " (or use --loss pixel)")
    generator = load_dualstylegan(gen_path)
    job.check_faces()
    result = refine_exstyle_codes(generator, exstyle, instyle, job.data, job.out, cfg, vgg=vgg, lpips=lpips,
                                  **job.kwargs)
    result.notes.append(f"{len(exstyle)} codes from {ex_path}; generator {gen_path}; "
                        f"lr colour {cfg.lr_color}, structure {cfg.lr_structure}")
    return result


def _sampler(job: Job) -> StageResult:
    from .sampler_stage import train_sampler

    given = job.options.get("bank")
    try:
        bank, bank_path = _bank(job.folders, "refined_exstyle_code", "", given)
    except CheckpointError:
        if given:
            raise
        bank, bank_path = _bank(job.folders, "exstyle_code", "the sampler learns the distribution of the extrinsic "
                                                             "codes (refined_exstyle_code.npy or exstyle_code.npy)")
    result = train_sampler(bank, job.out, job.cfg, **job.kwargs)
    result.notes.append(f"{len(bank)} styles from {bank_path}")
    return result


# stage -> (what --data holds, None: no data; the function that finds its inputs and runs it)
RUNNERS: dict[str, tuple[str | None, Callable[[Job], StageResult]]] = {
    "finetune-stylegan": ("the style images (official data/<style>/images/train)", _finetune_stylegan),
    "destylize": ("the style images (official data/<style>/images/train)", _destylize),
    "pretrain": ("real face photos (the official FFHQ training set)", _pretrain),
    "finetune": ("the style images (official data/<style>/images/train)", _finetune),
    "refine-exstyle": ("the style images (official data/<style>/images/train)", _refine_exstyle),
    "sampler": (None, _sampler),
}


def stage_config(stage: str, options: Mapping, seed: int = 0, device: str = "cpu", save_every: int | None = None):
    """The stage's Config from the run's options (``None``: the official default)."""
    options = dict(options)
    if stage == "refine-exstyle":  # a learning-rate preset gives the defaults of the two rates
        lr_color, lr_structure = lr_preset(options.get("lr_preset") or "script")
        options["lr_color"] = lr_color if options.get("lr_color") is None else options["lr_color"]
        options["lr_structure"] = lr_structure if options.get("lr_structure") is None else options["lr_structure"]
    return make_config(stage, options, seed=seed, device=device, save_every=save_every,
                       sample_every=options.get("sample_every"))


def _loss_choice(stage: str, options: Mapping, out: Path, resume: bool) -> str:
    """destylize / refine-exstyle ``loss``: as given; else, resuming, the loss the run was started
    with (runs from before LPIPS store 'vgg' or 'pixel'); else 'lpips', the official loss."""
    if options.get("loss"):
        return options["loss"]
    from .checkpointing import load_state, state_path

    if resume and state_path(out, stage).is_file():
        return load_state(state_path(out, stage), stage)["config"].get("loss") or "vgg"
    return "lpips"


def _run_stage(stage: str, *, checkpoints, out: Path, data, style, options: dict, seed: int, resume: bool,
               device: str, loss_models, save_every, progress, should_stop) -> StageResult:
    from .lmdb_images import lmdb_folder

    folders = search_folders(out, checkpoints, style)
    what, run = RUNNERS[stage]
    if what is not None and not data:
        raise InputError(f"{stage} needs --data FOLDER: {what}")
    is_lmdb = bool(data) and lmdb_folder(data) is not None
    if is_lmdb and stage in ("destylize", "finetune", "refine-exstyle"):
        raise InputError(f"{stage} needs --data as a folder of image files: it keys the style codes by file name, "
                         f"which an lmdb dataset does not keep (finetune-stylegan and pretrain read lmdb)")
    if stage in ("destylize", "refine-exstyle"):
        options = {**options, "loss": _loss_choice(stage, options, out, resume)}
    job = Job(stage, stage_config(stage, options, seed, device, save_every), Path(checkpoints), out,
              Path(data) if data else None, style, options, folders, [*map(Path, loss_models), *folders],
              dict(resume=resume, progress=progress, should_stop=should_stop), is_lmdb=is_lmdb)
    return run(job)


__all__ = ["DEFAULTS", "GAN_STAGES", "STAGES", "run_stage", "stage_outputs"]
