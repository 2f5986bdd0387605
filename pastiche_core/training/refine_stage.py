"""Stage ``refine-exstyle``: optimise every exemplar's extrinsic code against the generator
(official ``refine_exstyle.py``), resumable and multi-process.

Per style image (batches of ``batch`` images in bank order, as the official loop): the
extrinsic z+ code is split into structure rows 0-6 and colour rows 7.., and optimised together
with fresh per-image noise maps by one Adam with three parameter groups (colour lr, structure
lr, noise lr 0.1). Each step maps the code row-wise with the generator's own mapping network,
renders ``G([instyle], exstyle_w, noise=noises, use_res=True)`` (all layer weights 1, no
truncation, the intrinsic z+ code from ``instyle_code.npy``), box-downsamples to ``size`` and
minimises

    perceptual(G, S) + CX(VGG19 relu3_1, band width 0.2, cosine) + 1e5 * noise_regularize

then re-normalises the noise maps. The refined **z+** codes are saved in the bank's key order
as ``refined_exstyle_code.npy`` (official format) and ``refined_exstyle_code.safetensors``.

Differences from the official script, on purpose:

* The perceptual term is chosen by ``loss``: ``"lpips"`` (default) is the official LPIPS-VGG
  (:class:`~.lpips.LPIPS`, VGG16 ``vgg16-397923af.pth`` + the v0.1 heads shipped with the
  package); ``"vgg"`` is :func:`~.losses.perceptual_distance` on VGG19 relu1_1..relu5_1 (the LPIPS
  formula without the learned heads: what runs made before LPIPS was available used, so they
  resume with it). Both add the official contextual term (VGG19). ``loss="pixel"`` (no network
  file) uses an L1 image loss at two scales instead.
* Every term is computed per image and summed over the batch (the official averages the CX
  loss, the noise penalty and the noise re-normalisation over the batch, which couples the
  images of a batch); for the official default ``--batch 1`` both are the same. This makes an
  image's result independent of how images are grouped, in one process or several.
* Noise maps are drawn per image from a generator seeded by (seed, file name).
* Learning rates: the official script defaults to colour 0.01, structure 0.005; its README
  runs ``--lr_color 0.1``. Both are presets (:data:`LR_PRESETS`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import InputError
from ..styles import StyleBank
from . import distributed as D
from .checkpointing import restore_rng
from .common import (derived_seed, find_style_images, load_style_image, pixel_loss, Progress,
                     ShouldStop, StageResult, tensor_fingerprint, to_size)
from .options import LOSSES, LR_PRESETS, RefineConfig, lr_preset, resume_keys  # noqa: F401 (re-exported)
from .loop import Batches, Loop, detached_optimizer_state, dist_session
from .losses import VGG16_FILE, VGG19Features, contextual_loss, noise_normalize_, noise_regularize, perceptual_distance

STAGE = "refine-exstyle"
BANK_NPY = "refined_exstyle_code.npy"
BANK_SAFETENSORS = "refined_exstyle_code.safetensors"


def refine_loss_terms(image: torch.Tensor, target_feats, target: torch.Tensor, vgg: VGG19Features | None,
                      cfg: RefineConfig, lpips=None, target_lpips=None) -> torch.Tensor:
    """Per-image image-matching loss ``[B]`` (without the noise penalty). ``target_lpips``:
    ``lpips.features(target)`` for ``cfg.loss == "lpips"``."""
    if cfg.loss == "pixel":
        return pixel_loss(image, target)
    feats = vgg(image)
    perceptual = (lpips.distance(lpips.features(image), target_lpips) if cfg.loss == "lpips"
                  else perceptual_distance(feats, target_feats))
    return (cfg.perc_weight * perceptual
            + cfg.cx_weight * contextual_loss(feats[2], target_feats[2].detach(), cfg.cx_band_width, per_sample=True))



def refine_exstyle_codes(generator, exstyle: StyleBank, instyle: StyleBank | None, data: str | os.PathLike,
                         out_dir: str | os.PathLike, config: RefineConfig | None = None, *,
                         vgg: VGG19Features | None = None, lpips=None, resume: bool = False,
                         progress: Progress | None = None,
                         should_stop: ShouldStop | None = None, dist_ctx: D.DistContext | None = None) -> StageResult:
    """Refine every code of ``exstyle`` against ``generator`` (a DualStyleGAN) and the style
    images in ``data`` (files named by the bank keys); write the refined bank into ``out_dir``.

    ``instyle``: the destylized intrinsic codes (``instyle_code.npy``); ``None`` uses each
    exemplar's own extrinsic code as its intrinsic code (Pastiche's faithful-exemplar mode).
    ``vgg`` (VGG19) is required unless ``config.loss == "pixel"``, ``lpips``
    (:class:`~.lpips.LPIPS`) for ``"lpips"``. Callbacks and ``resume`` as in
    :func:`~.sampler_stage.train_sampler`.
    """
    cfg = config or RefineConfig()
    with dist_session(cfg.device, dist_ctx) as ctx:
        return _refine(generator, exstyle, instyle, Path(data), Path(out_dir), cfg, vgg, ctx, resume, progress,
                       should_stop, lpips)


def _validate(generator, exstyle: StyleBank, instyle: StyleBank | None, cfg: RefineConfig, vgg, world: int,
              lpips=None) -> list[str]:
    notes = []
    if cfg.loss not in LOSSES:
        raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.loss != "pixel" and vgg is None:
        raise InputError(f"the '{cfg.loss}' refinement loss needs the VGG19 network (its contextual term; or use "
                         f"loss='pixel')")
    if cfg.loss == "lpips" and lpips is None:
        raise InputError(f"the 'lpips' refinement loss needs the LPIPS network (VGG16, {VGG16_FILE}); or use "
                         f"loss='vgg' or 'pixel'")
    if exstyle.space != "z+":
        raise InputError(f"refine-exstyle refines z+ bank codes; this bank is {exstyle.space}")
    n = len(exstyle)
    if n == 0:
        raise InputError("the extrinsic style bank is empty")
    if cfg.iters < 1:
        raise InputError(f"--iters must be at least 1, got {cfg.iters}")
    if cfg.batch < 1:
        raise InputError(f"--batch must be at least 1, got {cfg.batch}")
    if n < cfg.batch:
        raise InputError(f"fewer exemplars than the batch: the bank has {n} style codes but --batch is {cfg.batch}; "
                         f"use --batch {n} or less")
    if cfg.batch % world:
        raise InputError(f"--batch {cfg.batch} must be divisible by the number of processes ({world})")
    if exstyle.n_latent != generator.n_latent or exstyle.style_dim != generator.style_dim:
        raise InputError(f"bank codes are [{exstyle.n_latent}, {exstyle.style_dim}] but the {generator.size}px "
                         f"generator takes [{generator.n_latent}, {generator.style_dim}] codes")
    if exstyle.n_latent <= len(generator.structure_layers):
        raise InputError(f"codes have {exstyle.n_latent} rows; refinement needs more than the generator's "
                         f"{len(generator.structure_layers)} structure rows")
    if cfg.size > generator.size or cfg.size < 16:
        raise InputError(f"--size {cfg.size} must be between 16 and the generator's resolution ({generator.size})")
    if instyle is None:
        notes.append("no instyle_code bank: each exemplar's own extrinsic code is used as its intrinsic code "
                     "(the official script uses destylize's instyle_code.npy)")
    else:
        if (instyle.n_latent, instyle.style_dim) != (exstyle.n_latent, exstyle.style_dim):
            raise InputError(f"the instyle bank holds [{instyle.n_latent}, {instyle.style_dim}] codes but the "
                             f"extrinsic bank [{exstyle.n_latent}, {exstyle.style_dim}]")
        missing = [k for k in exstyle.names if k not in instyle]
        if missing:
            raise InputError(f"{len(missing)} exemplars of the extrinsic bank have no intrinsic code in the instyle "
                             f"bank (e.g. {', '.join(missing[:3])})")
    if cfg.loss == "lpips":
        notes.append("loss: LPIPS (VGG16, the official) + contextual loss on VGG19 relu3_1 (band width 0.2, cosine) "
                     "+ noise regularisation")
    elif cfg.loss == "vgg":
        notes.append("loss: VGG19 perceptual distance (LPIPS formula without its learned heads; not the official "
                     "LPIPS) + contextual loss on VGG19 relu3_1 (band width 0.2, cosine) + noise regularisation")
    else:
        notes.append("loss: L1 image loss at two scales + noise regularisation (no VGG19; not the official loss)")
    return notes


def _refine(generator, exstyle: StyleBank, instyle: StyleBank | None, data: Path, out: Path, cfg: RefineConfig,
            vgg: VGG19Features | None, ctx: D.DistContext, resume: bool, progress, should_stop,
            lpips=None) -> StageResult:
    notes = _validate(generator, exstyle, instyle, cfg, vgg, ctx.world_size, lpips)
    device = ctx.device
    if cfg.loss == "lpips":
        lpips = lpips.to(device).eval()
    names = exstyle.names
    paths = find_style_images(data, names)  # all present, checked before any work
    n = len(names)
    local_b = cfg.batch // ctx.world_size
    n_batches = -(-n // cfg.batch)
    # Global batch k is images k*batch ... (k+1)*batch - 1, as the official loop. Rank r takes an
    # interleaved shard of it (DistributedSampler without shuffling); with several processes a short
    # last batch is padded with repeats of its first image so that every rank keeps in step.
    def local_indices(k: int) -> list[int]:
        idx = list(range(k * cfg.batch, min(n, (k + 1) * cfg.batch)))
        if not ctx.distributed:
            return idx
        idx += [idx[0]] * (cfg.batch - len(idx))
        return [idx[i] for i in D.shard(cfg.batch, ctx, shuffle=False)][:local_b]

    total = n_batches * cfg.iters
    generator = generator.to(device).eval().requires_grad_(False)
    if vgg is not None:
        vgg = vgg.to(device).eval()
    n_latent = generator.n_latent
    n_structure = len(generator.structure_layers)  # rows 0..res_index; the rest are colour
    weights = [1.0] * n_latent

    run_config = {"stage": STAGE, "iters": cfg.iters, "batch": cfg.batch, "lr_color": cfg.lr_color,
                  "lr_structure": cfg.lr_structure, "lr_noise": cfg.lr_noise, "noise_weight": cfg.noise_weight,
                  "cx_weight": cfg.cx_weight, "perc_weight": cfg.perc_weight, "cx_band_width": cfg.cx_band_width,
                  "size": cfg.size, "loss": cfg.loss, "seed": cfg.seed, "world_size": ctx.world_size,
                  "bank": tensor_fingerprint(exstyle.codes), "names": list(names),
                  "instyle": tensor_fingerprint(instyle.codes) if instyle is not None else None,
                  "generator": tensor_fingerprint(*[v for v in generator.state_dict().values()
                                                     if v.is_floating_point()][:8]),
                  "lpips": (tensor_fingerprint(*list(lpips.state_dict().values())[-8:]) if cfg.loss == "lpips"
                            else None)}
    loop = Loop(STAGE, out, ctx, total, run_config, cfg.save_every, progress, should_stop, notes=notes)

    def begin(k: int, saved: dict | None) -> dict:
        idx = local_indices(k)
        images = torch.stack([load_style_image(paths[i], cfg.size) for i in idx]).to(device)
        ex_codes = torch.cat([exstyle[i] for i in idx]).to(device)
        in_codes = torch.cat([(instyle[names[i]] if instyle is not None else exstyle[i]) for i in idx]).to(device)
        if saved is not None:
            structure = saved["structure"].to(device).requires_grad_(True)
            color = saved["color"].to(device).requires_grad_(True)
            noises = [t.to(device).requires_grad_(True) for t in saved["noises"]]
        else:
            structure = ex_codes[:, :n_structure].detach().clone().requires_grad_(True)
            color = ex_codes[:, n_structure:].detach().clone().requires_grad_(True)
            per_image = []
            for i in idx:
                g = torch.Generator().manual_seed(derived_seed(cfg.seed, "noise", names[i]))
                per_image.append([torch.randn(s, generator=g) for s in generator.generator.noise_shapes(1)])
            noises = [torch.cat([maps[l] for maps in per_image]).to(device).requires_grad_(True)
                      for l in range(len(per_image[0]))]
        opt = torch.optim.Adam([{"params": [color], "lr": cfg.lr_color},
                                {"params": [structure], "lr": cfg.lr_structure},
                                {"params": noises, "lr": cfg.lr_noise}])
        if saved is not None:
            opt.load_state_dict(saved["optimizer"])
        with torch.no_grad():
            target_feats = vgg(images) if cfg.loss != "pixel" else None
            target_lpips = lpips.features(images) if cfg.loss == "lpips" else None
        return {"names": [names[i] for i in idx], "images": images, "in_codes": in_codes, "structure": structure,
                "color": color, "noises": noises, "opt": opt, "target_feats": target_feats,
                "target_lpips": target_lpips}

    def iterate(b: dict, it: int) -> dict:
        structure, color, noises, opt = b["structure"], b["color"], b["noises"], b["opt"]
        with torch.enable_grad():
            code = torch.cat([structure, color], dim=1)
            image = generator(b["in_codes"], generator.map_exstyle(code), input_space="z", exstyle_space="w",
                              interp_weights=weights, noise=noises, use_res=True)
            image = to_size(image, cfg.size)
            image_terms = refine_loss_terms(image, b["target_feats"], b["images"], vgg, cfg, lpips, b["target_lpips"])
            noise_terms = cfg.noise_weight * noise_regularize(noises, per_sample=True)
            loss = (image_terms + noise_terms).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        noise_normalize_(noises, per_sample=True)
        sums = D.all_reduce_sum(torch.stack([image_terms.detach().sum(), noise_terms.detach().sum()]), ctx)
        image_value, noise_value = (float(v) / cfg.batch for v in sums)
        return {"loss": image_value + noise_value, "image_loss": image_value, "noise_loss": noise_value,
                "batch": batches.k, "images": b["names"]}

    def end(b: dict, k: int) -> None:
        """Collect every rank's codes (first occurrence wins over padding repeats)."""
        codes = torch.cat([b["structure"], b["color"]], 1).detach().cpu()
        mine = [(name, codes[j:j + 1].clone()) for j, name in enumerate(b["names"])]
        for rank_items in D.gather_objects(mine, ctx):
            for name, c in rank_items:
                batches.done.setdefault(name, c)

    def snapshot(b: dict) -> dict:
        return {"structure": b["structure"].detach().cpu().clone(), "color": b["color"].detach().cpu().clone(),
                "noises": [t.detach().cpu().clone() for t in b["noises"]],
                "optimizer": detached_optimizer_state(b["opt"])}

    batches = Batches(cfg.iters, ctx, {}, begin, iterate, end, snapshot)
    keys = resume_keys(cfg)  # a batch in progress is split by rank: its processes must match too
    state = loop.load(resume, lambda st: keys + (["world_size"] if int(st["extra"]["iter"]) > 0 else []))
    if state is not None:
        restore_rng(state["rng"])
        batches.restore(state["extra"])
    loop.check_same_run({"generator weights": generator, "step": batches.steps_done, "codes done": batches.done})

    def finish():
        outputs = [out / BANK_NPY, out / BANK_SAFETENSORS]
        bank = StyleBank(names, [batches.done[nm] for nm in names], space="z+")
        if ctx.is_main:
            bank.save_pair(outputs[0], outputs[1])
        return outputs, {"bank": bank}

    return loop.run(batches.steps_done, batches.step, lambda: {"extra": batches.extra()}, finish)


def vgg_refine_loss(vgg, band_width: float = 0.2) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``perceptual`` callable for :func:`pastiche_core.refine.refine_exstyle` with the official refinement's terms
    on VGG19 (a :class:`pastiche_core.training.losses.VGG19Features`): the LPIPS-shaped perceptual
    distance (LPIPS's learned heads are not available offline) plus the contextual loss on relu3_1
    (band width 0.2, cosine), each summed over the batch. The target's features are computed once."""
    cache: dict = {}

    def loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if cache.get("target") is not target:  # the same tensor object every step of one refinement
            with torch.no_grad():
                cache["feats"] = [f.detach() for f in vgg(target)]
            cache["target"] = target
        ft = cache["feats"]
        fi = vgg(image)
        return (perceptual_distance(fi, ft).sum()
                + contextual_loss(fi[2], ft[2], band_width, per_sample=True).sum())

    return loss


__all__ = ["BANK_NPY", "BANK_SAFETENSORS", "LR_PRESETS", "RefineConfig", "lr_preset", "pixel_loss",
           "refine_exstyle_codes", "refine_loss_terms", "vgg_refine_loss"]
