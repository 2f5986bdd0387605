"""Stage ``destylize``: facial destylization (official ``destylize.py``), resumable and multi-process.

Turns every style image ``S`` of a folder into the two code banks the later stages read: its
extrinsic code ``z_e`` (``exstyle_code.npy``) and the intrinsic code ``z_i`` of a realistic
face with its structure (``instyle_code.npy``). Inputs: ``g'`` (the StyleGAN2 generator
fine-tuned on the style, ``finetune-000600.pt``), ``g`` (the original FFHQ StyleGAN2), the
pSp **z+** encoder ``E``. Per batch of style images (files sorted by name, ``batch`` at a time):

* **Stage I** (latent initialisation): ``z_e = E(S)`` in z+ (no gradients).
* **Stage II** (latent optimisation): ``z`` (initialised with ``z_e``) and fresh per-image noise
  maps are optimised by one Adam, learning rate ``lr`` with the official ramp (linear ramp-up
  over the first 5 %, cosine ramp-down over the last 25 % of the ``iters`` steps; the first step
  has learning rate 0, as the official). Each step renders ``g'(z)`` in z+ (the rows mapped one
  by one) with the optimised noise, box-downsamples it to ``size`` and minimises::

      perceptual(g'(z), S) + id_weight * ID(g'(z), S)
        + reg_weight * mean_channels(std_layers(z)) + noise_weight * noise_regularize(noises)

  then re-normalises the noise maps to zero mean / unit std.
* Then ``z[:, 8:] = z_e[:, 8:]`` (8, as the official: the colour rows of the exemplar are kept)
  and ``g(z)`` is rendered with the **original** generator at ``truncation`` (0.7) towards 0,
  with the optimised noise maps (as the official, which passes ``noise=noises``), and pooled to
  256.
* **Stage III** (image embedding): ``z_i = E(g(z))``; ``z_i[:, 8:] = z_e[:, 8:]``.

Outputs in ``out_dir``: ``exstyle_code.npy`` / ``instyle_code.npy`` (official format: a dict
file name -> float32 ``[1, n, 512]``) and the same banks as ``.safetensors``; per image a
visualisation ``destylization/<stem>.png`` = ``[S, g(z), g(z_i)]`` at 256 px (the official
also shows the encoder's reconstruction of ``S``, which needs a further 1024 px decoder pass;
we leave it out).

Differences from the official script, on purpose:

* The perceptual term is chosen by ``loss``: ``"lpips"`` (default) is the official LPIPS-VGG
  (:class:`~.lpips.LPIPS`: VGG16 ``vgg16-397923af.pth`` + the v0.1 linear heads shipped with the
  package); ``"vgg"`` is :func:`~.losses.perceptual_distance` on VGG19 relu1_1..relu5_1 (the LPIPS
  formula without the learned heads: what runs made before LPIPS was available used, so they
  resume with it); ``"pixel"`` (no network file) an L1 image loss at two scales. The ID loss is
  the official one (IR-SE50).
* Every term is computed per image and summed over the batch. The official script sums LPIPS
  over the batch but averages the ID loss, the code regulariser and the noise penalty over it
  and re-normalises each noise layer over the whole batch, which couples the images of a batch
  (and scales the ID / regulariser weights by 1/batch). Summing per-image terms with Adam (an
  element-wise optimiser) optimises every image exactly as if it were alone, so the result does
  not depend on how images are grouped, in one process or several; for the official default
  ``--batch 1`` both are the same.
* Files are taken sorted by name (the official uses ``os.listdir`` order, which is arbitrary);
  the banks keep that order.
* Noise maps are drawn per image from a generator seeded by (seed, file name) instead of the
  global RNG, so a run is reproducible and independent of batching.
* Loss resolution ``size`` is configurable (official 256); the style images are read at 256
  (``Resize`` + ``CenterCrop``, as the official) and box-downsampled for the loss.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, PasticheError
from ..styles import StyleBank
from . import distributed as D
from .checkpointing import restore_rng
from .common import (IMAGE_SUFFIXES, derived_seed, load_style_image, pixel_loss, Progress,
                     ShouldStop, StageResult, tensor_fingerprint, to_size)
from .options import LOSSES, DestylizeConfig, resume_keys
from .loop import Batches, Loop, detached_optimizer_state, dist_session
from .losses import IRSE50_FILE, VGG16_FILE, VGG19_FILE, IDLoss, VGG19Features, noise_normalize_, noise_regularize, \
    perceptual_distance

STAGE = "destylize"
EXSTYLE_NPY = "exstyle_code.npy"
INSTYLE_NPY = "instyle_code.npy"
EXSTYLE_SAFETENSORS = "exstyle_code.safetensors"
INSTYLE_SAFETENSORS = "instyle_code.safetensors"
VIS_DIR = "destylization"
COLOR_START = 8        # official: latent[:, 8:18] = latent_e[:, 8:18] (note: 8, not 7)
IMAGE_SIZE = 256       # the encoder's input and the official image size


def get_lr(t: float, initial_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The official schedule at progress ``t = step / iters``: cosine ramp-down over the last
    ``rampdown`` and linear ramp-up over the first ``rampup`` (0 at ``t = 0``)."""
    ramp = min(1.0, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / rampup)
    return initial_lr * ramp



