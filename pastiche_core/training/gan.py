"""The StyleGAN2 training loop the three GAN stages share (rosinality's recipe, as the official
``finetune_stylegan.py``, ``pretrain_dualstylegan.py`` and ``finetune_dualstylegan.py`` run it).

Per step: a discriminator step (non-saturating logistic loss), R1 on real images every
``d_reg_every`` steps, a generator step (the stage's losses), path-length regularisation every
``g_reg_every`` steps, then the EMA update of ``g_ema``. Adam with lr ``lr * r`` and betas
``(0, 0.99 ** r)``, ``r = reg_every / (reg_every + 1)``; EMA decay ``0.5 ** (32 / 10000)``;
optional adaptive augmentation (``augment``).

What a stage provides (:class:`GANStage` subclasses): the real and fake images of the
discriminator step, the generator loss, and the images + latents of the path-length step.

Reproducible and independent of the number of processes: every random draw (codes, mixing,
noise maps, data order, flips) is made for the *global* batch from generators owned by the
run, and rank ``r`` takes samples ``r, r + world, ...`` of it. Gradients are averaged over
ranks with ``all_reduce`` after each backward -- what DistributedDataParallel does, but DDP's
reducer does not support the ``autograd.grad(create_graph=True)`` that R1 and the path-length
penalty need. The path-length running mean is averaged over ranks too (the official keeps
one per GPU), so two processes of ``B/2`` compute what one process of ``B`` computes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from . import distributed as D
from .checkpointing import apply_state
from .common import IMAGE_SUFFIXES, Progress, ShouldStop, StageResult
from .loop import Loop
from .options import GANConfig, resume_keys

EMA_DECAY = 0.5 ** (32 / (10 * 1000))


# --------------------------------------------------------------------------------------------
# Losses and regularisers (rosinality's train.py)
# --------------------------------------------------------------------------------------------
def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``|d D(x) / d x|^2`` (needs ``real_img.requires_grad``)."""
    (grad,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_pred).mean()


def g_path_lengths(fake_img: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample ``|J^T y|`` (averaged over the latent rows) for image-space noise ``y``, ``[B]``."""
    h, w = fake_img.shape[2:]
    (grad,) = torch.autograd.grad((fake_img * noise / math.sqrt(h * w)).sum(), latents, create_graph=True)
    return torch.sqrt(grad.pow(2).sum(2).mean(1))


def requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@torch.no_grad()
def accumulate(ema: nn.Module, model: nn.Module, decay: float = EMA_DECAY) -> None:
    """``ema = decay * ema + (1 - decay) * model`` over parameters (buffers untouched)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def adam(params, lr: float, reg_every: int) -> torch.optim.Adam:
    """Adam with the lazy-regularisation correction of StyleGAN2."""
    r = reg_every / (reg_every + 1)
    return torch.optim.Adam(params, lr=lr * r, betas=(0 ** r, 0.99 ** r))


def average_gradients(params: Sequence[torch.Tensor], ctx: D.DistContext) -> None:
    """Average ``.grad`` over ranks (one flat all_reduce)."""
    if not ctx.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike, what: str = "--data") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} '{folder}' is not a folder (expected a folder of images)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{what} '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


class ImageSet:
    """A folder of training images, streamed: an index of file paths built once, and only the
    images of a batch decoded (Resize + CenterCrop to ``size``) when :meth:`batch` asks for them,
    so memory stays one batch whatever the folder's size (FFHQ at 1024 px would need hundreds of
    GB held in memory).

    ``batch(indices, flip)`` gives float images in [-1, 1] with the given samples mirrored
    (the official ``RandomHorizontalFlip``). Every file's header is checked when the index is
    built, so a file that is not an image is an error naming it before training; one that fails
    to decode later is an error naming it too.
    """

    def __init__(self, folder: str | os.PathLike, size: int, what: str = "--data"):
        self.folder = Path(folder)
        self.paths = list_images(folder, what)
        self.size = size
        self.what = what
        for p in self.paths:
            _check_header(p, what)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def select(self, names: Sequence[str]) -> None:
        """Keep the images of these file names, in this order (a bank's key order)."""
        index = {p.name: p for p in self.paths}
        missing = [n for n in names if n not in index]
        if missing:
            raise InputError(f"{self.what}: {len(missing)} images are not in '{self.folder}' (e.g. {missing[0]})")
        self.paths = [index[n] for n in names]

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 ``[3, size, size]``, decoded now."""
        from ..errors import PasticheError
        from ..faces.io import load_image, resize_center_crop

        p = self.paths[i]
        try:
            rgb, _, _ = load_image(p)
        except PasticheError as exc:
            raise InputError(f"{self.what}: cannot use '{p.name}': {exc}") from None
        return torch.from_numpy(np.ascontiguousarray(resize_center_crop(rgb, self.size))).permute(2, 0, 1)

    def batch(self, indices: Sequence[int], flip: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
        x = torch.stack([self.load(int(i)) for i in indices]).float().div(127.5).sub(1.0)
        if flip is not None:
            flip = torch.as_tensor(flip, dtype=torch.bool)
            x[flip] = x[flip].flip(-1)
        return x


def _check_header(path: Path, what: str) -> None:
    """Is ``path`` an image PIL can open? Reads the header only, not the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{what}: cannot use '{path.name}': not a readable image ({exc.__class__.__name__})") from None


