"""Every stage's settings as one typed Config: the only home of the official defaults.

A field made with :func:`option` is a user option: ``python -m pastiche_core train`` makes its
flag from it (``--name-with-dashes``, plus the ``flags`` it had before), its help from ``help``
and the defaults of every stage that has it; the FineTuneStage node takes its tooltip and
default from it. Other fields are internal settings of the recipe (:func:`setting` where they
matter to resuming).

Resuming: a field declared with ``resume=True`` (every user option unless it says otherwise)
must have the value the run was started with; ``RUN_FACTS`` names the entries of the saved run
config that are not settings but facts of the run (the inputs' names and fingerprints) and must
match too. :func:`resume_keys` is that list; the loop refuses a state that differs on any of
them. This module imports no torch, so the CLI's ``--help`` stays fast.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

from ..errors import InputError

# name -> (lr_color, lr_structure): the official refinement's two sets of learning rates
LR_PRESETS = {"script": (0.01, 0.005),   # refine_exstyle.py's argparse defaults (the training stage)
              "readme": (0.1, 0.005)}    # the README's example command (--lr_color 0.1; the faithful mode)
LOSSES = ("lpips", "vgg", "pixel")
_LOSS_HELP = ("lpips = the official LPIPS (needs vgg16-397923af.pth), vgg = a VGG19 distance without LPIPS's learned "
              "heads, pixel = L1 (no network file); a new run defaults to lpips, --resume keeps the run's own loss")
# option / saved-state names of earlier versions -> the field they are now
LEGACY_NAMES = {"CX_loss": "contextual_loss", "L2_reg_loss": "l2_reg_loss"}


def lr_preset(name: str) -> tuple[float, float]:
    if name not in LR_PRESETS:
        raise InputError(f"unknown learning-rate preset {name!r}; presets: {', '.join(LR_PRESETS)}")
    return LR_PRESETS[name]


def option(default, help: str, *, flags: tuple[str, ...] = (), choices: tuple | None = None, node: str | None = None,
           resume: bool = True):
    """A user option (see the module doc). ``node``: the FineTuneStage input named after it;
    ``resume``: a resumed run must keep the value it was started with."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices, "node": node,
                                            "resume": resume})


def setting(default, *, resume: bool = False):
    """An internal setting of the recipe; ``resume``: a resumed run must keep its value."""
    return field(default=default, metadata={"resume": resume})


@dataclass
class GANConfig:
    """finetune-stylegan (and the base of pretrain and finetune): rosinality's StyleGAN2 recipe."""
    RUN_FACTS: ClassVar[tuple[str, ...]] = ()
    iters: int = option(600, "training steps")
    batch: int = option(4, "global batch, split over processes")
    lr: float = option(0.002, "learning rate")
    r1: float = option(10.0, "GAN stages: R1 weight")
    path_regularize: float = setting(2.0, resume=True)
    path_batch_shrink: int = 2
    d_reg_every: int = setting(16, resume=True)
    g_reg_every: int = setting(4, resume=True)
    mixing: float = option(0.9, "GAN stages: style-mixing probability")
    augment: bool = option(False, "GAN stages: adaptive discriminator augmentation")
    augment_p: float = option(0.0, "GAN stages: fixed augmentation probability (0: adaptive, with --augment)")
    snapshot_every: int = option(0, "GAN stages: keep a numbered snapshot of the trained generator every N steps "
                                    "(finetune: generator-NNNNNN.pt, finetune-stylegan: finetune-NNNNNN.pt) and a "
                                    "sample grid (samples-NNNNNN.png); 0: none", resume=False)
    ada_target: float = 0.6
    ada_length: int = 500_000
    ada_every: int = 8             # the official AdaptiveAugment(..., 8, ...)
    seed: int = setting(0, resume=True)
    save_every: int = 50           # steps between resumable checkpoints
    sample_every: int = 0          # steps between preview images (0: none)
    device: str = "cpu"

    def check(self, world: int) -> None:
        for name in ("iters", "batch", "d_reg_every", "g_reg_every", "save_every", "path_batch_shrink"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch % world:
            raise InputError(f"--batch {self.batch} must be divisible by the number of processes ({world})")
        local = self.batch // world
        if local > 4 and local % 4:
            raise InputError(f"each process's batch ({local}) must be at most 4 or a multiple of 4 (the "
                             f"discriminator's minibatch-stddev groups samples by 4)")
        path_batch = max(1, self.batch // self.path_batch_shrink)
        if path_batch % world:
            raise InputError(f"--batch {self.batch} / path_batch_shrink {self.path_batch_shrink} = {path_batch} must "
                             f"be divisible by the number of processes ({world})")
        if self.snapshot_every < 0:
            raise InputError(f"--snapshot-every must be 0 (none) or more, got {self.snapshot_every}")
        if not 0 <= self.mixing <= 1 or not 0 <= self.augment_p <= 1:
            raise InputError("mixing and augment_p are probabilities (0..1)")

    @classmethod
    def of(cls, cfg: "GANConfig"):
        """``cfg`` (e.g. a plain :class:`GANConfig`) as this stage's Config: its GAN settings, the
        stage's own defaults for the rest."""
        if isinstance(cfg, cls):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(GANConfig)})


