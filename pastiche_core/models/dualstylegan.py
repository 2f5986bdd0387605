"""DualStyleGAN: a StyleGAN2 intrinsic path plus an extrinsic style path (Yang et al. 2022).

The extrinsic code (the exemplar's w+) drives

* **structure** layers (``res[0..res_index]``): ModRes blocks (:class:`AdaResBlock`) that add a
  weighted residual to the coarse feature maps, styled by ``T_s(exstyle)`` (``self.style``);
* **colour** layers (``res[res_index+1..n-1]``): affine maps ``T_c`` (:class:`~.ops.EqualLinear`)
  whose output is blended with the intrinsic w in W space.

Per-layer weights ``interp_weights[l]`` in [0, 1] set how much each layer follows the exemplar.
Keys match the official ``generator.pt`` ``g_ema`` state dict.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import EqualConv2d, EqualLinear, FusedLeakyReLU, set_fast_path
from .stylegan2 import Generator, NoiseSpec, map_rows, mapping_network

# style_transfer.py / generate.py default --weight: structure 0.75 on layers 0-6, colour 1 on 7-17.
DEFAULT_INTERP_WEIGHTS = (0.75,) * 7 + (1.0,) * 11


def layer_weights(structure: float = 0.75, color: float = 1.0, n_latent: int = 18,
                  n_structure: int = 7) -> list[float]:
    """The paper's two-knob control as a per-layer vector: ``[structure]*7 + [color]*(n-7)``."""
    return [float(structure)] * n_structure + [float(color)] * (n_latent - n_structure)


class ConvLayer(nn.Sequential):
    """3x3 equalised conv without bias, then bias + leaky ReLU (keys ``0.weight``, ``1.bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(EqualConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         FusedLeakyReLU(out_channels))


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm (no affine, eps 1e-5) then ``gamma * x + beta``, ``[gamma | beta] = style(s)``
    with a plain ``nn.Linear(D, 2C)`` (key ``style``)."""

    def __init__(self, channels: int, style_dim: int = 512):
        super().__init__()
        self.style = nn.Linear(style_dim, channels * 2)
        with torch.no_grad():
            self.style.bias[:channels] = 1
            self.style.bias[channels:] = 0

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(style)[:, :, None, None].chunk(2, 1)
        return gamma * F.instance_norm(x, eps=1e-5) + beta


class AdaResBlock(nn.Module):
    """ModRes: ``x + w * conv2(AdaIN2(conv(AdaIN1(x, s)), s))``; ``x`` unchanged when w == 0."""

    def __init__(self, channels: int, style_dim: int = 512):
        super().__init__()
        self.conv = ConvLayer(channels, channels)
        self.conv2 = ConvLayer(channels, channels)
        self.conv[0].winograd = self.conv2[0].winograd = True
        self.norm = AdaptiveInstanceNorm(channels, style_dim)
        self.norm2 = AdaptiveInstanceNorm(channels, style_dim)
        with torch.no_grad():  # residual ~0 at initialisation
            self.conv[0].weight.mul_(0.01)
            self.conv2[0].weight.mul_(0.01)

    def forward(self, x: torch.Tensor, style: torch.Tensor, weight) -> torch.Tensor:
        """x ``[B, C, H, W]``, style ``[B, D]``, weight a float or ``[B]`` tensor."""
        if isinstance(weight, (int, float)):
            if weight == 0:
                return x
        elif not torch.any(weight != 0):
            return x
        else:
            weight = weight.to(x)[:, None, None, None]
        out = self.conv2(self.norm2(self.conv(self.norm(x, style)), style))
        return x + weight * out


