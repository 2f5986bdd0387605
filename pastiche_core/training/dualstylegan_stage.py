"""Progressive fine-tuning of DualStyleGAN: stages ``pretrain`` (I colour + II structure transfer
on the source domain, official ``pretrain_dualstylegan.py``) and ``finetune`` (III style
transfer on the target domain, official ``finetune_dualstylegan.py``).

Both train only the extrinsic path (``res``: ModRes blocks and colour transforms) and the
extrinsic mapping ``style`` (T_s) against the StyleGAN2 discriminator, with the recipe of
:mod:`.gan`; as in the official scripts only ``g_ema.res`` follows the EMA (``g_ema.style``
keeps its value from the start).

pretrain (data: real face photos, the official FFHQ lmdb): starts from
``stylegan2-ffhq-config-f.pt`` (its ``g_ema`` becomes the intrinsic path of ``g`` and
``g_ema``, its ``d`` the discriminator) and the z+ pSp ``encoder.pt``. Three phases of
``iters/10``, ``iters/10`` and ``iters`` steps with injection index 7, 6, 5 (rounded down:
fewer than 10 iterations run only the last phase): the target is
StyleGAN's style mixing of z1 (rows < index) and z2, the extrinsic code is w(z2), or every
``subspace_freq``-th step the encoder's w+ code of g(z2) with z1 as a z+ intrinsic code. Losses:
0.1 * adversarial + L1 on VGG19 features 0-2 (weights 0.5) against the target. Writes
``generator-pretrain-NNNNNN.pt`` = ``{g, d, g_ema, g_optim, d_optim, args, ada_aug_p}`` and
``generator-pretrain.pt`` (the name ``finetune`` reads; a hard link).

finetune (data: the style images): starts from ``generator-pretrain.pt`` (``g``, ``d``,
``g_ema``, optimisers), the destylized banks ``instyle_code.npy`` / ``exstyle_code.npy`` and the
style images they name. Paired steps (``i % subspace_freq != 0``): extrinsic code = the bank's
w+ code + N(0, 0.1^2), intrinsic = its destylized z+ code with rows 8.. redrawn, target = the
style image; other steps: a random (mixing) z intrinsic code. Losses: adversarial +
CX (VGG19 relu3_1) * contextual_loss + feature-mean MSE (features 1, 2) * style_loss + ID loss against
the intrinsic-only rendering * id_loss + L1 VGG perceptual (features 1, 2; weights 0.5, 1) *
perc_loss on paired steps + L2 norm of the ``res`` weights * l2_reg_loss. Writes
``generator-NNNNNN.pt`` = ``{"g_ema"}``, ``generator.pt`` (a hard link: what inference loads) and
``generator.safetensors``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models import DualStyleGAN
from ..styles import StyleBank
from . import distributed as D
from .checkpointing import atomic_torch_save
from .loop import dist_session
from .common import Progress, ShouldStop, StageResult
from .files import (PRETRAIN, discriminator_from_state, link_or_copy, read_training_file, save_generator_files,
                    starting_file, stylegan2_size)
from .options import FinetuneConfig, GANConfig, PretrainConfig
from .gan import Epochs, GANStage, ImageSet, config_dict, g_nonsaturating_loss
from .inputs import FFHQ_FOR_PRETRAIN, PRETRAINED
from .lmdb_images import open_images
from .losses import contextual_loss, perceptual_l1, style_loss

PRETRAIN_STAGE = "pretrain"
FINETUNE_STAGE = "finetune"
INJECT_SCHEDULE = (7, 6, 5)      # pretrain's three phases
COLOR_START = 8                  # finetune redraws the intrinsic rows 8.. (official random_ind=8)


def _pool256(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 256) if x.shape[-1] > 256 else x


class _DualStage(GANStage):
    def __init__(self, g: DualStyleGAN, g_ema: DualStyleGAN, d, out: Path, cfg: GANConfig, ctx, vgg):
        super().__init__(g, g_ema, d, out, cfg, ctx)
        self.vgg = vgg
        self.n = g.n_latent
        self.ones = [1.0] * self.n

    def g_params(self):
        return list(self.g.res.parameters()) + list(self.g.style.parameters())

    def ema_pairs(self):
        return [(self.g_ema.res, self.g.res)]

    def render(self, instyle, exstyle, batch: int, *, grad: bool, use_res: bool = True,
               inject: int | None = None):
        """G(z or z+ intrinsic, w/w+ extrinsic), all layer weights 1, fresh noise for a global
        batch of ``batch`` (this rank's share)."""
        noise = self.noise_maps(self.g.generator, batch)
        with torch.set_grad_enabled(grad):
            return self.g(instyle, exstyle, input_space="z", exstyle_space="w", interp_weights=self.ones,
                          inject_index=inject, use_res=use_res, noise=noise)


    def path_exstyle(self, batch: int) -> torch.Tensor:
        """The extrinsic codes of the path-length step (global batch ``batch``, local share)."""
        raise NotImplementedError

    def path_images(self, i: int):
        """Official: mixing z intrinsic codes, the latents are the intrinsic w+ (a leaf here)."""
        pb = max(1, self.cfg.batch // self.cfg.path_batch_shrink)
        codes = self.mixing_codes(pb, self.cfg.mixing)
        inject = self.inject_index(self.n) if len(codes) == 2 else None
        exstyle = self.path_exstyle(pb)
        codes = [self.shard(c).to(self.device) for c in codes]
        with torch.no_grad():
            latent = self.g.generator.make_latent(codes, "z", inject_index=inject)
        latent.requires_grad_(True)
        noise = self.noise_maps(self.g.generator, pb)
        image = self.g(latent, exstyle, input_space="w", exstyle_space="w", interp_weights=self.ones, noise=noise)
        return image, latent


class Pretrain(_DualStage):
    name = PRETRAIN_STAGE
    monitor = "perc"
    d_weight = 0.1
    extendable = False  # the phases are iters/10, iters/10, iters

    def __init__(self, g, g_ema, d, encoder, vgg, data: ImageSet, out: Path, cfg: GANConfig, ctx):
        super().__init__(g, g_ema, d, out, cfg, ctx, vgg)
        self.encoder, self.data = encoder, data
        self.epochs = Epochs(len(data), cfg.batch, self.rng)
        n = cfg.iters
        self.phases = [(n // 10, INJECT_SCHEDULE[0]), (n // 10, INJECT_SCHEDULE[1]), (n, INJECT_SCHEDULE[2])]
        self.subspace_freq = cfg.subspace_freq

    def total_steps(self) -> int:
        return sum(n for n, _ in self.phases)

    def _phase(self, step: int) -> tuple[int, int, int]:
        """(phase index, step within the phase, injection index)."""
        start = 0
        for k, (n, inject) in enumerate(self.phases):
            if step < start + n:
                return k, step - start, inject
            start += n
        raise IndexError(step)

    def local_step(self, step: int) -> int:
        self._current = step
        return self._phase(step)[1]

    def on_phase_start(self, step: int) -> None:
        _, i, _ = self._phase(step)
        if i == 0 and step > 0:  # each official pretrain() call starts these afresh
            self.mean_path_length = 0.0
            self.aug_p = self.cfg.augment_p if self.cfg.augment else 0.0
            if self.ada is not None:
                self.ada.load_state_dict({**self.ada.state_dict(), "p": self.aug_p, "sign_sum": 0.0, "count": 0,
                                          "calls": 0})

    def _codes(self, i: int):
        """One step's draws: z1, z2 (local), the style-mixed target and E(g(z2)) in w+."""
        _, _, inject = self._phase(self._current)
        b = self.cfg.batch
        z1, z2 = (self.shard(self.randn(b, 512)).to(self.device) for _ in range(2))
        with torch.no_grad():
            nz = self.noise_maps(self.g.generator, b)
            target = self.g.generator([z1, z2], inject_index=inject, noise=nz)
            style_img = self.g.generator([z2], noise=self.noise_maps(self.g.generator, b))
            psp = self.encoder.to_wplus(self.encoder.encode(_pool256(style_img)))
        return z1, z2, target, psp

    def _fake(self, i: int, z1, z2, psp, grad: bool):
        if i % self.subspace_freq > 0:
            instyle, exstyle = [z1], self.g.generator.mapping(z2).detach()
        else:
            instyle, exstyle = [z1.unsqueeze(1).repeat(1, self.n, 1)], psp
        return self.render(instyle, exstyle, self.cfg.batch, grad=grad)

    def d_images(self, i: int):
        b = self.cfg.batch
        idx = self.epochs.next()
        flips = torch.rand(b, generator=self.rng) < 0.5
        real = self.local_images(self.data, idx, flips)
        self._draws = self._codes(i)
        z1, z2, _, psp = self._draws
        with torch.no_grad():
            fake = self._fake(i, z1, z2, psp, grad=False)
        return real, fake

    def g_loss(self, i: int):
        z1, z2, target, psp = self._draws  # the official reuses the discriminator step's codes
        fake = self._fake(i, z1, z2, psp, grad=True)
        with torch.no_grad():
            real_feats = self.vgg(_pool256(target))
        fake_feats = self.vgg(_pool256(fake))
        perc = perceptual_l1(fake_feats, real_feats, layers=(0, 1, 2), weights=(0.5, 0.5, 0.5))
        adv = g_nonsaturating_loss(self.d(self.augmented(fake))) * 0.1
        return adv + perc, {"adv": float(adv.detach()), "perc": float(perc.detach())}

    def path_exstyle(self, batch: int) -> torch.Tensor:
        with torch.no_grad():
            return self.g.generator.mapping(self.shard(self.randn(batch, 512)).to(self.device))

    def finish(self) -> list[Path]:
        cfg = self.cfg
        args = argparse.Namespace(iter=cfg.iters, batch=cfg.batch, size=self.g.size, r1=cfg.r1,
                                  path_regularize=cfg.path_regularize, path_batch_shrink=cfg.path_batch_shrink,
                                  d_reg_every=cfg.d_reg_every, g_reg_every=cfg.g_reg_every, mixing=cfg.mixing,
                                  lr=cfg.lr, channel_multiplier=self.g.channel_multiplier, augment=cfg.augment,
                                  augment_p=cfg.augment_p, ada_target=cfg.ada_target, ada_length=cfg.ada_length,
                                  subspace_freq=self.subspace_freq, model_name="generator-pretrain", latent=512,
                                  n_mlp=self.g.n_mlp, seed=cfg.seed)
        obj = {"g": self.g.state_dict(), "d": self.d.state_dict(), "g_ema": self.g_ema.state_dict(),
               "g_optim": self.g_opt.state_dict(), "d_optim": self.d_opt.state_dict(), "args": args,
               "ada_aug_p": float(self.aug_p)}
        path = atomic_torch_save(obj, self.out / f"generator-pretrain-{self.cfg.iters:06d}.pt")
        return [path, link_or_copy(path, self.out / PRETRAIN)]

    @torch.no_grad()
    def preview(self):
        g = torch.Generator().manual_seed(self.cfg.seed)
        z1, z2 = torch.randn(4, 512, generator=g).to(self.device), torch.randn(4, 512, generator=g).to(self.device)
        ex = self.g_ema.generator.mapping(z2)
        return self.g_ema([z1], ex, interp_weights=self.ones, noise="stored").clamp(-1, 1)


class Finetune(_DualStage):
    name = FINETUNE_STAGE
    snapshot_stem, snapshot_kind = "generator", "dualstylegan"  # generator-NNNNNN.pt, never generator-pretrain.pt
    monitor = "g"

    def __init__(self, g, g_ema, d, vgg, id_loss, instyles: torch.Tensor, exstyles_w: torch.Tensor,
                 images: ImageSet, out: Path, cfg: GANConfig, ctx):
        super().__init__(g, g_ema, d, out, cfg, ctx, vgg)
        self.id_loss, self.images = id_loss, images
        self.instyles, self.exstyles = instyles, exstyles_w  # [N, n, 512] z+ and w+ (CPU)
        self.epochs = Epochs(len(images), cfg.batch, self.rng)
        self.subspace_freq = cfg.subspace_freq

    def paired(self, batch: int, subspace_std: float = 0.1):
        """Official ``get_paired_data``: bank entries, jittered extrinsic w+, intrinsic z+ with
        rows 8.. redrawn, and their style images (global draws, this rank's share)."""
        ind = torch.randint(0, self.instyles.shape[0], (batch,), generator=self.rng)
        instyle = self.instyles[ind].clone()
        if COLOR_START < self.n:
            instyle[:, COLOR_START:] = torch.randn(instyle[:, COLOR_START:].shape, generator=self.rng)
        exstyle = self.exstyles[ind] + subspace_std * torch.randn(self.exstyles[ind].shape, generator=self.rng)
        image = self.local_images(self.images, ind.tolist())
        return self.shard(exstyle).to(self.device), self.shard(instyle).to(self.device), image

    def _inputs(self, i: int, batch: int):
        if i % self.subspace_freq == 0:
            exstyle, _, image = self.paired(batch)
            codes = self.mixing_codes(batch, self.cfg.mixing)
            inject = self.inject_index(self.n) if len(codes) == 2 else None
            return [self.shard(c).to(self.device) for c in codes], inject, exstyle, image, False
        exstyle, instyle, image = self.paired(batch)
        return [instyle], None, exstyle, image, True

    def d_images(self, i: int):
        b = self.cfg.batch
        instyle, inject, exstyle, image, paired = self._inputs(i, b)
        if paired:
            real = image
        else:
            idx = self.epochs.next()
            flips = torch.rand(b, generator=self.rng) < 0.5
            real = self.local_images(self.images, idx, flips)
        fake = self.render(instyle, exstyle, b, grad=False, inject=inject)
        return real, fake

    def g_loss(self, i: int):
        b = self.cfg.batch
        instyle, inject, exstyle, real, paired = self._inputs(i, b)
        fake = self.render(instyle, exstyle, b, grad=True, inject=inject)
        with torch.no_grad():
            real_feats = self.vgg(_pool256(real))
            content = self.render(instyle, None, b, grad=False, use_res=False, inject=inject)
        fake256 = _pool256(fake)
        fake_feats = self.vgg(fake256)
        terms = {}
        sty = fake.new_zeros(())
        if self.cfg.contextual_loss > 0:
            sty = sty + contextual_loss(fake_feats[2], real_feats[2].detach(), 0.2) * self.cfg.contextual_loss
        if self.cfg.style_loss > 0:
            sty = sty + style_loss(fake_feats, real_feats, layers=(1, 2)) * self.cfg.style_loss
        ident = self.id_loss(fake256, _pool256(content)) * self.cfg.id_loss if self.cfg.id_loss > 0 else fake.new_zeros(())
        perc = fake.new_zeros(())
        if paired and self.cfg.perc_loss > 0:
            perc = perceptual_l1(fake_feats, real_feats, layers=(1, 2), weights=(0.5, 1.0)) * self.cfg.perc_loss
        adv = g_nonsaturating_loss(self.d(self.augmented(fake)))
        l2 = sum(torch.norm(p) for p in self.g.res.parameters()) * self.cfg.l2_reg_loss
        terms = {k: float(v.detach()) for k, v in (("adv", adv), ("sty", sty), ("id", ident), ("l2", l2))}
        terms["perc"] = float(perc.detach()) if paired else float("nan")
        return adv + sty + ident + perc + l2, terms

    def path_exstyle(self, batch: int) -> torch.Tensor:
        return self.paired(batch)[0]

    def finish(self) -> list[Path]:
        stem = self.out / f"generator-{self.cfg.iters:06d}"
        files = save_generator_files(stem, "dualstylegan", self.g_ema.state_dict(), self.g_ema.config,
                                     safetensors=False)
        from ..checkpoints import save_generator_safetensors
        from .files import link_into

        # generator.pt (a link to the numbered file) and generator.safetensors as one pair
        save_generator_safetensors(self.out / "generator.safetensors", "dualstylegan", self.g_ema.state_dict(),
                                   self.g_ema.config, twin=self.out / "generator.pt",
                                   twin_write=lambda tmp: link_into(files[0], tmp))
        files += [self.out / "generator.pt", self.out / "generator.safetensors"]
        return files

    @torch.no_grad()
    def preview(self):
        g = torch.Generator().manual_seed(self.cfg.seed)
        k = min(4, self.instyles.shape[0])
        z = torch.randn(k, 512, generator=g).to(self.device)
        return self.g_ema([z], self.exstyles[:k].to(self.device), interp_weights=self.ones,
                          noise="stored").clamp(-1, 1)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def _prepare(models, device):
    for m in models:
        m.to(device).requires_grad_(False)
    return models


def pretrain_dualstylegan(checkpoints, data, out, encoder, vgg, cfg: GANConfig | None = None, *,
                          style: str | None = None, start: str | None = None, resume: bool = False,
                          progress: Progress | None = None, should_stop: ShouldStop | None = None,
                          dist_ctx: D.DistContext | None = None) -> StageResult:
    """Stages I-II: train DualStyleGAN's extrinsic path on face photos ``data`` (official FFHQ).

    ``encoder``: the z+ pSp encoder (``encoder.pt``); ``vgg``: :class:`~.losses.VGG19Features`
    with at least 3 slices."""
    cfg = PretrainConfig.of(cfg or PretrainConfig())
    with dist_session(cfg.device, dist_ctx) as ctx:
        cfg.check(ctx.world_size)
        out = Path(out)
        path = starting_file(start, FFHQ_FOR_PRETRAIN, out, checkpoints, style)
        ckpt = read_training_file(path, FFHQ_FOR_PRETRAIN.what, ["g_ema", "d"])
        size = stylegan2_size(ckpt["g_ema"], path)
        if getattr(encoder, "space", "z+") != "z+":
            raise InputError("pretrain needs the z+ pSp encoder (encoder.pt), not the w+ one")
        images = open_images(data, size)  # a folder of images or an official lmdb (FFHQ)
        if len(images) < cfg.batch:
            raise InputError(f"fewer face images than the batch: {len(images)} images in '{data}', --batch {cfg.batch}")
        torch.manual_seed(cfg.seed)  # the extrinsic path's initialisation
        g = DualStyleGAN(size)
        g.generator.load_state_dict(ckpt["g_ema"])
        g_ema = DualStyleGAN(size)
        g_ema.load_state_dict(g.state_dict())
        if encoder.n_styles != g.n_latent:
            raise InputError(f"the encoder gives {encoder.n_styles} style rows but the {size}px generator has "
                             f"{g.n_latent}; use the encoder made for this generator")
        d = discriminator_from_state(ckpt["d"], size, path)
        _prepare([g, g_ema, d, encoder, vgg], ctx.device)
        g.train(), d.train(), g_ema.eval(), encoder.eval()
        stage = Pretrain(g, g_ema, d, encoder, vgg, images, out, cfg, ctx)
        run_config = config_dict(cfg, stage=PRETRAIN_STAGE, start=path.name, size=size, data=images.names,
                                 subspace_freq=stage.subspace_freq)
        start_optim = {"d_optim": ckpt["d_optim"]} if "d_optim" in ckpt else None
        result = stage.run(resume, progress, should_stop, run_config, start_optimizers=start_optim)
        result.notes.append(f"started from {path}; {len(images)} face images at {size}px; phases "
                            + ", ".join(f"{n} steps at injection index {k}" for n, k in stage.phases))
        return result


def finetune_dualstylegan(checkpoints, data, out, vgg, id_loss, instyle: StyleBank, exstyle: StyleBank,
                          cfg: GANConfig | None = None, *, style: str | None = None, start: str | None = None,
                          resume: bool = False, progress: Progress | None = None,
                          should_stop: ShouldStop | None = None,
                          dist_ctx: D.DistContext | None = None) -> StageResult:
    """Stage III: fine-tune the pretrained DualStyleGAN (``generator-pretrain.pt``) on the style
    images ``data`` with their destylized codes; write ``generator.pt`` into ``out``."""
    cfg = FinetuneConfig.of(cfg or FinetuneConfig())
    with dist_session(cfg.device, dist_ctx) as ctx:
        cfg.check(ctx.world_size)
        out = Path(out)
        path = starting_file(start, PRETRAINED, out, checkpoints, style)
        ckpt = read_training_file(path, PRETRAINED.what, ["g", "d", "g_ema"])
        from ..checkpoints import build_generator

        g = build_generator("dualstylegan", ckpt["g"], path)
        g_ema = build_generator("dualstylegan", ckpt["g_ema"], path)
        size = g.size
        d = discriminator_from_state(ckpt["d"], size, path)
        names = list(instyle.names)
        missing = [k for k in names if k not in exstyle]
        if missing:
            raise InputError(f"{len(missing)} entries of instyle_code have no extrinsic code in exstyle_code "
                             f"(e.g. {', '.join(missing[:3])}); use the two banks destylize wrote together")
        for bank, what in ((instyle, "instyle_code"), (exstyle, "exstyle_code")):
            if (bank.n_latent, bank.style_dim) != (g.n_latent, g.style_dim):
                raise InputError(f"{what} holds [{bank.n_latent}, {bank.style_dim}] codes but the {size}px generator "
                                 f"takes [{g.n_latent}, {g.style_dim}]")
        folder = Path(data)
        from .common import find_style_images

        find_style_images(folder, names)  # every bank entry has its image (clear error otherwise)
        images = ImageSet(folder, size)
        images.select(names)
        if len(images) < cfg.batch:
            raise InputError(f"fewer exemplars than the batch: {len(images)} style images, --batch {cfg.batch}")
        _prepare([g, g_ema, d, vgg, id_loss], ctx.device)
        g.train(), d.train(), g_ema.eval()
        with torch.no_grad():  # pre-map the extrinsic z+ codes to w+ once (as the official)
            ex = torch.cat([exstyle[n] for n in names]).to(ctx.device)
            exstyles_w = g_ema.generator.mapping(ex).cpu()
        instyles = torch.cat([instyle[n] for n in names]).float()
        stage = Finetune(g, g_ema, d, vgg, id_loss, instyles, exstyles_w, images, out, cfg, ctx)
        run_config = config_dict(cfg, stage=FINETUNE_STAGE, start=path.name, size=size, names=names)
        start_optim = {k: ckpt[k] for k in ("g_optim", "d_optim") if k in ckpt}
        result = stage.run(resume, progress, should_stop, run_config, start_optimizers=start_optim)
        result.notes.append(f"started from {path}; {len(names)} exemplars at {size}px")
        return result


__all__ = ["COLOR_START", "FINETUNE_STAGE", "Finetune", "INJECT_SCHEDULE", "PRETRAIN_STAGE", "Pretrain",
           "finetune_dualstylegan", "pretrain_dualstylegan"]
