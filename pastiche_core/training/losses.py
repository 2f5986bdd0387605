"""Training losses and the pretrained networks behind them (VGG19, ArcFace IR-SE50).

Networks (none can be downloaded here; users usually have them already):

* **VGG19** (ImageNet, torchvision's ``vgg19-dcbb9e9d.pth``, keys ``features.N.weight/bias``):
  :class:`VGG19Features` rebuilds torchvision's ``features`` ``nn.Sequential`` (same indices,
  so the file loads by key) and returns the five activations DualStyleGAN's training scripts
  use: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (``features[0:2]``, ``[2:7]``, ``[7:12]``,
  ``[12:21]``, ``[21:30]``). Inputs are images in [-1, 1]; they are normalised with the
  ImageNet statistics mapped to that range (``mean * 2 - 1``, ``std * 2``), as the official
  ``model/vgg.py``. "VGG feature k" in the reference text is output k of this list.
* **IR-SE50** (``model_ir_se50.pth``): the ArcFace :class:`~pastiche_core.models.Backbone`,
  used by :class:`IDLoss`.

:func:`find_loss_network` looks for a file in the model folder(s) the caller gives, then in
the torch hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``);
a missing file is a :class:`MissingLossNetworkError` that names the file, what it is for and
where to put it, raised before any training step runs.

Losses (all on ``[B, C, H, W]`` feature maps or ``[B, 3, H, W]`` images in [-1, 1]):

* :func:`contextual_loss`: the contextual loss of Mechrez et al. with cosine distances, as the
  official ``FCX.contextual_loss(..., band_width=0.2, loss_type='cosine')``;
  ``per_sample=True`` centres each sample on its own target mean and returns one value per
  sample (equal to the official value for a batch of one).
* :func:`perceptual_l1`: weighted L1 between VGG features (the official perceptual loss).
* :func:`style_loss`: MSE between channel means of VGG features (the official style loss).
* :func:`perceptual_distance`: an LPIPS-shaped distance on VGG19 features without LPIPS's
  learned linear heads (unit-normalised channels, squared difference, spatial mean, summed
  over layers) -- our stand-in for LPIPS, whose weights are not available offline.
* :class:`IDLoss`: ``1 - cos`` between ArcFace embeddings of the central face crop.
* :func:`noise_regularize` / :func:`noise_normalize_`: the StyleGAN2 projector's noise terms.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import safe_torch_load
from ..errors import CheckpointError
from .inputs import IRSE50_FILE, VGG16_FILE, VGG19_FILE

# --------------------------------------------------------------------------------------------
# Finding the pretrained files
# --------------------------------------------------------------------------------------------

NETWORKS = {
    "vgg19": {
        "file": VGG19_FILE,
        "patterns": ("vgg19-*.pth", "vgg19.pth"),
        "what": "VGG19 ImageNet weights (torchvision's model-zoo file)",
        "origin": "torchvision downloads it as ~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth "
                  "(torchvision.models.vgg19(weights='IMAGENET1K_V1')); copy it from any machine that has it",
    },
    "vgg16": {
        "file": VGG16_FILE,
        "patterns": ("vgg16-*.pth", "vgg16.pth"),
        "what": "VGG16 ImageNet weights (torchvision's model-zoo file), the backbone of the LPIPS distance",
        "origin": "torchvision downloads it as ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth "
                  "(torchvision.models.vgg16(weights='IMAGENET1K_V1'), also what the lpips package loads); "
                  "copy it from any machine that has it",
    },
    "irse50": {
        "file": IRSE50_FILE,
        "patterns": (),
        "what": "ArcFace IR-SE50 face-recognition weights",
        "origin": "it ships with the official DualStyleGAN / pSp checkpoints (checkpoint/model_ir_se50.pth)",
    },
}


class MissingLossNetworkError(CheckpointError):
    """A pretrained network a training loss needs is not on disk."""


def hub_checkpoint_dir() -> Path:
    """torch's hub cache for model-zoo files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_loss_network(name: str, folders: Sequence[str | os.PathLike] = (), *, purpose: str = "training",
                      use_hub_cache: bool = True) -> Path:
    """Path of the pretrained file for network ``name`` (``"vgg19"``, ``"vgg16"`` or ``"irse50"``).

    Searches ``folders`` in order, then the torch hub cache. Raises
    :class:`MissingLossNetworkError` naming the file, ``purpose`` and the places to put it.
    """
    spec = NETWORKS[name]
    places = [Path(f) for f in folders if f is not None]
    if use_hub_cache:
        places.append(hub_checkpoint_dir())
    for folder in places:
        exact = folder / spec["file"]
        if exact.is_file():
            return exact
        for pattern in spec["patterns"]:
            hits = sorted(p for p in folder.glob(pattern) if p.is_file())
            if hits:
                return hits[0]
    where = " or ".join(f"'{p}'" for p in places) or "a model folder"
    raise MissingLossNetworkError(
        f"missing {spec['file']} ({spec['what']}), needed for {purpose}; put it in {where}. "
        f"Where to get it: {spec['origin']}")