class DualStyleGAN(nn.Module):
    """``DualStyleGAN(size, style_dim=512, n_mlp=8, channel_multiplier=2, res_index=6)``.

    Structure layers are latent entries ``0..res_index`` (rounded down to even), colour layers
    the rest (``7..17`` at 1024, ``7..13`` at 256).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 res_index: int = 6):
        super().__init__()
        if n_mlp <= 6:
            raise ValueError("DualStyleGAN needs n_mlp > 6 (its extrinsic mapping has n_mlp - 6 layers)")
        self.res_index = res_index // 2 * 2
        self.style = mapping_network(n_mlp - 6, style_dim)
        self.generator = Generator(size, style_dim, n_mlp, channel_multiplier)
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier = channel_multiplier
        self.n_latent = self.generator.n_latent
        self.res = nn.ModuleList([AdaResBlock(self.generator.channels[4], style_dim)])
        for i in range(3, self.generator.log_size + 1):
            ch = self.generator.channels[2 ** i]
            if i < 3 + self.res_index // 2:
                self.res += [AdaResBlock(ch, style_dim), AdaResBlock(ch, style_dim)]
            else:
                self.res += [self._color_transform(style_dim), self._color_transform(style_dim)]
        self.res.append(self._color_transform(style_dim))  # the last ToRGB's entry
        assert len(self.res) == self.n_latent, (len(self.res), self.n_latent)

    @staticmethod
    def _color_transform(style_dim: int) -> EqualLinear:
        """T_c for one colour layer, initialised to ~identity (the equalised scale is 1/sqrt(D))."""
        lin = EqualLinear(style_dim, style_dim)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(style_dim) * style_dim ** 0.5 + torch.randn(style_dim, style_dim) * 0.01)
            lin.bias.zero_()
        return lin

    @property
    def config(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "res_index": self.res_index}

    @property
    def structure_layers(self) -> range:
        return range(0, self.res_index + 1)

    @property
    def color_layers(self) -> range:
        return range(self.res_index + 1, self.n_latent)

    def use_fast_path(self, enabled: bool = True, channels_last: bool | None = None,
                      upsample: str | None = None, winograd: bool | None = None,
                      bands: bool | None = None) -> "DualStyleGAN":
        """See :meth:`Generator.use_fast_path`."""
        set_fast_path(self, enabled)
        self.generator.use_fast_path(enabled, channels_last, upsample, winograd, bands)
        if winograd is not None:
            for block in self.res:
                if isinstance(block, AdaResBlock):
                    block.conv[0].winograd = block.conv2[0].winograd = bool(winograd)
        return self

    # -- codes -------------------------------------------------------------------------------
    def map_exstyle(self, exstyle_z: torch.Tensor) -> torch.Tensor:
        """Extrinsic z+ ``[B, n, D]`` (a style-bank entry) -> w+ through the intrinsic mapping
        network, row by row (what style_transfer.py does before calling the generator)."""
        return self.generator.mapping(exstyle_z)

    def _interp_weights(self, weights, batch: int, like: torch.Tensor) -> list:
        """Per-layer weights as a list of floats, or of ``[B]`` tensors for per-sample weights."""
        if isinstance(weights, torch.Tensor):
            if weights.ndim == 1:
                weights = weights.tolist()
            elif weights.ndim == 2 and weights.shape[0] in (1, batch):
                if weights.shape[1] < self.n_latent:
                    raise ValueError(f"interp_weights needs at least {self.n_latent} values per sample, got {weights.shape[1]}")
                w = weights.to(like).expand(batch, -1)
                return [w[:, i] for i in range(self.n_latent)]
            else:
                raise ValueError(f"interp_weights tensor must be [n] or [B, n], got {list(weights.shape)}")
        weights = [float(w) for w in weights]
        if len(weights) < self.n_latent:
            raise ValueError(f"interp_weights needs at least {self.n_latent} values for a {self.size}px model, got {len(weights)}")
        return weights[: self.n_latent]

    def extrinsic_styles(self, exstyle: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """w or w+ extrinsic code -> (structure styles ``T_s(exstyle)``, colour styles), both ``[B, n, D]``."""
        n, d = self.n_latent, self.style_dim
        if exstyle.ndim == 2 and exstyle.shape[1] == d:
            exstyle = exstyle.unsqueeze(1).repeat(1, n, 1)
        elif not (exstyle.ndim == 3 and exstyle.shape[1:] == (n, d)):
            raise ValueError(f"extrinsic code must be [B, {d}] or [B, {n}, {d}] for a {self.size}px model, "
                             f"got {list(exstyle.shape)}")
        if exstyle.shape[0] not in (1, batch):
            raise ValueError(f"extrinsic code batch {exstyle.shape[0]} does not match intrinsic batch {batch}")
        # one mapping per distinct code: a shared code ([1, n, D]) is mapped once for the batch
        return map_rows(self.style, exstyle).expand(batch, -1, -1), exstyle.expand(batch, -1, -1)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, instyle: torch.Tensor | Sequence[torch.Tensor], exstyle: torch.Tensor | None = None, *,
                input_space: str = "z", exstyle_space: str = "w",
                interp_weights: Sequence[float] | torch.Tensor = DEFAULT_INTERP_WEIGHTS,
                truncation: float = 1.0, truncation_latent: torch.Tensor | float | None = None,
                inject_index: int | None = None, fuse_index: int | None = None, use_res: bool = True,
                noise: NoiseSpec = "stored", generator: torch.Generator | None = None,
                return_latents: bool = False, return_feat: bool = False):
        """Stylise.

        instyle: intrinsic code ``[B, D]`` (z/w) or ``[B, n, D]`` (z+/w+), or two for mixing
            (see :meth:`Generator.make_latent`); ``input_space`` ``"z"`` or ``"w"``.
        exstyle: extrinsic code ``[1 or B, D]`` or ``[1 or B, n, D]``, in W (``exstyle_space="w"``,
            the official call) or Z (``"z"``: mapped here, e.g. a raw style-bank entry). Not
            truncated. Ignored when ``use_res`` is False.
        interp_weights: >= n per-layer weights (``[n]`` or per sample ``[B, n]``);
            :func:`layer_weights` builds them from a structure and a colour weight.
        fuse_index: the extrinsic path acts on layers ``0..fuse_index`` (default: all).
        noise / generator: see :meth:`Generator.resolve_noise`.

        Returns the image ``[B, 3, size, size]`` (raw, not clamped), or ``(image, latent)``
        with ``return_latents``, or ``(features [B, C, r, r], rgb skip [B, 3, r, r])`` right
        after the last structure block with ``return_feat``.
        """
        g = self.generator
        latent = g.make_latent(instyle, input_space, truncation, truncation_latent, inject_index)
        batch = latent.shape[0]
        noises = g.resolve_noise(noise, batch, latent, generator)
        fuse = self.n_latent if fuse_index is None else fuse_index
        if use_res:
            if exstyle is None:
                raise ValueError("use_res=True needs an extrinsic code (exstyle)")
            if exstyle_space == "z":
                exstyle = self.map_exstyle(exstyle)
            elif exstyle_space != "w":
                raise ValueError(f"exstyle_space must be 'z' or 'w', got {exstyle_space!r}")
            resstyles, adastyles = self.extrinsic_styles(exstyle.to(latent), batch)
            weights = self._interp_weights(interp_weights, batch, latent)

        def rows_of(rows: slice) -> dict:
            """The per-sample inputs restricted to the samples ``rows``."""
            part = {"latent": latent[rows], "noises": [n if n.shape[0] == 1 else n[rows] for n in noises]}
            if use_res:
                part.update(resstyles=resstyles[rows], adastyles=adastyles[rows],
                            weights=[w[rows] if isinstance(w, torch.Tensor) else w for w in weights])
            return part

        def blended(l: int, p: dict) -> torch.Tensor:
            """Colour layer l: ``w * T_c(exstyle) + (1 - w) * instyle`` in W space."""
            if use_res and fuse >= l:
                w = p["weights"][l]
                if isinstance(w, torch.Tensor):
                    w = w[:, None]
                return w * self.res[l](p["adastyles"][:, l]) + (1 - w) * p["latent"][:, l]
            return p["latent"][:, l]

        def structure_block(j: int, out: torch.Tensor, skip: torch.Tensor, p: dict):
            """Block j (output side ``2 ** (j + 3)``) on structure layers: up conv and conv, each
            followed by its ModRes block, then ToRGB."""
            i, lat, nz = 2 * j + 1, p["latent"], p["noises"]
            conv_up, conv = g.convs[2 * j], g.convs[2 * j + 1]
            out = conv_up(g.to_block_format(out, j), lat[:, i], nz[i])
            if fuse >= i:
                out = self.res[i](out, p["resstyles"][:, i], p["weights"][i])
            out = conv(out, lat[:, i + 1], nz[i + 1])
            if fuse >= i + 1:
                out = self.res[i + 1](out, p["resstyles"][:, i + 1], p["weights"][i + 1])
            rgb_style = blended(i + 2, p) if use_res and i >= self.res_index - 1 else lat[:, i + 2]
            return out, g.to_rgbs[j](out, rgb_style, skip)

        def block_styles(j: int, p: dict) -> tuple:
            """(up, conv, rgb) styles of a block without ModRes blocks."""
            i, lat = 2 * j + 1, p["latent"]
            if not use_res:
                return lat[:, i], lat[:, i + 1], lat[:, i + 2]
            return blended(i, p), blended(i + 1, p), blended(i + 2, p) if i >= self.res_index - 1 else lat[:, i + 2]

        def run_blocks(first: int, last: int, out: torch.Tensor, skip: torch.Tensor, p: dict):
            """Blocks [first, last): the structure blocks here, the rest by the generator (which
            runs the large ones in bands)."""
            j = first
            while j < last and use_res and 2 * j + 1 <= self.res_index:
                out, skip = structure_block(j, out, skip, p)
                j += 1
            if j < last:
                out, skip = g.run_blocks(j, out, skip, lambda k: block_styles(k, p),
                                         lambda k: (p["noises"][2 * k + 1], p["noises"][2 * k + 2]), last)
            return out, skip

        n_blocks = len(g.to_rgbs)
        whole = rows_of(slice(None))
        out = g.start(batch)
        out = g.conv1(out, latent[:, 0], noises[0])
        if use_res and fuse > 0:
            out = self.res[0](out, resstyles[:, 0], weights[0])
        skip = g.to_rgb1(out, latent[:, 1])
        feat_block = next((j for j in range(n_blocks) if 2 * j + 3 > self.res_index), None)
        if return_feat and feat_block is not None:  # features right after the last structure block
            return run_blocks(0, feat_block + 1, out, skip, whole)
        split = g.per_sample_from(batch, latent.device) if not return_feat else n_blocks
        out, skip = run_blocks(0, split, out, skip, whole)
        if split < n_blocks:  # the large blocks one sample at a time (see Generator.per_sample_from)
            images = []
            for b in range(batch):
                images.append(run_blocks(split, n_blocks, out[b: b + 1], skip[b: b + 1], rows_of(slice(b, b + 1)))[1])
            skip = torch.cat(images)
        return (skip, latent) if return_latents else skip
