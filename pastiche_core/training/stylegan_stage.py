"""Stage ``finetune-stylegan``: StyleGAN2 fine-tuned on the style images (official
``finetune_stylegan.py``), giving the style-domain generator g' that destylization inverts.

Starts from ``stylegan2-ffhq-config-f.pt`` (``g``, ``d``, ``g_ema`` and, when present, the
optimiser states). Every weight of the generator and the discriminator trains with the
StyleGAN2 recipe of :mod:`.gan`: style mixing with probability ``mixing`` (0.9), R1 10 every
16 steps, path length 2 every 4 steps, EMA. Writes ``finetune-NNNNNN.pt`` = ``{"g_ema"}``
(the official file, read by ``destylize``) and ``finetune-NNNNNN.safetensors``.

Data: a folder of style images (the official script reads the same images from an lmdb made
by ``prepare_data.py``), Resize + CenterCrop to the model size, random horizontal flips.
Official defaults: 600 iterations (README; the argparse default of 800000 is a from-scratch
value), batch 4 per GPU x 8 GPUs with ``--augment``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from . import distributed as D
from .loop import dist_session
from .common import Progress, ShouldStop, StageResult
from .files import (discriminator_from_state, read_training_file, save_generator_files, starting_file,
                    stylegan2_from_state, stylegan2_size)
from .gan import Epochs, GANConfig, GANStage, ImageSet, config_dict, g_nonsaturating_loss
from .inputs import FFHQ_FOR_FINETUNE
from .lmdb_images import open_images

STAGE = "finetune-stylegan"


class FinetuneStyleGAN(GANStage):
    name = STAGE
    snapshot_stem = "finetune"  # finetune-NNNNNN.pt, as the file of the finished run

    def __init__(self, g, g_ema, d, data: ImageSet, out: Path, cfg: GANConfig, ctx: D.DistContext):
        super().__init__(g, g_ema, d, out, cfg, ctx)
        self.data = data
        self.epochs = Epochs(len(data), cfg.batch, self.rng)
        self.n_latent = g.n_latent

    def _fake(self, batch: int, prob: float, *, need_latents: bool = False):
        codes = self.mixing_codes(batch, prob)
        inject = self.inject_index(self.n_latent) if len(codes) == 2 else None
        noise = self.noise_maps(self.g, batch)
        codes = [self.shard(c).to(self.device) for c in codes]
        if need_latents:
            with torch.no_grad():
                latent = self.g.make_latent(codes, "z", inject_index=inject)
            latent.requires_grad_(True)
            return self.g.synthesis(latent, noise=noise), latent
        return self.g(codes, inject_index=inject, noise=noise)

    def d_images(self, step: int):
        b = self.cfg.batch
        idx = self.epochs.next()
        flips = torch.rand(b, generator=self.rng) < 0.5
        real = self.local_images(self.data, idx, flips)
        with torch.no_grad():
            fake = self._fake(b, self.cfg.mixing)
        return real, fake

    def g_loss(self, step: int):
        fake = self._fake(self.cfg.batch, self.cfg.mixing)
        return g_nonsaturating_loss(self.d(self.augmented(fake))), {}

    def path_images(self, step: int):
        return self._fake(max(1, self.cfg.batch // self.cfg.path_batch_shrink), self.cfg.mixing, need_latents=True)

    def finish(self) -> list[Path]:
        stem = self.out / f"finetune-{self.total_steps():06d}"
        return save_generator_files(stem, "stylegan2", self.g_ema.state_dict(), self.g_ema.config)

    @torch.no_grad()
    def preview(self):
        z = torch.randn(4, self.g_ema.style_dim, generator=torch.Generator().manual_seed(self.cfg.seed))
        return self.g_ema(z.to(self.device), noise="stored").clamp(-1, 1)


def finetune_stylegan(checkpoints, data, out, cfg: GANConfig | None = None, *, style: str | None = None,
                      start: str | None = None, resume: bool = False, progress: Progress | None = None,
                      should_stop: ShouldStop | None = None, dist_ctx: D.DistContext | None = None) -> StageResult:
    """Fine-tune the FFHQ StyleGAN2 (``start`` or ``stylegan2-ffhq-config-f.pt`` found in
    ``out``/``checkpoints/style``/``checkpoints``) on the images in ``data``; write into ``out``."""
    cfg = cfg or GANConfig()
    with dist_session(cfg.device, dist_ctx) as ctx:
        cfg.check(ctx.world_size)
        out = Path(out)
        path = starting_file(start, FFHQ_FOR_FINETUNE, out, checkpoints, style)
        ckpt = read_training_file(path, FFHQ_FOR_FINETUNE.what, ["g", "d", "g_ema"])
        size = stylegan2_size(ckpt["g_ema"], path)
        images = open_images(data, size)  # a folder of images or an official lmdb
        if len(images) < cfg.batch:
            raise InputError(f"fewer style images than the batch: {len(images)} images in '{data}', "
                             f"--batch {cfg.batch}")
        g = stylegan2_from_state(ckpt["g"], path, "'g'").to(ctx.device).train()
        g_ema = stylegan2_from_state(ckpt["g_ema"], path, "'g_ema'").to(ctx.device).eval()
        d = discriminator_from_state(ckpt["d"], size, path).to(ctx.device).train()
        for m in (g, g_ema, d):
            m.requires_grad_(False)
        stage = FinetuneStyleGAN(g, g_ema, d, images, out, cfg, ctx)
        run_config = config_dict(cfg, stage=STAGE, start=str(path.name), size=size,
                                 data=images.names)
        result = stage.run(resume, progress, should_stop, run_config, start_optimizers=ckpt)
        result.notes.append(f"started from {path}; {len(images)} style images at {size}px")
        return result


__all__ = ["FinetuneStyleGAN", "STAGE", "finetune_stylegan"]