def code_regularizer(z: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: mean over channels of the (unbiased) std over the layers of a z+ code
    (the official ``latent.std(dim=1).mean()`` for a batch of one)."""
    return z.std(dim=1).mean(dim=1)



def list_style_images(data: str | os.PathLike) -> list[Path]:
    """Every image file (by suffix, see ``IMAGE_SUFFIXES``) directly in ``data``, sorted by name
    (hidden files such as macOS ``._*`` companions are skipped)."""
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"--data '{folder}' is not a folder (expected the style images, "
                         f"e.g. data/<style>/images/train)")
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                   key=lambda p: p.name)
    if not files:
        raise InputError(f"no style images in '{folder}' (expected image files: {', '.join(IMAGE_SUFFIXES)}); "
                         f"--data must be the folder of the style's images, e.g. data/<style>/images/train")
    return files


def _files_fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def _model_fingerprint(model: torch.nn.Module | None) -> str | None:
    """Fingerprint of a network's first and last 8 float tensors (to refuse resuming with other weights)."""
    if model is None:
        return None
    tensors = [v for v in model.state_dict().values() if v.is_floating_point()]
    return tensor_fingerprint(*(tensors if len(tensors) <= 16 else tensors[:8] + tensors[-8:]))


def destylize(finetuned, original, encoder, data: str | os.PathLike, out_dir: str | os.PathLike,
              config: DestylizeConfig | None = None, *, vgg: VGG19Features | None = None,
              id_loss: IDLoss | None = None, lpips=None, resume: bool = False, progress: Progress | None = None,
              should_stop: ShouldStop | None = None, dist_ctx: D.DistContext | None = None) -> StageResult:
    """Destylize every style image in ``data``; write ``exstyle_code`` / ``instyle_code`` banks
    (``.npy`` official format and ``.safetensors``) into ``out_dir``.

    finetuned: ``g'``, the StyleGAN2 :class:`~pastiche_core.models.Generator` fine-tuned on the
    style. original: ``g``, the FFHQ StyleGAN2 generator (same size). encoder: the pSp encoder
    in **z+** (:class:`~pastiche_core.models.psp.PSPEncoder`, ``encoder.pt``) with as many code
    rows as the generators. ``lpips`` (:class:`~.lpips.LPIPS`) is required for ``config.loss ==
    "lpips"``, ``vgg`` for ``"vgg"``, ``id_loss``
    (IR-SE50, ``model_ir_se50.pth``) when ``config.id_weight > 0``.

    ``progress(done, total, info)`` after every step (rank 0), ``should_stop()`` polled before
    every step (a stop saves the state; ``resume=True`` continues bit for bit); ``dist_ctx``
    for torchrun runs (each rank optimises its shard of every batch; only rank 0 writes).
    """
    cfg = config or DestylizeConfig()
    with dist_session(cfg.device, dist_ctx) as ctx:
        perceptual = {"lpips": lpips, "vgg": vgg}.get(cfg.loss)
        return _destylize(finetuned, original, encoder, Path(data), Path(out_dir), cfg, perceptual, id_loss, ctx,
                          resume, progress, should_stop)


def _validate(finetuned, original, encoder, cfg: DestylizeConfig, vgg, id_loss, world: int,
              n_images: int | None) -> list[str]:
    from ..models.stylegan2 import Generator

    notes = []
    if cfg.loss not in LOSSES:
        raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.iters < 1:
        raise InputError(f"--iters must be at least 1, got {cfg.iters}")
    if cfg.batch < 1:
        raise InputError(f"--batch must be at least 1, got {cfg.batch}")
    if cfg.save_every < 1:
        raise InputError(f"--save-every must be at least 1, got {cfg.save_every}")
    if not 0 < cfg.truncation <= 1:
        raise InputError(f"--truncation must be in (0, 1], got {cfg.truncation}")
    for name, g in (("fine-tuned", finetuned), ("original", original)):
        if not isinstance(g, Generator):
            hint = (" (a DualStyleGAN was given: destylize needs the plain StyleGAN2 generators, "
                    "finetune-*.pt and stylegan2-ffhq-config-f.pt)" if hasattr(g, "generator") else "")
            raise InputError(f"the {name} generator must be a StyleGAN2 Generator, got {type(g).__name__}{hint}")
    shape_of = (lambda g: (g.size, g.n_latent, g.style_dim))
    if shape_of(finetuned) != shape_of(original):
        raise InputError(f"the fine-tuned generator is {finetuned.size}px ([{finetuned.n_latent}, "
                         f"{finetuned.style_dim}] codes) but the original is {original.size}px ([{original.n_latent}, "
                         f"{original.style_dim}] codes); g' must be fine-tuned from g")
    space = getattr(encoder, "space", None)
    if space != "z+":
        raise InputError(f"destylize needs the z+ pSp encoder (encoder.pt); this encoder's codes are {space}")
    n_styles = getattr(encoder, "n_styles", None)
    if n_styles != finetuned.n_latent or finetuned.style_dim != 512:
        raise InputError(f"the encoder's codes are [{n_styles}, 512] but the {finetuned.size}px generators take "
                         f"[{finetuned.n_latent}, {finetuned.style_dim}] codes")
    if cfg.size > finetuned.size or cfg.size < 16:
        raise InputError(f"--size {cfg.size} must be between 16 and the generator's resolution ({finetuned.size})")
    if cfg.loss != "pixel" and vgg is None:
        net = (f"LPIPS network (VGG16, {VGG16_FILE})" if cfg.loss == "lpips" else f"VGG19 network ({VGG19_FILE})")
        raise InputError(f"the '{cfg.loss}' destylization loss needs the {net}; or use loss='pixel'")
    if cfg.id_weight > 0 and id_loss is None:
        raise InputError(f"the identity loss (id_weight {cfg.id_weight:g}) needs the ArcFace IR-SE50 network "
                         f"({IRSE50_FILE}, shipped with the official checkpoints); or set id_weight 0")
    if n_images is not None:
        if n_images < cfg.batch:
            raise InputError(f"fewer style images than the batch: the folder has {n_images} images but --batch is "
                             f"{cfg.batch}; use --batch {n_images} or less")
    if cfg.batch % world:
        raise InputError(f"--batch {cfg.batch} must be divisible by the number of processes ({world})")
    if finetuned.n_latent <= COLOR_START:
        notes.append(f"the generators have {finetuned.n_latent} code rows: no colour rows {COLOR_START}.. to keep "
                     f"from the exemplar")
    if cfg.batch > 1:
        notes.append("every loss term is computed per image and summed over the batch (the official script "
                     "averages the ID, regulariser and noise terms over the batch, which couples its images)")
    image_term = {"lpips": "LPIPS (VGG16, the official)",
                  "vgg": "VGG19 perceptual distance (LPIPS formula without its learned heads; not the official LPIPS)",
                  "pixel": "L1 image loss at two scales (not the official LPIPS)"}[cfg.loss]
    notes.append(f"loss: {image_term}" + (f" + {cfg.id_weight:g} * ID loss (IR-SE50)" if cfg.id_weight > 0 else "")
                 + " + z+ regulariser + noise regularisation")
    return notes


def _image_to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1).permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def _save_visualisation(path: Path, images: list[torch.Tensor]) -> None:
    """``[S, g(z), g(z_i)]`` side by side with a 1 px gap (as torchvision's make_grid padding)."""
    from PIL import Image

    h = images[0].shape[-1]
    canvas = np.zeros((h, len(images) * (h + 1) - 1, 3), np.uint8)
    for j, img in enumerate(images):
        canvas[:, j * (h + 1): j * (h + 1) + h] = _image_to_uint8(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..atomic import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(canvas).save(tmp, format="PNG"))


