"""One entry point for every training stage: check the run, then hand it to its stage.

:func:`run_stage` is what the CLI (``python -m pastiche_core train STAGE``) and the ComfyUI
``FineTuneStage`` node call. It checks the output folder, takes its lock, refuses to start
afresh over a state, builds the stage's Config and dispatches on the table of stages
(:data:`~.stages.TRAINING_STAGES`), each of which finds and checks its inputs (loss networks
included) before the first step, so a missing file never costs training time.

Defaults (``None`` options) are the official ones, from the stages' Configs (:mod:`.options`);
:data:`DEFAULTS` lists them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import InputError
from . import GAN_STAGES, STAGES
from .common import Progress, ShouldStop, StageResult
from .files import search_folders
from .options import defaults, lr_preset, make_config, user_options
from .stages import TRAINING_STAGES, Job, check_data, check_faces  # noqa: F401 (check_faces: re-exported)

# stage -> the official defaults of its user options (from its Config, the only home of them)
DEFAULTS: dict[str, dict] = {stage: defaults(stage) for stage in STAGES}


def _opt(options: Mapping, stage: str, key: str):
    value = options.get(key)
    return DEFAULTS[stage].get(key) if value is None else value


def stage_outputs(stage: str, options: Mapping) -> list[str]:
    """The file names a stage writes into its output folder (besides ``train_state/``)."""
    return TRAINING_STAGES[stage].outputs(_opt(options, stage, "iters"))


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
    spec = TRAINING_STAGES[stage]
    is_lmdb = bool(data) and lmdb_folder(data) is not None
    check_data(spec, data, is_lmdb)
    if "loss" in user_options(spec.config):
        options = {**options, "loss": _loss_choice(stage, options, out, resume)}
    job = Job(stage, stage_config(stage, options, seed, device, save_every), Path(checkpoints), out,
              Path(data) if data else None, style, options, folders, [*map(Path, loss_models), *folders],
              dict(resume=resume, progress=progress, should_stop=should_stop), is_lmdb=is_lmdb)
    return spec.run(job)


__all__ = ["DEFAULTS", "GAN_STAGES", "STAGES", "run_stage", "stage_outputs"]
