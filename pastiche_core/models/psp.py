"""pSp encoder (pixel2style2pixel): a face image -> an 18x512 StyleGAN code (z+ or w+).

:class:`GradualStyleEncoder` is an IR-SE50 backbone with a small feature pyramid and one
"map2style" head per generator layer. :class:`PSPEncoder` is the whole official ``pSp``
module -- ``encoder`` + the StyleGAN2 ``decoder`` it was trained against + ``latent_avg`` --
so that ``PSPEncoder.load_state_dict(ckpt["state_dict"], strict=True)`` takes the official
``encoder.pt`` / ``encoder_wplus.pt`` as they are.

The two released files have the same architecture and differ only in the space of their
codes (see :meth:`PSPEncoder.from_checkpoint` for how that is decided):

* ``encoder.pt`` (DualStyleGAN's, **z+**): each of the 18 rows is a z that the decoder's
  mapping network turns into the w of that layer. ``style_transfer.py``'s default.
* ``encoder_wplus.pt`` (the original pSp FFHQ inversion, **w+**): the rows are used as w
  directly. ``style_transfer.py --wplus``.

Images are ``[B, 3, H, W]`` in [-1, 1] (RGB, ``(x/255 - 0.5) / 0.5``); the encoder works at
256x256 and average-pools other (square) sizes to 256 first, as the official scripts do.

Cost: ~72 GMAC per 256x256 image (about a third in the IR-SE50 body, the rest in the 18
heads, mostly the eleven fine heads' first convolution at 64x64), all in plain convolutions;
the encoder runs in ``channels_last`` (faster oneDNN/cuDNN kernels, same results to float32
rounding). The 1024 decoder costs more than the encoder on CPU.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weight_files import safe_torch_load
from ..errors import CheckpointError, InputError, short
from .irse import make_body, make_input_layer
from .ops import EqualLinear
from .stylegan2 import Generator, NoiseSpec

SPACES = ("z+", "w+")
ENCODER_INPUT_SIZE = 256
# Body units whose outputs feed the pyramid: c1 (128 ch, 64x64), c2 (256 ch, 32x32), c3 (512 ch, 16x16).
PYRAMID_TAPS = (6, 20, 23)
COARSE_STYLES, MIDDLE_STYLES = 3, 7  # heads [0, 3) read c3, [3, 7) read p2, [7, n) read p1


def n_styles_for(output_size: int) -> int:
    """Latent rows of a generator of this size: ``2 * log2(size) - 2`` (18 at 1024)."""
    return 2 * int(math.log2(output_size)) - 2


class GradualStyleBlock(nn.Module):
    """One map2style head: ``log2(spatial)`` stride-2 3x3 convs (with bias, each followed by
    ``LeakyReLU(0.01)``) down to 1x1, then an equalised linear 512 -> 512.
    Keys ``convs.{0,2,4,...}.weight/bias``, ``linear.weight/bias``."""

    def __init__(self, channels: int = 512, spatial: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels, lr_mul=1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 512, s, s]`` -> ``[B, 512]``."""
        return self.linear(self.convs(x).reshape(-1, self.channels))