# --------------------------------------------------------------------------------------------
# VGG19
# --------------------------------------------------------------------------------------------
# torchvision's VGG19 'features' config: conv widths, "M" = max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# (start, end) of the five slices of the official model/vgg.py: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
VGG_LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layers(cfg: tuple, n_modules: int) -> nn.Sequential:
    """The first ``n_modules`` modules of a torchvision VGG's ``features`` built from its layer
    list ``cfg`` (channels, "M" for a max-pool), with torchvision's module indices."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return nn.Sequential(*layers[:n_modules])


def vgg19_layers(n_modules: int = 37) -> nn.Sequential:
    """The first ``n_modules`` modules of torchvision's ``vgg19().features`` (same indices)."""
    return vgg_layers(VGG19_CFG, n_modules)


def vgg19_feature_shapes(n_slices: int = 5) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the ``features.N.*`` tensors the first ``n_slices`` slices use."""
    layers = vgg19_layers(VGG_SLICES[n_slices - 1][1])
    return {f"features.{k}": tuple(v.shape) for k, v in layers.state_dict().items()}


class VGG19Features(nn.Module):
    """Frozen VGG19 trunk -> list of the first ``n_slices`` official slice outputs.

    ``forward(x)`` takes images in [-1, 1] (``[B, 3, H, W]``). Parameters never require grad;
    gradients flow to the input. Build with :meth:`from_file` (torchvision's state dict) or load
    any state dict with ``features.N.weight/bias`` keys via :meth:`load_features`.
    """

    def __init__(self, n_slices: int = 5):
        super().__init__()
        if not 1 <= n_slices <= len(VGG_SLICES):
            raise ValueError(f"n_slices must be 1..{len(VGG_SLICES)}, got {n_slices}")
        self.n_slices = n_slices
        self.features = vgg19_layers(VGG_SLICES[n_slices - 1][1])
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 2 - 1
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 2
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # no dropout/BN here, but keep it plainly in eval mode

    @staticmethod
    def check_features(ours: dict, state: dict, path: str | os.PathLike) -> None:
        """Refuse a state dict without our ``features.N.*`` keys/shapes (works on TensorMeta too)."""
        missing = [k for k in ours if k not in state]
        wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in ours.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if missing or wrong:
            detail = (f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})" if missing
                      else f"tensors of the wrong shape: {'; '.join(wrong[:2])}")
            raise CheckpointError(f"'{path}' is not torchvision's VGG19 state dict ({VGG19_FILE}): {detail}")

    def load_features(self, state: dict, path: str | os.PathLike = "<state dict>") -> "VGG19Features":
        """Load ``features.N.*`` tensors (extra keys such as ``classifier.*`` are ignored)."""
        ours = self.state_dict()
        self.check_features(ours, state, path)
        self.load_state_dict({k: state[k].float() for k in ours}, strict=True)
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, n_slices: int = 5) -> "VGG19Features":
        from ..safe_pickle import TensorMeta

        def check(state):  # keys and shapes before the 548 MB of weights are read
            if not isinstance(state, dict) or not all(isinstance(v, (torch.Tensor, TensorMeta)) for v in state.values()):
                raise CheckpointError(f"'{path}' is not a bare state dict of tensors (expected torchvision's {VGG19_FILE})")
            with torch.device("meta"):
                ours = cls(n_slices).state_dict()
            cls.check_features(ours, state, path)

        state = safe_torch_load(path, f"torchvision's VGG19 state dict ({VGG19_FILE})", check, allow_namespace=False)
        return cls(n_slices).load_features(state, path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean.to(x)) / self.std.to(x)
        out = []
        for start, end in VGG_SLICES[: self.n_slices]:
            for i in range(start, end):
                h = self.features[i](h)
            out.append(h)
        return out


def load_vgg19(folders: Sequence[str | os.PathLike] = (), n_slices: int = 5, *, purpose: str = "training",
               use_hub_cache: bool = True) -> VGG19Features:
    """Find (see :func:`find_loss_network`) and load VGG19 -> :class:`VGG19Features`."""
    return VGG19Features.from_file(find_loss_network("vgg19", folders, purpose=purpose, use_hub_cache=use_hub_cache),
                                   n_slices)


# --------------------------------------------------------------------------------------------
# Feature losses
# --------------------------------------------------------------------------------------------
def _cosine_distance(x: torch.Tensor, y: torch.Tensor, per_sample: bool) -> torch.Tensor:
    """``1 - cos`` between every position of x and every position of y -> ``[B, HW_x, HW_y]``,
    after centring both on the target's channel mean (over the batch, or per sample)."""
    dims = (2, 3) if per_sample else (0, 2, 3)
    mu = y.mean(dim=dims, keepdim=True)
    xn = F.normalize(x - mu, p=2, dim=1).flatten(2)
    yn = F.normalize(y - mu, p=2, dim=1).flatten(2)
    return 1 - torch.bmm(xn.transpose(1, 2), yn)


def contextual_loss(x: torch.Tensor, y: torch.Tensor, band_width: float = 0.2, *,
                    per_sample: bool = False) -> torch.Tensor:
    """Contextual loss (cosine) between feature maps ``x`` (generated) and ``y`` (target).

    For every target feature j: relative distances ``d_ij / (min_j d_ij + 1e-5)``, similarities
    ``exp((1 - d~) / h)`` normalised over j, the best match over i, averaged over j:
    ``CX``; the loss is ``-log(CX + 1e-5)``. ``per_sample=False``: the official scalar (mean over
    the batch; the centring mean is taken over the whole batch). ``per_sample=True``: one value
    per sample, each centred on its own target (same as the official for a batch of one).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"contextual_loss needs two [B, C, H, W] maps of the same shape, got {list(x.shape)} "
                         f"and {list(y.shape)}")
    if band_width <= 0:
        raise ValueError(f"band_width must be positive, got {band_width}")
    dist = _cosine_distance(x, y, per_sample)
    rel = dist / (dist.min(dim=2, keepdim=True)[0] + 1e-5)
    w = torch.exp((1 - rel) / band_width)
    cx = w / w.sum(dim=2, keepdim=True)
    cx = cx.max(dim=1)[0].mean(dim=1)  # [B]
    per = -torch.log(cx + 1e-5)
    return per if per_sample else per.mean()


def perceptual_l1(fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor], layers: Sequence[int] = (1, 2),
                  weights: Sequence[float] = (0.5, 1.0)) -> torch.Tensor:
    """``sum_k w_k * L1(fx[k], fy[k])`` (mean absolute difference per layer; targets detached).

    Official uses: finetune_dualstylegan.py layers (1, 2) weights (0.5, 1); pretrain_dualstylegan.py
    layers (0, 1, 2) weights 0.5 each.
    """
    if len(layers) != len(weights):
        raise ValueError("layers and weights must have the same length")
    return sum(w * F.l1_loss(fx[k], fy[k].detach()) for k, w in zip(layers, weights))


def style_loss(fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor], layers: Sequence[int] = (1, 2)) -> torch.Tensor:
    """``sum_k MSE(mean_hw fx[k], mean_hw fy[k])``: matches per-channel feature means (the
    official style loss of finetune_dualstylegan.py, on VGG features 1 and 2)."""
    return sum(F.mse_loss(fx[k].mean(dim=(2, 3)), fy[k].detach().mean(dim=(2, 3))) for k in layers)


def perceptual_distance(fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor],
                        layers: Sequence[int] | None = None) -> torch.Tensor:
    """LPIPS-shaped distance per sample ``[B]``: for each layer, unit-normalise every position's
    channel vector, squared difference summed over channels, mean over positions; summed over
    layers. (LPIPS weights channels with learned heads, unavailable offline; here all are 1.)"""
    layers = range(len(fx)) if layers is None else layers
    total = 0
    for k in layers:
        a = fx[k] / (fx[k].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = fy[k].detach()
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (a - b).pow(2).sum(1).mean(dim=(1, 2))
    return total


# --------------------------------------------------------------------------------------------
# Identity loss
# --------------------------------------------------------------------------------------------
class IDLoss(nn.Module):
    """ArcFace identity loss: ``mean_b (1 - <e(x_b), e(y_b)>)`` with ``e`` the L2-normalised
    IR-SE50 embedding of the face crop rows 35:223, columns 32:220 of a 256 image, pooled to 112
    (the official ``criteria/id_loss.py``; other sizes are pooled to 256 first). The target
    embedding is detached. The network is frozen and kept in eval mode."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "IDLoss":
        return super().train(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        from ..models.irse import arcface_input

        if x.shape[-1] != 256 or x.shape[-2] != 256:
            x = F.adaptive_avg_pool2d(x, 256)
        return self.backbone(arcface_input(x))

    def forward(self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        ex, ey = self.embed(x), self.embed(y).detach()
        per = 1 - (ex * ey).sum(dim=1)
        return per if per_sample else per.mean()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "IDLoss":
        from ..checkpoints import _load_strict, _state_problems
        from ..models import Backbone
        from ..safe_pickle import TensorMeta

        def build():
            return Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)

        def check(state):  # keys and shapes before the weights are read
            if not isinstance(state, dict) or not all(isinstance(v, (torch.Tensor, TensorMeta)) for v in state.values()):
                raise CheckpointError(f"'{path}' is not a bare state dict of tensors (expected {IRSE50_FILE})")
            with torch.device("meta"):
                ours = {k: tuple(v.shape) for k, v in build().state_dict().items()}
            problems = _state_problems(ours, state)
            if problems:
                raise CheckpointError(f"'{path}' does not match the ArcFace IR-SE50 network ({IRSE50_FILE}): "
                                      + "; ".join(problems))

        state = safe_torch_load(path, f"the ArcFace IR-SE50 state dict ({IRSE50_FILE})", check, allow_namespace=False)
        model = build()
        _load_strict(model, state, Path(path), f"the ArcFace IR-SE50 network ({IRSE50_FILE})")
        return cls(model)


def load_id_loss(folders: Sequence[str | os.PathLike] = (), *, purpose: str = "training",
                 use_hub_cache: bool = True) -> IDLoss:
    """Find (see :func:`find_loss_network`) and load ``model_ir_se50.pth`` -> :class:`IDLoss`."""
    return IDLoss.from_file(find_loss_network("irse50", folders, purpose=purpose, use_hub_cache=use_hub_cache))


# --------------------------------------------------------------------------------------------
# Noise maps (StyleGAN2 projector)
# --------------------------------------------------------------------------------------------
def noise_regularize(noises: Sequence[torch.Tensor], per_sample: bool = False) -> torch.Tensor:
    """Spatial autocorrelation penalty of noise maps ``[B, 1, r, r]`` at every scale down to 8 px
    (rosinality's projector / the official refine_exstyle.py). ``per_sample=True`` returns
    ``[B]`` (each map's own penalty; equal to the official value for a batch of one)."""
    total = 0
    for noise in noises:
        size = noise.shape[2]
        dims = (1, 2, 3) if per_sample else None
        while True:
            a = noise * torch.roll(noise, shifts=1, dims=3)
            b = noise * torch.roll(noise, shifts=1, dims=2)
            total = total + (a.mean(dim=dims) if dims else a.mean()).pow(2) \
                + (b.mean(dim=dims) if dims else b.mean()).pow(2)
            if size <= 8:
                break
            noise = noise.reshape(-1, 1, size // 2, 2, size // 2, 2).mean(dim=(3, 5))
            size //= 2
    return total


@torch.no_grad()
def noise_normalize_(noises: Sequence[torch.Tensor], per_sample: bool = False) -> None:
    """Re-normalise noise maps in place to zero mean, unit (unbiased) std -- over the whole
    tensor (official) or per sample."""
    for noise in noises:
        if per_sample:
            mean = noise.mean(dim=(1, 2, 3), keepdim=True)
            std = noise.std(dim=(1, 2, 3), keepdim=True)
        else:
            mean, std = noise.mean(), noise.std()
        noise.sub_(mean).div_(std)


__all__ = ["IDLoss", "IRSE50_FILE", "MissingLossNetworkError", "NETWORKS", "VGG16_FILE", "VGG19Features", "VGG19_FILE",
           "VGG_LAYER_NAMES", "VGG_SLICES", "contextual_loss", "find_loss_network", "hub_checkpoint_dir",
           "load_id_loss", "load_vgg19", "noise_normalize_", "noise_regularize", "perceptual_distance",
           "perceptual_l1", "style_loss", "vgg19_feature_shapes", "vgg19_layers"]
