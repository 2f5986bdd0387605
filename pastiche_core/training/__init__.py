"""Training the official DualStyleGAN pipeline: resumable state, losses, multi-process, stages.

Stages, in the order they run: ``finetune-stylegan`` (:func:`finetune_stylegan`), ``destylize``
(:func:`destylize`), ``pretrain`` (:func:`pretrain_dualstylegan`), ``finetune``
(:func:`finetune_dualstylegan`), ``refine-exstyle`` (:func:`refine_exstyle_codes`) and
``sampler`` (:func:`train_sampler`). Each stage is one object in :mod:`.stages` (the table
:data:`~.stages.TRAINING_STAGES` that :func:`run_stage` dispatches on): its typed Config (in
:mod:`.options`, the only home of the official defaults and of the settings a resume must keep;
the CLI's flags and the node's inputs are made from it), ``inputs(cfg)`` naming the files it
reads (:mod:`.inputs`), its outputs and its ``run``. Every stage runs in the one resumable loop
of :mod:`.loop`. Heavy modules are imported lazily.
"""
from __future__ import annotations

STAGES = ("finetune-stylegan", "destylize", "pretrain", "finetune", "refine-exstyle", "sampler")
GAN_STAGES = ("finetune-stylegan", "pretrain", "finetune")

_LAZY = {
    "train_sampler": ".sampler_stage", "SamplerConfig": ".options", "load_sampler_safetensors": "..models.sampler",
    "refine_exstyle_codes": ".refine_stage", "RefineConfig": ".options",
    "StageResult": ".common",
    "MissingLossNetworkError": ".losses", "VGG19Features": ".losses", "IDLoss": ".losses",
    "load_state": ".checkpointing", "save_state": ".checkpointing", "make_state": ".checkpointing",
    "apply_state": ".checkpointing",
    "run_stage": ".runner", "finetune_stylegan": ".stylegan_stage", "destylize": ".destylize_stage",
    "DestylizeConfig": ".options", "PretrainConfig": ".options", "FinetuneConfig": ".options", "pretrain_dualstylegan": ".dualstylegan_stage",
    "finetune_dualstylegan": ".dualstylegan_stage", "GANConfig": ".options", "Loop": ".loop", "AdaptiveAugment": ".augment",
    "augment": ".augment",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)


__all__ = ["GAN_STAGES", "STAGES", *_LAZY]