def upsample_add(x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """Top-down pyramid step: bilinear-resize ``x`` to ``lateral``'s size (align_corners=True) and add."""
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class GradualStyleEncoder(nn.Module):
    """pSp's encoder: ``[B, input_nc, 256, 256]`` -> codes ``[B, n_styles, 512]`` (before ``latent_avg``).

    IR-SE50 body; codes 0-2 from ``c3`` (16x16), 3-6 from ``p2 = up(c3) + latlayer1(c2)``
    (32x32), 7.. from ``p1 = up(p2) + latlayer2(c1)`` (64x64).
    """

    def __init__(self, n_styles: int = 18, input_nc: int = 3, num_layers: int = 50):
        super().__init__()
        if num_layers != 50:
            raise ValueError("the pSp encoder is defined on the 50-layer IR-SE backbone only")
        if n_styles <= MIDDLE_STYLES:
            raise ValueError(f"n_styles must be > {MIDDLE_STYLES}, got {n_styles}")
        self.n_styles, self.input_nc = n_styles, input_nc
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers)
        spatial = [16] * COARSE_STYLES + [32] * (MIDDLE_STYLES - COARSE_STYLES) + [64] * (n_styles - MIDDLE_STYLES)
        self.styles = nn.ModuleList(GradualStyleBlock(512, s) for s in spatial)
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features ``c1, c2, c3`` (after body units 6, 20, 23)."""
        feats = []
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in PYRAMID_TAPS:
                feats.append(x)
        c1, c2, c3 = feats
        return c1, c2, c3

    def forward(self, x: torch.Tensor, return_features: bool = False):
        c1, c2, c3 = self.pyramid(x)
        codes = [head(c3) for head in self.styles[:COARSE_STYLES]]
        p2 = upsample_add(c3, self.latlayer1(c2))
        codes += [head(p2) for head in self.styles[COARSE_STYLES:MIDDLE_STYLES]]
        p1 = upsample_add(p2, self.latlayer2(c1))
        codes += [head(p1) for head in self.styles[MIDDLE_STYLES:]]
        codes = torch.stack(codes, 1)
        if return_features:
            return codes, {"c1": c1, "c2": c2, "c3": c3}
        return codes


def normalize_space(space: str) -> str:
    s = str(space).strip().lower().replace("plus", "+").replace("_", "").replace("-", "")
    if s not in SPACES:
        raise ValueError(f"space must be 'z+' or 'w+', got {space!r}")
    return s


_W_NAME = re.compile(r"(^|[^a-z0-9])w[_\- ]?(\+|plus)")
_Z_NAME = re.compile(r"(^|[^a-z0-9])z[_\- ]?(\+|plus)")


def infer_space(path: str | os.PathLike | None, opts: Mapping) -> tuple[str, str]:
    """Guess the code space of a pSp checkpoint when the caller does not say; returns
    ``(space, reason)``. The two released files have identical tensors, so only names and
    options can tell them apart. In order:

    1. a file name containing ``wplus`` / ``w_plus`` / ``w+`` (``encoder_wplus.pt``) -> w+,
       ``zplus`` / ``z_plus`` / ``z+`` -> z+;
    2. ``psp_ffhq_encode*`` (the original pSp release, which is ``encoder_wplus.pt``) -> w+;
    3. ``opts`` without ``output_size`` -> w+: original pSp checkpoints lack that key, while
       DualStyleGAN's z+ ``encoder.pt`` must have it (``destylize.py`` reads it unguarded);
    4. otherwise z+ (``encoder.pt``, the official scripts' default).
    """
    name = Path(path).name.lower() if path is not None else ""
    if _W_NAME.search(name):
        return "w+", f"file name {Path(path).name!r} says w+"
    if _Z_NAME.search(name):
        return "z+", f"file name {Path(path).name!r} says z+"
    if name.startswith("psp_ffhq_encode"):
        return "w+", "original pSp FFHQ release name"
    if "output_size" not in opts:
        return "w+", "opts lack output_size (an original pSp checkpoint)"
    return "z+", "default (DualStyleGAN encoder.pt)"


def _decoder_size_from_keys(state_dict: Mapping) -> int | None:
    """Generator size from the number of ``decoder.noises.noise_i`` buffers (2*log2(size) - 3)."""
    n = sum(1 for k in state_dict if k.startswith("decoder.noises.noise_"))
    if n < 3 or (n + 3) % 2 or n > 40:
        return None
    return 2 ** ((n + 3) // 2)


def _is_tensor(v) -> bool:
    from ..safe_pickle import TensorMeta

    return isinstance(v, (torch.Tensor, TensorMeta))


_OPT_VALUES = (str, int, float, bool, type(None))


def _check_opts(opts: Mapping, where: str) -> None:
    """pSp options are a flat dict of plain values (``vars(argparse.Namespace)``); anything else
    (nested containers, tensors) is not an options dict and would only end up in messages."""
    for k, v in opts.items():
        if not isinstance(k, str) or not (isinstance(v, _OPT_VALUES) or
                                          (isinstance(v, (list, tuple)) and len(v) <= 64
                                           and all(isinstance(x, _OPT_VALUES) for x in v))):
            raise CheckpointError(f"{where}: opts entry {short(repr(k), 60)} is a {type(v).__name__}, not a plain "
                                  f"option value (str, number, bool, None or a short list of them)")
        if isinstance(v, str) and len(v) > 4096:
            raise CheckpointError(f"{where}: opts entry {short(repr(k), 60)} is a {len(v):,}-character string")


def _sample(keys, k: int = 4) -> str:
    keys = sorted(map(str, keys))
    more = f", ... ({len(keys)} in all)" if len(keys) > k else ""
    return short(", ".join(repr(x) for x in keys[:k]), 240) + more


class PSPEncoder(nn.Module):
    """The official ``pSp`` module: ``encoder`` (:class:`GradualStyleEncoder`), ``decoder``
    (StyleGAN2 :class:`~.stylegan2.Generator` of ``output_size``) and ``latent_avg``
    (``[n_styles, 512]``, not part of the state dict, as in the official checkpoints).

    Build it with :meth:`from_checkpoint`. Main calls:

    * :meth:`encode` ``x -> codes [B, 18, 512]`` in :attr:`space` (``"z+"`` or ``"w+"``);
    * :meth:`to_wplus` ``codes -> w+`` (mapping network row by row for z+; identity for w+);
    * :meth:`reconstruct` ``codes -> image [B, 3, 1024, 1024]`` (stored noise, no truncation);
    * ``forward(x) -> (reconstruction, codes)``, the official
      ``pSp(x, randomize_noise=False, return_latents=True, z_plus_latent=(space == 'z+'),
      return_z_plus_latent=(space == 'z+'), resize=False)``.

    Gradients are not disabled here: wrap inference in ``torch.inference_mode()``.
    """

    def __init__(self, output_size: int = 1024, space: str = "z+", start_from_latent_avg: bool = True,
                 input_nc: int = 3, latent_avg: torch.Tensor | None = None, opts: Mapping | None = None):
        super().__init__()
        self.space = normalize_space(space)
        self.space_reason = "constructor argument"
        self.output_size = int(output_size)
        self.n_styles = n_styles_for(self.output_size)
        self.start_from_latent_avg = bool(start_from_latent_avg)
        self.input_nc = int(input_nc)
        self.opts = dict(opts or {})
        self.encoder = GradualStyleEncoder(self.n_styles, self.input_nc)
        self.decoder = Generator(self.output_size, 512, 8, 2)
        # Not in the state dict (the official checkpoints keep it beside it), but follows .to().
        self.register_buffer("latent_avg", None, persistent=False)
        if latent_avg is not None:
            self.set_latent_avg(latent_avg)

    # -- configuration -----------------------------------------------------------------------
    def set_latent_avg(self, latent_avg: torch.Tensor) -> None:
        """Average code added to the encoder output: ``[n, 512]``, ``[1, n, 512]`` or ``[512]``."""
        la = latent_avg.detach()
        if la.ndim == 0 or la.shape[-1] != 512 or la.ndim > 3 or (la.ndim >= 2 and la.shape[-2] not in (1, self.n_styles)) \
                or (la.ndim == 3 and la.shape[0] != 1):
            raise ValueError(f"latent_avg must be [{self.n_styles}, 512] (or [512]), got {list(la.shape)}")
        la = la.reshape(-1, 512) if la.ndim == 3 else la
        ref = next(self.encoder.parameters())
        device = ref.device if ref.device.type != "meta" else la.device
        dtype = ref.dtype if ref.dtype.is_floating_point else la.dtype
        self.latent_avg = la.to(device=device, dtype=dtype)

    @property
    def config(self) -> dict:
        return {"output_size": self.output_size, "space": self.space, "n_styles": self.n_styles,
                "start_from_latent_avg": self.start_from_latent_avg, "input_nc": self.input_nc}

    def extra_repr(self) -> str:
        return f"space={self.space!r}, output_size={self.output_size}, n_styles={self.n_styles}"

    # -- inputs ------------------------------------------------------------------------------
    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``[B, C, H, W]`` images in [-1, 1] and average-pool them to 256x256 (a no-op
        at 256; an exact 4x4 box mean for the official 1024 crops). Moves to the model's
        device and dtype."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"encoder input must be a torch.Tensor [B, {self.input_nc}, H, W], got {type(x).__name__}")
        if x.ndim != 4:
            raise InputError(f"encoder input must be a batch of images [B, {self.input_nc}, H, W], "
                             f"got shape {list(x.shape)}" + (" (add a batch dimension with x[None])" if x.ndim == 3 else ""))
        b, c, h, w = x.shape
        if c != self.input_nc:
            hint = " (channels-last image? use x.permute(0, 3, 1, 2))" if x.shape[-1] == self.input_nc else ""
            raise InputError(f"encoder input must have {self.input_nc} channels (RGB) in dim 1, "
                             f"got shape {list(x.shape)}{hint}")
        if b == 0 or h == 0 or w == 0:
            raise InputError(f"encoder input is empty: shape {list(x.shape)}")
        if h != w:
            raise InputError(f"encoder input must be a square aligned face crop, got {h}x{w} (H x W); "
                             "align/crop the face first")
        if not x.is_floating_point():
            raise InputError(f"encoder input must be a float tensor in [-1, 1], got dtype {x.dtype} "
                             "(convert with (x / 255 - 0.5) / 0.5)")
        ref = self.encoder.input_layer[0].weight
        x = x.to(device=ref.device, dtype=ref.dtype)
        if (h, w) != (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE):
            x = F.adaptive_avg_pool2d(x, ENCODER_INPUT_SIZE)
        return x.contiguous(memory_format=torch.channels_last)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or tuple(codes.shape[1:]) != (self.n_styles, 512):
            shape = list(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InputError(f"{self.space} codes must be [B, {self.n_styles}, 512], got {shape}")
        return codes

    # -- the three steps ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_features: bool = False):
        """Images ``[B, C, H, W]`` in [-1, 1] -> codes ``[B, n_styles, 512]`` in :attr:`space`
        (``latent_avg`` added when the checkpoint trained with ``start_from_latent_avg``).
        With ``return_features`` also ``{"c1", "c2", "c3"}`` backbone features."""
        out = self.encoder(self.prepare_input(x), return_features=return_features)
        codes, feats = out if return_features else (out, None)
        if self.start_from_latent_avg:
            if self.latent_avg is None:
                raise CheckpointError("this pSp encoder adds latent_avg but has none (set_latent_avg)")
            codes = codes + self.latent_avg
        return (codes, feats) if return_features else codes

    def to_wplus(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes in :attr:`space` -> w+ ``[B, n_styles, 512]`` (z+ rows go through the decoder's
        mapping network one by one; w+ is returned as is)."""
        codes = self.check_codes(codes)
        return self.decoder.mapping(codes) if self.space == "z+" else codes

    def reconstruct(self, codes: torch.Tensor, noise: NoiseSpec = "stored",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes in :attr:`space` -> the decoder's image ``[B, 3, size, size]`` (raw, not clamped;
        no truncation). ``noise="stored"`` is the official ``randomize_noise=False``."""
        return self._decode(codes, noise, generator)[0]

    def _decode(self, codes, noise, generator):
        codes = self.check_codes(codes)
        return self.decoder(codes, input_space="z" if self.space == "z+" else "w", noise=noise,
                            generator=generator, return_latents=True)

    def forward(self, x: torch.Tensor, *, resize: bool = False, noise: NoiseSpec = "stored",
                generator: torch.Generator | None = None, return_wplus: bool = False):
        """Images -> ``(reconstruction, codes)``.

        reconstruction: ``[B, 3, size, size]`` (``[B, 3, 256, 256]`` average-pooled when
        ``resize``, the official ``face_pool``); codes: :meth:`encode`'s codes, or with
        ``return_wplus`` the w+ the decoder used (official ``return_z_plus_latent=False``).
        Official defaults differ: there ``resize=True`` and ``randomize_noise=True``.
        """
        codes = self.encode(x)
        image, wplus = self._decode(codes, noise, generator)
        if resize:
            image = F.adaptive_avg_pool2d(image, ENCODER_INPUT_SIZE)
        return image, (wplus if return_wplus else codes)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, space: str | None = None) -> "PSPEncoder":
        """Load an official pSp checkpoint (``encoder.pt``, ``encoder_wplus.pt``): a dict
        ``{"state_dict", "opts", "latent_avg"}`` read with ``weights_only=True``.

        space: ``"z+"`` / ``"w+"``; None infers it (:func:`infer_space`: the file name, then
        whether ``opts`` has ``output_size``, else z+). The tensors cannot tell the two files
        apart, so pass it explicitly for renamed files. The reason is kept in
        ``model.space_reason``.
        ``opts`` used: ``encoder_type`` (must be GradualStyleEncoder), ``input_nc`` (3),
        ``output_size`` (absent: the decoder size found in the state dict, else 1024, as
        ``style_transfer.py``), ``start_from_latent_avg`` (absent: False, pSp's default).
        Returns the model in eval mode with frozen parameters on ``device``/``dtype``
        (default: CPU, float32 as stored). Raises :class:`CheckpointError` naming the file.
        """
        what = "a pSp encoder checkpoint (encoder.pt / encoder_wplus.pt: a dict with state_dict, opts, latent_avg)"
        where = f"'{path}'"

        def parts(ckpt):
            if not isinstance(ckpt, Mapping):
                raise CheckpointError(f"{where} holds a {type(ckpt).__name__}, not {what}")
            if "state_dict" not in ckpt:
                keys = list(ckpt.keys())
                if "g_ema" in ckpt or any(str(k).startswith(("style.", "convs.", "to_rgbs.")) for k in keys):
                    kind = "a StyleGAN2/DualStyleGAN generator checkpoint"
                elif any(str(k).startswith("output_layer.") for k in keys):
                    kind = "the ArcFace IR-SE50 ID-loss model (model_ir_se50.pth)"
                elif "color" in ckpt and "structure" in ckpt:
                    kind = "a DualStyleGAN sampler (sampler.pt)"
                else:
                    kind = f"a dict with keys {_sample(map(str, keys))}"
                raise CheckpointError(f"{where} is {kind}, not {what}")
            opts = ckpt.get("opts", None)
            if not isinstance(opts, Mapping):
                raise CheckpointError(f"{where}: 'opts' must be a dict of pSp options, got "
                                      f"{type(opts).__name__}; expected {what}")
            _check_opts(opts, where)
            state_dict = ckpt["state_dict"]
            if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) and _is_tensor(v)
                                                              for k, v in state_dict.items()):
                raise CheckpointError(f"{where}: 'state_dict' must map names to tensors; expected {what}")
            return state_dict, opts, ckpt.get("latent_avg")

        def check(ckpt):  # everything but the weights' values, before they are read
            state_dict, opts, latent_avg = parts(ckpt)
            cls.from_state_dict(state_dict, opts, latent_avg, space=space, source=path, _check_only=True)

        state_dict, opts, latent_avg = parts(safe_torch_load(path, what, check))
        return cls.from_state_dict(state_dict, opts, latent_avg, space=space, source=path,
                                   device=device, dtype=dtype)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], opts: Mapping | None = None,
                        latent_avg: torch.Tensor | None = None, *, space: str | None = None,
                        source: str | os.PathLike | None = None, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, _check_only: bool = False) -> "PSPEncoder":
        """Build from the parts of a checkpoint (see :meth:`from_checkpoint`). ``state_dict``
        tensors are used as storage directly (no copy) when device and dtype already match.
        ``_check_only``: validate (also :class:`~pastiche_core.safe_pickle.TensorMeta`) and return None."""
        opts = dict(opts or {})
        where = f"'{source}'" if source is not None else "pSp state dict"
        encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
        if encoder_type != "GradualStyleEncoder":
            raise CheckpointError(f"{where}: encoder_type {encoder_type!r} is not supported "
                                  "(only GradualStyleEncoder, used by both released encoders)")
        if not any(k.startswith("encoder.") for k in state_dict):
            raise CheckpointError(f"{where} has no 'encoder.*' weights: not a pSp encoder "
                                  f"(keys like {_sample(state_dict)})")
        output_size = opts.get("output_size") or _decoder_size_from_keys(state_dict) or 1024
        input_nc = opts.get("input_nc", 3)
        if isinstance(output_size, bool) or not isinstance(output_size, int) or not 16 <= output_size <= 1024 \
                or output_size & (output_size - 1):
            raise CheckpointError(f"{where}: opts output_size must be a power of two in 16..1024 (official: 1024), "
                                  f"got {short(repr(output_size), 40)}")
        if isinstance(input_nc, bool) or not isinstance(input_nc, int) or not 1 <= input_nc <= 16:
            raise CheckpointError(f"{where}: opts input_nc must be an int in 1..16 (official: 3), "
                                  f"got {short(repr(input_nc), 40)}")
        start_avg = bool(opts.get("start_from_latent_avg", False))
        if space is None:
            space, reason = infer_space(source, opts)
        else:
            space, reason = normalize_space(space), "argument"

        with torch.device("meta"):
            model = cls(output_size, space, start_avg, input_nc, opts=opts)
        model.space_reason = reason
        expected = model.state_dict()
        missing = expected.keys() - state_dict.keys()
        unexpected = state_dict.keys() - expected.keys()
        desc = f"a pSp GradualStyleEncoder (IR-SE50, {model.n_styles} styles, input_nc {input_nc}) + StyleGAN2 {output_size} decoder"
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys ({_sample(missing)})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys ({_sample(unexpected)})")
            raise CheckpointError(f"{where}: state_dict does not match {desc}: " + "; ".join(parts))
        bad = [f"{k}: {list(state_dict[k].shape)} != {list(v.shape)}" for k, v in expected.items()
               if tuple(state_dict[k].shape) != tuple(v.shape)]
        if bad:
            raise CheckpointError(f"{where}: state_dict does not match {desc}: {len(bad)} tensors have the "
                                  f"wrong shape ({'; '.join(bad[:3])})")
        if _check_only:
            if latent_avg is not None:
                if not _is_tensor(latent_avg):
                    raise CheckpointError(f"{where}: latent_avg must be a tensor, got {type(latent_avg).__name__}")
                shape = tuple(latent_avg.shape)
                if shape not in ((512,), (1, 512), (model.n_styles, 512), (1, 1, 512), (1, model.n_styles, 512)):
                    raise CheckpointError(f"{where}: latent_avg must be [{model.n_styles}, 512] (or [512]), "
                                          f"got {list(shape)}")
            return None
        model.load_state_dict(state_dict, strict=True, assign=True)

        if latent_avg is not None:
            if not isinstance(latent_avg, torch.Tensor):
                raise CheckpointError(f"{where}: latent_avg must be a tensor, got {type(latent_avg).__name__}")
            try:
                model.set_latent_avg(latent_avg.float())
            except ValueError as exc:
                raise CheckpointError(f"{where}: {exc}") from None
        elif start_avg:
            raise CheckpointError(f"{where}: opts start_from_latent_avg is True but the file has no "
                                  "latent_avg (expected a [n_styles, 512] tensor beside state_dict)")
        model.to(device=device, dtype=dtype)
        model.encoder.to(memory_format=torch.channels_last)
        model.eval().requires_grad_(False)
        return model
