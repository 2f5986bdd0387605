"""Faithful exemplar styles: optimise an extrinsic code so that DualStyleGAN reproduces the
exemplar (what the official ``refine_exstyle.py`` does for the bank codes).

The fast mode (the pSp z+ encoder, destylization stage I) gives a code in one forward pass;
this refines it against the generator: structure rows (0-6 of an official model) and colour rows are optimised
with their own learning rates (official defaults: structure 0.005, colour 0.1 as in the
README's example) for a step budget, rendering with all layer weights 1 and the stored noise.
The loss is an L1 image loss at two scales; when VGG19 weights are given (``perceptual``, a
callable ``(image, target) -> loss``, e.g.
:func:`pastiche_core.training.refine_stage.vgg_refine_loss`) it is added, as the official
LPIPS/contextual losses.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import InputError, PasticheError
from .training.options import LR_PRESETS  # torch-free: the one table of both refinements



class Interrupted(PasticheError):
    """The caller asked to stop (ComfyUI's interrupt, Ctrl-C): the best code so far is kept."""


def image_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 at 256 px and at 64 px (the coarse term keeps colour layout from drifting)."""
    return F.l1_loss(image, target) + F.l1_loss(F.avg_pool2d(image, 4), F.avg_pool2d(target, 4))


def refine_exstyle(generator, instyle_zplus: torch.Tensor, exstyle_zplus: torch.Tensor, target: torch.Tensor, *,
                   steps: int = 100, lr_structure: float = LR_PRESETS["readme"][1],
                   lr_color: float = LR_PRESETS["readme"][0],
                   perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   progress: Callable[[int, int, float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Optimise ``exstyle_zplus`` ``[1, n, 512]`` so that ``generator(instyle, map(exstyle))``
    matches ``target`` ``[1, 3, H, W]`` in [-1, 1] (compared at 256 px).

    instyle_zplus: the exemplar's own intrinsic z+ code (its encoder code, the "destylized" face).
    Returns the refined z+ code (detached, float32) and the loss of every step.
    ``progress(step, steps, loss)`` is called after each step; ``should_stop()`` ends early
    (the best code so far is returned).
    """
    if steps < 1:
        raise InputError(f"the refinement needs at least one step, got {steps}")
    p = next(generator.parameters())
    target = F.adaptive_avg_pool2d(target.to(p), 256)
    instyle = instyle_zplus.to(p).detach()
    n_structure = len(generator.structure_layers)
    structure = exstyle_zplus[:, :n_structure].to(p).detach().clone().requires_grad_(True)
    color = exstyle_zplus[:, n_structure:].to(p).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [structure], "lr": lr_structure}, {"params": [color], "lr": lr_color}])
    weights = [1.0] * generator.n_latent
    losses: list[float] = []
    best, best_loss = torch.cat([structure, color], 1).detach().clone(), float("inf")
    was_training = generator.training
    generator.eval()
    try:
        with torch.enable_grad():
            for step in range(steps):
                if should_stop is not None and should_stop():
                    break
                code = torch.cat([structure, color], 1)
                image = generator(instyle, generator.map_exstyle(code), input_space="z", interp_weights=weights,
                                  noise="stored")
                image = F.adaptive_avg_pool2d(image, 256)
                loss = image_loss(image, target)
                if perceptual is not None:
                    loss = loss + perceptual(image, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                value = float(loss.detach())
                if value < best_loss:
                    best, best_loss = code.detach().clone(), value
                opt.step()
                losses.append(value)
                if progress is not None:
                    progress(step + 1, steps, value)
    finally:
        generator.train(was_training)
    return best.float(), losses