@dataclass
class PretrainConfig(GANConfig):
    iters: int = option(3000, "training steps (+ two warm-up phases of iters/10)")
    subspace_freq: int = option(4, "pretrain: every N-th step uses the encoder's code; finetune: every N-th step "
                                   "is unpaired")


@dataclass
class FinetuneConfig(GANConfig):
    RUN_FACTS: ClassVar[tuple[str, ...]] = ("names",)   # the bank's style images, in order
    iters: int = option(1500, "training steps")
    subspace_freq: int = option(2, "pretrain: every N-th step uses the encoder's code; finetune: every N-th step "
                                   "is unpaired")
    style_loss: float = option(0.25, "finetune: weight of the feature-statistics style loss", node="style_loss")
    contextual_loss: float = option(0.25, "finetune: weight of the contextual (CX) loss", flags=("--cx-loss",),
                                    node="contextual_loss")
    perc_loss: float = option(1.0, "finetune: weight of the VGG perceptual loss on paired steps",
                              node="perceptual_loss")
    id_loss: float = option(1.0, "finetune: weight of the ArcFace identity loss", node="identity_loss")
    l2_reg_loss: float = option(0.015, "finetune: weight of the L2 norm of the extrinsic path's weights",
                                node="l2_reg_loss")


@dataclass
class DestylizeConfig:
    # the images and the fingerprints of every network the codes depend on
    RUN_FACTS: ClassVar[tuple[str, ...]] = ("names", "images", "finetuned", "original", "encoder", "vgg", "lpips",
                                            "id_loss")
    iters: int = option(300, "steps per batch of style images")
    batch: int = option(1, "style images optimised together, split over processes")
    truncation: float = option(0.7, "destylize: truncation of g(z)")
    lr: float = option(0.1, "learning rate (with the official ramp: linear up over the first 5 %, cosine down over "
                            "the last 25 %)")
    id_weight: float = option(0.1, "destylize: weight of the ArcFace identity loss (0: no IR-SE50 needed)")
    noise_weight: float = setting(1e5, resume=True)
    reg_weight: float = setting(1.0, resume=True)     # mean over channels of the std over layers of z
    size: int = option(256, "resolution the losses compare at")
    loss: str = option("lpips", "destylize image loss: " + _LOSS_HELP, choices=LOSSES)
    seed: int = setting(0, resume=True)
    save_every: int = 20
    device: str = "cpu"


