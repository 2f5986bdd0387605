"""Adaptive discriminator augmentation (ADA, Karras et al. 2020), geometric and non-leaking.

Our own implementation of what the official DualStyleGAN / rosinality StyleGAN2 training
scripts enable with ``--augment``:

* :class:`AdaptiveAugment` tunes the augmentation probability ``p`` from the overfitting
  heuristic ``r_t = E[sign(D(real))]``: every ``update_every`` calls of :meth:`~AdaptiveAugment.tune`
  it moves ``p`` by ``sign(r_t - target) * n / length`` (``n`` = logits seen since the last
  update, summed over all processes when ``torch.distributed`` is initialised), clamped to [0, 1].
* :func:`augment` applies, independently per sample and each with probability ``p``: x-flip,
  90-degree rotation, integer translation (up to 0.125 of the size), isotropic scaling
  (lognormal, std 0.2*ln 2), rotation (applied twice, before and after the anisotropic
  scaling, each with probability ``1 - sqrt(1 - p)``), anisotropic scaling (lognormal,
  std 0.2*ln 2) and fractional translation (normal, std 0.125 of the size). They are composed
  into one affine matrix per sample and applied with a single resampling with reflection
  padding; samples whose matrix is the identity are returned untouched. The distribution of
  every transform is invertible, so the augmentations do not leak into the generator. The
  result is differentiable w.r.t. the images, double backward (R1) included.

Differences from the official code:

* resampling: one bicubic ``grid_sample`` with ``padding_mode="reflection"`` (symmetric
  reflection about the image border) instead of 2x upsampling with the ``sym6`` wavelet
  filter, bilinear sampling, and filtered 2x downsampling after reflect-padding. Bicubic
  is exact for the pixel-aligned transforms (flips, 90-degree rotations, integer shifts),
  but it does no low-pass filtering when a sample is scaled down, so slightly more aliasing;
* no colour transforms (brightness, contrast, luma flip, hue, saturation) and no
  image-space filtering or noise: the geometric group only;
* the 90-degree rotations are enabled (DualStyleGAN's copy of ``non_leaking.py`` has them
  commented out), and the fractional translation draws x and y independently (as in
  Karras et al.) rather than one shared value;
* ``p`` moves by ``sign(r_t - target)``, which is 0 when ``r_t == target`` (as in Karras et
  al.), where rosinality's code lowers ``p`` in that case; ``r_t`` is the mean sign over all
  logits (``numel``) and the increment counts logits, i.e. images for a ``[B, 1]`` output;
* :func:`augment` returns only the images, not the matrices, and all randomness comes from
  one CPU ``torch.Generator`` so a run is reproducible and resumable; the statistics of
  :meth:`AdaptiveAugment.tune` stay on the logits' device and are only synchronised at an
  update (no ``.item()`` per step).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AdaptiveAugment", "augment", "TRANSFORMS"]

TRANSFORMS = ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac")
XINT_MAX = 0.125
SCALE_STD = 0.2 * math.log(2)
XFRAC_STD = 0.125


class AdaptiveAugment:
    """Tunes the ADA probability ``p`` from the discriminator's outputs on real images."""

    def __init__(self, target: float = 0.6, length: int = 500_000, update_every: int = 8, p: float = 0.0):
        if not -1.0 <= target <= 1.0:
            raise ValueError(f"target must be in [-1, 1] (a mean sign), got {target}")
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        if int(update_every) != update_every or update_every < 1:
            raise ValueError(f"update_every must be a positive integer, got {update_every}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.target = float(target)
        self.length = int(length)
        self.update_every = int(update_every)
        self.p = float(p)
        self.r_t = 0.0  # the last heuristic value, for logging
        self._calls = 0
        self._stats: torch.Tensor | None = None  # float64 [sign_sum, count] since the last update

    @torch.no_grad()
    def tune(self, real_pred: torch.Tensor) -> float:
        """Accumulate ``sign(real_pred)``; every ``update_every`` calls, update and return ``p``."""
        pred = real_pred.detach()
        stats = torch.stack([torch.sign(pred).to(torch.float64).sum(),
                             torch.tensor(float(pred.numel()), dtype=torch.float64, device=pred.device)])
        self._stats = stats if self._stats is None else self._stats.to(stats.device) + stats
        self._calls += 1
        if self._calls >= self.update_every:
            buf = self._stats
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(buf)
            sign_sum, count = buf.tolist()
            self._stats, self._calls = None, 0
            if count > 0:
                self.r_t = sign_sum / count
                step = math.copysign(1.0, self.r_t - self.target) if self.r_t != self.target else 0.0
                self.p = min(1.0, max(0.0, self.p + step * count / self.length))
        return self.p

    def state_dict(self) -> dict:
        sign_sum, count = (0.0, 0.0) if self._stats is None else self._stats.tolist()
        return {"p": self.p, "r_t": self.r_t, "target": self.target, "length": self.length,
                "update_every": self.update_every, "calls": self._calls, "sign_sum": float(sign_sum),
                "count": float(count)}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.r_t = float(state.get("r_t", 0.0))
        self.target = float(state.get("target", self.target))
        self.length = int(state.get("length", self.length))
        self.update_every = int(state.get("update_every", self.update_every))
        self._calls = int(state.get("calls", 0))
        sign_sum, count = float(state.get("sign_sum", 0.0)), float(state.get("count", 0.0))
        self._stats = None if self._calls == 0 and count == 0 else torch.tensor([sign_sum, count], dtype=torch.float64)


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64).repeat(cos.shape[0], 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


def sample_matrices(batch: int, height: int, width: int, p: float, generator: torch.Generator | None = None,
                    transforms: tuple[str, ...] = TRANSFORMS) -> torch.Tensor:
    """``[batch, 3, 3]`` float64 CPU sampling matrices in pixel units about the image centre.

    Output pixel ``q`` (centred coordinates) reads the input at ``G @ q``. Every transform's
    gate and parameters are always drawn (in a fixed order), so the amount of randomness used
    depends only on ``batch``; ``transforms`` (a subset of :data:`TRANSFORMS`) is for tests.
    """
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"unknown transforms {sorted(unknown)}; choose from {TRANSFORMS}")
    dev = generator.device if generator is not None else torch.device("cpu")

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev, dtype=torch.float64).cpu()

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=dev, dtype=torch.float64).cpu()

    p_rot = 1.0 - math.sqrt(max(0.0, 1.0 - p))
    g = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
    for name in TRANSFORMS:
        gate = rand(batch) < (p_rot if name.startswith("rotate_") else p)
        if name == "xflip":
            i = torch.floor(rand(batch) * 2)
            t = _scale(1 - 2 * i, torch.ones(batch, dtype=torch.float64))
        elif name == "rotate90":
            i = torch.floor(rand(batch) * 4).long()  # exact cos/sin of multiples of 90 degrees
            t = _rotate(torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)[i],
                        torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[i])
        elif name == "xint":
            s = (rand(batch, 2) * 2 - 1) * XINT_MAX
            t = _translate(torch.round(s[:, 0] * width), torch.round(s[:, 1] * height))
        elif name == "scale":
            s = torch.exp(randn(batch) * SCALE_STD)
            t = _scale(s, s)
        elif name == "aniso":
            s = torch.exp(randn(batch) * SCALE_STD)
            t = _scale(s, 1 / s)
        elif name == "xfrac":
            s = randn(batch, 2) * XFRAC_STD
            t = _translate(s[:, 0] * width, s[:, 1] * height)
        else:  # rotate_pre / rotate_post
            theta = (rand(batch) * 2 - 1) * math.pi
            t = _rotate(torch.cos(theta), torch.sin(theta))
        if name in transforms:
            g = torch.where(gate[:, None, None], g @ t, g)
    return g


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` [B, C, H, W] with the pixel-space sampling ``matrices`` [B, 3, 3]."""
    _, _, h, w = images.shape
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    # pixel coordinates about the centre -> grid_sample's [-1, 1] (align_corners=False)
    to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], dtype=torch.float64))
    to_pix = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0], dtype=torch.float64))
    theta = (to_norm @ matrices.to(torch.float64) @ to_pix)[:, :2, :]
    grid = F.affine_grid(theta.to(device=images.device, dtype=work.dtype), list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return out.to(images.dtype)


def _augment(images: torch.Tensor, p: float, generator: torch.Generator | None,
             transforms: tuple[str, ...]) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"augment expects images of shape [B, C, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"augment expects floating-point images, got {images.dtype}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p == 0.0:
        return images
    b, _, h, w = images.shape
    g = sample_matrices(b, h, w, p, generator, transforms)
    moved = ~(g == torch.eye(3, dtype=torch.float64)).flatten(1).all(1)
    idx = moved.nonzero().flatten()
    if idx.numel() == 0:
        return images
    if idx.numel() == b:
        return warp(images, g)
    dev_idx = idx.to(images.device)
    return images.index_copy(0, dev_idx, warp(images.index_select(0, dev_idx), g[idx]))


def augment(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Non-leaking geometric ADA: each transform applied to each sample with probability ``p``.

    Differentiable (double backward included), keeps shape, dtype and device; all randomness
    comes from ``generator`` (a CPU ``torch.Generator``; the global RNG when ``None``). With
    ``p == 0`` the input tensor itself is returned and no randomness is drawn.
    """
    return _augment(images, p, generator, TRANSFORMS)