class Epochs:
    """Shuffled passes over ``n`` items, ``batch`` at a time, dropping the short tail (the
    official DataLoader with ``shuffle=True, drop_last=True``), from a run-owned generator."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        if n < batch:
            raise InputError(f"fewer images than the batch: {n} images, --batch {batch}")
        self.n, self.batch, self.generator = n, batch, generator
        self.order: list[int] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos + self.batch > len(self.order):
            self.order = torch.randperm(self.n, generator=self.generator).tolist()
            self.pos = 0
        out = self.order[self.pos: self.pos + self.batch]
        self.pos += self.batch
        return out

    def state(self) -> dict:
        return {"order": torch.tensor(self.order, dtype=torch.int64), "pos": self.pos}

    def load(self, state: dict) -> None:
        self.order, self.pos = [int(v) for v in state["order"].tolist()], int(state["pos"])


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
class GANStage:
    """One GAN training stage. Subclasses set :attr:`name` and implement the hooks; the
    base class runs the loop, checkpoints, resumes, reports and stops.

    ``g``/``g_ema``/``d`` are the live models (``g_ema`` is updated from ``ema_pairs()``);
    ``g_params`` the generator parameters the optimiser trains.
    """

    name = "gan"

    def __init__(self, g: nn.Module, g_ema: nn.Module, d: nn.Module, out: Path, cfg: GANConfig,
                 ctx: D.DistContext):
        self.g, self.g_ema, self.d, self.out, self.cfg, self.ctx = g, g_ema, d, Path(out), cfg, ctx
        self.device = ctx.device
        self.rng = torch.Generator().manual_seed(int(cfg.seed))  # global draws (same on every rank)
        self.mean_path_length = 0.0
        self.ada = None
        self.aug_rng = torch.Generator().manual_seed(int(cfg.seed) + 1)
        self.aug_p = cfg.augment_p if cfg.augment else 0.0
        self.losses: list[float] = []
        self.history: list[dict] = []

    # -- hooks -------------------------------------------------------------------------------
    def total_steps(self) -> int:
        return self.cfg.iters

    def g_params(self) -> list[nn.Parameter]:
        return list(self.g.parameters())

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.g_ema, self.g)]

    def d_images(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, fake) local batches for the discriminator step (fake without a graph)."""
        raise NotImplementedError

    def r1_images(self, step: int, real: torch.Tensor) -> torch.Tensor:
        return real

    def g_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        """The generator loss (local batch mean) and its terms as floats."""
        raise NotImplementedError

    def path_images(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, latents) for the path-length penalty (local share of the path batch)."""
        raise NotImplementedError

    def on_phase_start(self, step: int) -> None:
        """Called before a step that starts a new phase (pretrain's injection schedule)."""

    def local_step(self, step: int) -> int:
        """The official loop index ``i`` (restarts per phase in pretrain)."""
        return step

    epochs: "Epochs | None" = None  # the data order, when the stage reads an image folder

    def extra_state(self) -> dict:
        return {"epochs": self.epochs.state()} if self.epochs is not None else {}

    def load_extra_state(self, extra: dict) -> None:
        if extra and self.epochs is not None:
            self.epochs.load(extra["epochs"])

    def finish(self) -> list[Path]:
        """Write the stage's outputs (rank 0 only is called); return their paths."""
        return []

    extendable = True   # a finished run continues with a larger iters (not pretrain: its phases depend on it)
    snapshot_stem = ""  # numbered snapshots: OUT/<stem>-NNNNNN.pt ("" : the stage keeps none)

    def snapshot(self, done: int) -> list[Path]:
        """A numbered snapshot of ``g_ema`` after step ``done`` (rank 0) and a grid of its samples."""
        if not self.snapshot_stem:
            return []
        from .files import save_generator_files

        files = save_generator_files(self.out / f"{self.snapshot_stem}-{done:06d}", self.snapshot_kind,
                                     self.g_ema.state_dict(), self.g_ema.config, safetensors=False)
        with torch.no_grad():
            images = self.preview()
        if images is not None:
            files.append(save_grid(images, self.out / f"samples-{done:06d}.png"))
        return files

    snapshot_kind = "stylegan2"

    def preview(self) -> torch.Tensor | None:
        """A few ``g_ema`` images in [-1, 1] for progress previews (optional)."""
        return None

    # -- helpers for stages ------------------------------------------------------------------
    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's samples of a global batch (``r, r + world, ...``)."""
        return x[self.ctx.rank::self.ctx.world_size] if self.ctx.distributed else x

    def shard_list(self, items: Sequence) -> list:
        return list(items)[self.ctx.rank::self.ctx.world_size]

    def local_images(self, images: ImageSet, indices: Sequence[int], flips: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's images of the global batch ``indices`` (only these are decoded), on the device."""
        mine = self.shard_list(indices)
        D.trace(self.ctx, "batch", stage=self.name, images=[images.names[int(i)] for i in mine])
        return images.batch(mine, None if flips is None else self.shard(flips)).to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng)

    def mixing_codes(self, batch: int, prob: float, dim: int = 512) -> list[torch.Tensor]:
        """Official ``mixing_noise``: two z codes with probability ``prob``, else one (global batch)."""
        mix = prob > 0 and float(torch.rand((), generator=self.rng)) < prob
        return [self.randn(batch, dim), self.randn(batch, dim)] if mix else [self.randn(batch, dim)]

    def inject_index(self, n_latent: int) -> int:
        return int(torch.randint(1, n_latent, (), generator=self.rng))

    def noise_maps(self, generator_module, batch: int) -> list[torch.Tensor]:
        """Fresh per-sample noise maps for a global batch, this rank's share, on the device."""
        return [self.shard(torch.randn(s, generator=self.rng)).to(self.device)
                for s in generator_module.noise_shapes(batch)]

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.augment or self.aug_p <= 0:
            return x
        from .augment import augment

        return augment(x, self.aug_p, self.aug_rng)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool, progress: Progress | None, should_stop: ShouldStop | None,
            run_config: dict, start_optimizers: dict | None = None) -> StageResult:
        """Train to the end (or until stopped). ``start_optimizers``: ``g_optim``/``d_optim``
        states from the starting checkpoint, used when they fit (as the official scripts do)."""
        cfg, ctx = self.cfg, self.ctx
        world = ctx.world_size
        g_opt = adam(self.g_params(), cfg.lr, cfg.g_reg_every)
        d_opt = adam(list(self.d.parameters()), cfg.lr, cfg.d_reg_every)
        self.g_opt, self.d_opt = g_opt, d_opt
        if cfg.augment and cfg.augment_p == 0:
            from .augment import AdaptiveAugment

            self.ada = AdaptiveAugment(cfg.ada_target, cfg.ada_length, cfg.ada_every)
        loop = Loop(self.name, self.out, ctx, self.total_steps(), run_config, cfg.save_every, progress, should_stop,
                    preview=self.preview, sample_every=cfg.sample_every, snapshot_every=cfg.snapshot_every,
                    snapshot=self.snapshot)
        for key, opt in (("g_optim", g_opt), ("d_optim", d_opt)):
            if start_optimizers and key in start_optimizers:
                try:
                    opt.load_state_dict(start_optimizers[key])
                except (ValueError, KeyError, TypeError):
                    loop.notes.append(f"the starting checkpoint's {key} does not fit this stage's parameters; "
                                      f"the optimiser starts afresh")
        gens = {"rng": self.rng, "aug": self.aug_rng}
        def keys_to_match(saved: dict) -> list[str]:
            """A finished run extends with more --iters (its steps do not depend on the total)."""
            longer = saved["finished"] and int(saved["config"].get("iters", 0)) <= cfg.iters
            return [k for k in resume_keys(cfg) if not (k == "iters" and self.extendable and longer)]

        state = loop.load(resume, keys_to_match)
        step = 0
        if state is not None:
            apply_state(state, models={"g": self.g, "d": self.d}, ema={"g_ema": self.g_ema},
                        optimizers={"g": g_opt, "d": d_opt}, generators=gens)
            ex = state["extra"]
            step = int(state["step"])
            self.mean_path_length = float(ex["mean_path_length"])
            self.aug_p = float(ex["aug_p"])
            if self.ada is not None and ex.get("ada"):
                self.ada.load_state_dict(ex["ada"])
            self.load_extra_state(ex.get("stage", {}))
        self.losses = loop.losses

        def parts() -> dict:
            extra = {"mean_path_length": float(self.mean_path_length), "aug_p": float(self.aug_p),
                     "ada": self.ada.state_dict() if self.ada is not None else {}, "stage": self.extra_state()}
            return {"models": {"g": self.g, "d": self.d}, "ema": {"g_ema": self.g_ema},
                    "optimizers": {"g": g_opt, "d": d_opt}, "generators": gens, "extra": extra}

        loop.check_same_run({
            "g weights": self.g, "d weights": self.d, "g_ema weights": self.g_ema, "step": step,
            "optimiser states": {"g": g_opt.state_dict(), "d": d_opt.state_dict()},
            "random state": {k: gen.get_state() for k, gen in gens.items()},
            "stage state": {"path": self.mean_path_length, "aug_p": self.aug_p, **self.extra_state()}})
        loop.end_digests = lambda: {"g": self.g, "d": self.d, "g_ema": self.g_ema}

        def step_once(done: int) -> dict:
            self.on_phase_start(done)
            return self.train_step(done, world)

        def finish():
            return (self.finish() if ctx.is_main else []), {}

        return loop.run(step, step_once, parts, finish)

    def train_step(self, step: int, world: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        i = self.local_step(step)
        g_params = self.g_params()
        d_params = list(self.d.parameters())

        # discriminator
        requires_grad(self.g, False)
        requires_grad(self.d, True)
        real, fake = self.d_images(i)
        fake_pred = self.d(self.augmented(fake))
        real_pred = self.d(self.augmented(real))
        d_loss = d_logistic_loss(real_pred, fake_pred) * self.d_weight
        self.d.zero_grad(set_to_none=True)
        d_loss.backward()
        average_gradients(d_params, ctx)
        self.d_opt.step()
        if self.ada is not None:
            self.aug_p = self.ada.tune(real_pred.detach())
        r1_value = float("nan")
        if i % cfg.d_reg_every == 0:
            real = self.r1_images(i, real).detach().requires_grad_(True)
            real_pred = self.d(self.augmented(real))
            r1 = d_r1_loss(real_pred, real)
            self.d.zero_grad(set_to_none=True)
            (cfg.r1 / 2 * r1 * cfg.d_reg_every + 0 * real_pred[0]).sum().backward()
            average_gradients(d_params, ctx)
            self.d_opt.step()
            r1_value = float(D.all_reduce_sum(r1.detach(), ctx)) / world

        # generator
        requires_grad(self.d, False)
        for p in g_params:
            p.requires_grad_(True)
        g_loss, terms = self.g_loss(i)
        self.g.zero_grad(set_to_none=True)
        g_loss.backward()
        average_gradients(g_params, ctx)
        self.g_opt.step()

        path_value = float("nan")
        if cfg.path_regularize > 0 and i % cfg.g_reg_every == 0:
            images, latents = self.path_images(i)
            noise = torch.randn(images.shape[0] * world, *images.shape[1:], generator=self.rng)
            noise = self.shard(noise).to(images)
            lengths = g_path_lengths(images, latents, noise)
            mean_now = float(D.all_reduce_sum(lengths.detach().mean(), ctx)) / world
            path_mean = self.mean_path_length + 0.01 * (mean_now - self.mean_path_length)
            path_loss = (lengths - path_mean).pow(2).mean()
            self.g.zero_grad(set_to_none=True)
            weighted = cfg.path_regularize * cfg.g_reg_every * path_loss + 0 * images[0, 0, 0, 0]
            weighted.backward()
            average_gradients(g_params, ctx)
            self.g_opt.step()
            self.mean_path_length = path_mean
            path_value = float(D.all_reduce_sum(path_loss.detach(), ctx)) / world
        for ema, model in self.ema_pairs():
            accumulate(ema, model)

        values = D.all_reduce_sum(torch.stack([d_loss.detach(), g_loss.detach(), real_pred.detach().mean(),
                                               fake_pred.detach().mean()]).float(), ctx) / world
        out = {"d": float(values[0]), "g": float(values[1]), "real_score": float(values[2]),
               "fake_score": float(values[3]), "r1": r1_value, "path": path_value, "augment_p": self.aug_p}
        for k, v in terms.items():
            out[k] = float(D.all_reduce_sum(torch.tensor(float(v)), ctx)) / world
        out["loss"] = out.get(self.monitor, out["g"])
        return out

    d_weight = 1.0       # pretrain scales the adversarial losses by 0.1
    monitor = "g"        # which term is reported as "loss"


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """Images ``[B, 3, H, W]`` in [-1, 1] side by side as one PNG, written atomically."""
    from PIL import Image

    from ..atomic import atomic_write

    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    row = np.ascontiguousarray(torch.cat(list(x), dim=2).permute(1, 2, 0).numpy())
    return atomic_write(path, lambda tmp: Image.fromarray(row).save(tmp, format="PNG"))


def config_dict(cfg: GANConfig, **more) -> dict:
    d = asdict(cfg)
    d.pop("device")
    d.pop("save_every")
    d.pop("sample_every")
    return {**d, **more}


__all__ = ["EMA_DECAY", "Epochs", "GANConfig", "GANStage", "ImageSet", "accumulate", "adam", "average_gradients",
           "config_dict", "d_logistic_loss", "d_r1_loss", "g_nonsaturating_loss", "g_path_lengths",
           "list_images", "requires_grad"]