@dataclass
class RefineConfig:
    RUN_FACTS: ClassVar[tuple[str, ...]] = ("bank", "names", "instyle", "generator", "lpips")
    iters: int = option(100, "steps per batch of style images")
    batch: int = option(1, "style images optimised together, split over processes")
    lr_color: float = option(LR_PRESETS["script"][0], "refine-exstyle: colour-code learning rate")
    lr_structure: float = option(LR_PRESETS["script"][1], "refine-exstyle: structure-code learning rate")
    lr_noise: float = setting(0.1, resume=True)
    noise_weight: float = setting(1e5, resume=True)
    cx_weight: float = setting(1.0, resume=True)
    perc_weight: float = setting(1.0, resume=True)
    cx_band_width: float = setting(0.2, resume=True)
    size: int = option(256, "resolution the losses compare at")
    loss: str = option("lpips", "refine-exstyle image loss (lpips and vgg add the VGG19 contextual loss): "
                       + _LOSS_HELP, choices=LOSSES)
    seed: int = setting(0, resume=True)
    save_every: int = 20           # steps between checkpoints (and one when stopped / at the end)
    device: str = "cpu"


@dataclass
class SamplerConfig:
    RUN_FACTS: ClassVar[tuple[str, ...]] = ("betas", "bank", "n_latent", "steps_per_net")
    # the saved run keeps the steps per net (a fact), not --iters, which may be None
    iters: int | None = option(None, "Adam steps per net (default: the official int(500000 / n_codes) epochs)",
                               resume=False)
    batch: int = option(128, "global batch, split over processes")
    repeat_to: int = setting(1000, resume=True)           # bank repeated repeat_to // N times
    jitter: float = setting(0.05, resume=True)
    lr: float = setting(1e-3, resume=True)
    lr_decay_epochs: int = setting(50, resume=True)
    lr_decay: float = setting(0.5, resume=True)
    beta1: float = 0.5              # checked as the fact "betas", the entry states have always had
    beta2: float = 0.999
    weight_decay: float = setting(1e-5, resume=True)
    noise_dim: int = setting(128, resume=True)
    seed: int = setting(0, resume=True)
    save_every: int = 500           # steps between checkpoints (and one when stopped / at the end)
    device: str = "cpu"
    dtype: str = setting("float32", resume=True)  # training precision ("float64" for exactness checks); files are float32


CONFIGS: dict[str, type] = {"finetune-stylegan": GANConfig, "destylize": DestylizeConfig, "pretrain": PretrainConfig,
                            "finetune": FinetuneConfig, "refine-exstyle": RefineConfig, "sampler": SamplerConfig}


def user_options(config: type) -> dict:
    """name -> dataclass field of the user options of a Config class."""
    return {f.name: f for f in fields(config) if "help" in f.metadata}


def default(config: type, name: str):
    f = {f.name: f for f in fields(config)}[name]
    return f.default if f.default is not MISSING else f.default_factory()


def resume_keys(config) -> list[str]:
    """The saved run-config entries a resumed run must match (see the module doc): the Config's
    fields declared ``resume=True``, then its ``RUN_FACTS``."""
    cls = config if isinstance(config, type) else type(config)
    return [f.name for f in fields(cls) if f.metadata.get("resume")] + list(cls.RUN_FACTS)


def defaults(stage: str) -> dict:
    """The official defaults of a stage's user options."""
    cls = CONFIGS[stage]
    return {name: default(cls, name) for name in user_options(cls)}


def make_config(stage: str, options: dict, **fixed):
    """The stage's Config from ``options`` (``None`` or absent: the default; names of earlier
    versions accepted) and ``fixed`` values (seed, device, ...; ``None`` ones are skipped)."""
    cls = CONFIGS[stage]
    names = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in options.items():
        key = LEGACY_NAMES.get(key, key)
        if key in user_options(cls) and value is not None:
            values[key] = value
    for key, value in fixed.items():
        if key in names and value is not None:
            values[key] = value
    for key, value in values.items():  # the CLI and the node give numbers; the Config's type decides
        kind = type(default(cls, key))
        if kind in (int, float, bool) and not isinstance(value, kind):
            values[key] = kind(value)
    return cls(**values)


__all__ = ["CONFIGS", "DestylizeConfig", "FinetuneConfig", "GANConfig", "LEGACY_NAMES", "LOSSES", "LR_PRESETS",
           "PretrainConfig", "RefineConfig", "SamplerConfig", "defaults", "lr_preset", "make_config", "option", "resume_keys", "setting", "user_options"]