def _destylize(finetuned, original, encoder, data: Path, out: Path, cfg: DestylizeConfig, vgg, id_loss,
               ctx: D.DistContext, resume: bool, progress, should_stop) -> StageResult:
    _validate(finetuned, original, encoder, cfg, vgg, id_loss, ctx.world_size, None)  # models first, before any IO
    paths = list_style_images(data)
    names = [p.name for p in paths]
    n = len(names)
    notes = _validate(finetuned, original, encoder, cfg, vgg, id_loss, ctx.world_size, n)
    device = ctx.device
    local_b = cfg.batch // ctx.world_size
    n_batches = -(-n // cfg.batch)

    # Global batch k is images k*batch ... (k+1)*batch - 1 (sorted names). Rank r takes an
    # interleaved shard of it (DistributedSampler without shuffling); with several processes a short
    # last batch is padded with repeats of its first image so that every rank keeps in step.
    def global_indices(k: int) -> list[int]:
        idx = list(range(k * cfg.batch, min(n, (k + 1) * cfg.batch)))
        if ctx.distributed:
            idx += [idx[0]] * (cfg.batch - len(idx))
        return idx

    def local_indices(k: int) -> list[int]:
        idx = global_indices(k)
        if not ctx.distributed:
            return idx
        return [idx[i] for i in D.shard(cfg.batch, ctx, shuffle=False)][:local_b]

    total = n_batches * cfg.iters
    finetuned = finetuned.to(device).eval().requires_grad_(False)
    original = original.to(device).eval().requires_grad_(False)
    encoder = encoder.to(device).eval().requires_grad_(False)
    if vgg is not None and cfg.loss != "pixel":  # the chosen loss's network: LPIPS or VGG19
        vgg = vgg.to(device).eval()
    use_id = cfg.id_weight > 0
    if use_id:
        id_loss = id_loss.to(device).eval()

    run_config = {"stage": STAGE, "iters": cfg.iters, "batch": cfg.batch, "truncation": cfg.truncation, "lr": cfg.lr,
                  "id_weight": cfg.id_weight, "noise_weight": cfg.noise_weight, "reg_weight": cfg.reg_weight,
                  "size": cfg.size, "loss": cfg.loss, "seed": cfg.seed, "world_size": ctx.world_size,
                  "names": list(names), "images": _files_fingerprint(paths),
                  "finetuned": _model_fingerprint(finetuned), "original": _model_fingerprint(original),
                  "encoder": _model_fingerprint(encoder),
                  "vgg": _model_fingerprint(vgg) if cfg.loss == "vgg" else None,
                  "lpips": _model_fingerprint(vgg) if cfg.loss == "lpips" else None,
                  "id_loss": _model_fingerprint(id_loss) if use_id else None}
    loop = Loop(STAGE, out, ctx, total, run_config, cfg.save_every, progress, should_stop, notes=notes)

    def begin(k: int, saved: dict | None) -> dict:
        idx = local_indices(k)
        images = torch.stack([load_style_image(paths[i], IMAGE_SIZE) for i in idx]).to(device)
        targets = to_size(images, cfg.size)
        if saved is not None:
            z_e = saved["z_e"].to(device)
            z = saved["z"].to(device).requires_grad_(True)
            noises = [t.to(device).requires_grad_(True) for t in saved["noises"]]
        else:
            # Stage I: the exemplar's extrinsic code
            with torch.no_grad():
                z_e = encoder.encode(images).float()
            z = z_e.detach().clone().requires_grad_(True)
            per_image = []
            for i in idx:
                g = torch.Generator().manual_seed(derived_seed(cfg.seed, "noise", names[i]))
                per_image.append([torch.randn(s, generator=g) for s in finetuned.noise_shapes(1)])
            noises = [torch.cat([maps[l] for maps in per_image]).to(device).requires_grad_(True)
                      for l in range(len(per_image[0]))]
        opt = torch.optim.Adam([z] + noises, lr=cfg.lr)
        if saved is not None:
            opt.load_state_dict(saved["optimizer"])
        with torch.no_grad():
            target_feats = (vgg(targets) if cfg.loss == "vgg" else vgg.features(targets) if cfg.loss == "lpips"
                            else None)
        return {"names": [names[i] for i in idx], "n_global": len(global_indices(k)), "images": images,
                "targets": targets, "z_e": z_e, "z": z, "noises": noises, "opt": opt, "target_feats": target_feats}

    def iterate(b: dict, it: int) -> dict:
        """Stage II: optimise z and the noise maps against the style image through g'."""
        z, noises, opt, images = b["z"], b["noises"], b["opt"], b["images"]
        opt.param_groups[0]["lr"] = get_lr(it / cfg.iters, cfg.lr)
        with torch.enable_grad():
            image = finetuned(z, input_space="z", noise=noises)
            image = to_size(image, cfg.size)
            if cfg.loss == "vgg":
                image_terms = perceptual_distance(vgg(image), b["target_feats"])
            elif cfg.loss == "lpips":
                image_terms = vgg.distance(vgg.features(image), b["target_feats"])
            else:
                image_terms = pixel_loss(image, b["targets"])
            id_terms = (id_loss(image, images, per_sample=True) if use_id
                        else torch.zeros(len(b["names"]), device=device))
            reg_terms = code_regularizer(z)
            noise_terms = noise_regularize(noises, per_sample=True)
            per_image_loss = (image_terms + cfg.id_weight * id_terms + cfg.reg_weight * reg_terms
                              + cfg.noise_weight * noise_terms)
            loss = per_image_loss.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        noise_normalize_(noises, per_sample=True)
        sums = D.all_reduce_sum(torch.stack([t.detach().sum() for t in
                                             (per_image_loss, image_terms, id_terms, reg_terms, noise_terms)]), ctx)
        value, image_value, id_value, reg_value, noise_value = (float(v) / b["n_global"] for v in sums)
        if not math.isfinite(value):
            raise PasticheError(f"destylize: the loss became {value} at step {it + 1} of batch {batches.k + 1} "
                                f"({', '.join(b['names'])}); try a lower --lr")
        return {"loss": value, "image_loss": image_value, "id_loss": id_value, "reg_loss": reg_value,
                "noise_loss": noise_value, "batch": batches.k, "images": b["names"], "lr": opt.param_groups[0]["lr"]}

    def end(b: dict, k: int) -> None:
        """Keep the exemplar's colour rows, render the realistic face with the original g (optimised
        noise, truncation towards 0), then Stage III: embed it; collect every rank's codes (first
        occurrence wins over padding repeats)."""
        z, z_e, noises, images = b["z"], b["z_e"], b["noises"], b["images"]
        with torch.no_grad():
            z_hat = z.detach().clone()
            z_hat[:, COLOR_START:] = z_e[:, COLOR_START:]
            destylized = original(z_hat, input_space="z", truncation=cfg.truncation, truncation_latent=0.0,
                                  noise=noises)
            destylized = F.adaptive_avg_pool2d(destylized, IMAGE_SIZE)
            z_i = encoder.encode(destylized).float()
            z_i[:, COLOR_START:] = z_e[:, COLOR_START:]
            refined = F.adaptive_avg_pool2d(original(z_i, input_space="z", truncation=cfg.truncation,
                                                     truncation_latent=0.0, noise=noises), IMAGE_SIZE)
        mine = [(name, z_e[j:j + 1].detach().cpu().clone(), z_i[j:j + 1].detach().cpu().clone(),
                 [images[j].cpu(), destylized[j].cpu(), refined[j].cpu()]) for j, name in enumerate(b["names"])]
        finished = batches.done
        for rank_items in D.gather_objects(mine, ctx):
            for name, ze, zi, vis in rank_items:
                if name in finished["exstyle"]:
                    continue
                finished["exstyle"][name] = ze
                finished["instyle"][name] = zi
                if ctx.is_main:
                    _save_visualisation(out / VIS_DIR / f"{Path(name).stem}.png", vis)

    def snapshot(b: dict) -> dict:
        return {"z_e": b["z_e"].detach().cpu().clone(), "z": b["z"].detach().cpu().clone(),
                "noises": [t.detach().cpu().clone() for t in b["noises"]],
                "optimizer": detached_optimizer_state(b["opt"])}

    batches = Batches(cfg.iters, ctx, {"exstyle": {}, "instyle": {}}, begin, iterate, end, snapshot)
    keys = resume_keys(cfg)  # a batch in progress is split by rank: its processes must match too
    state = loop.load(resume, lambda st: keys + (["world_size"] if st["extra"]["ranks"] is not None else []))
    if state is not None:
        restore_rng(state["rng"])
        batches.restore(state["extra"])
        batches.done.update({k: dict(v) for k, v in batches.done.items()})
    loop.check_same_run({"g' weights": finetuned, "g weights": original, "encoder weights": encoder,
                         "step": batches.steps_done, "codes done": batches.done})

    def finish():
        outputs = [out / EXSTYLE_NPY, out / INSTYLE_NPY, out / EXSTYLE_SAFETENSORS, out / INSTYLE_SAFETENSORS]
        banks = {kind: StyleBank(names, [batches.done[kind][nm] for nm in names], space="z+")
                 for kind in ("exstyle", "instyle")}
        if ctx.is_main:
            banks["exstyle"].save_pair(outputs[0], outputs[2])
            banks["instyle"].save_pair(outputs[1], outputs[3])
        return outputs, banks

    return loop.run(batches.steps_done, batches.step, lambda: {"extra": batches.extra()}, finish)


__all__ = ["COLOR_START", "DestylizeConfig", "EXSTYLE_NPY", "EXSTYLE_SAFETENSORS", "INSTYLE_NPY",
           "INSTYLE_SAFETENSORS", "STAGE", "VIS_DIR", "code_regularizer", "destylize", "get_lr",
           "list_style_images", "pixel_loss", "to_size"]
