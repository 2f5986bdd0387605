"""Training the official DualStyleGAN pipeline: resumable state, losses, multi-process, stages.

Implemented stages: ``refine-exstyle`` (:func:`refine_exstyle_codes`) and ``sampler``
(:func:`train_sampler`). ``finetune-stylegan``, ``destylize``, ``pretrain`` and ``finetune`` are
not implemented yet in this version. Heavy modules are imported lazily.
"""
from __future__ import annotations

STAGES = ("finetune-stylegan", "destylize", "pretrain", "finetune", "refine-exstyle", "sampler")
IMPLEMENTED_STAGES = ("refine-exstyle", "sampler")

_LAZY = {
    "train_sampler": ".sampler_stage", "SamplerConfig": ".sampler_stage", "load_sampler_safetensors": "..models.sampler",
    "refine_exstyle_codes": ".refine_stage", "RefineConfig": ".refine_stage",
    "StageResult": ".common", "StageNotImplemented": ".common",
    "MissingLossNetworkError": ".losses", "VGG19Features": ".losses", "IDLoss": ".losses",
    "load_state": ".checkpointing", "save_state": ".checkpointing", "make_state": ".checkpointing",
    "apply_state": ".checkpointing",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)


__all__ = ["IMPLEMENTED_STAGES", "STAGES", *_LAZY]
