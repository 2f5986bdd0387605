"""The ICP extrinsic-style sampler of DualStyleGAN (``checkpoint/<style>/sampler.pt``).

``sampler.pt`` holds two small MLPs (the paper's "implicit conditional point" / GLANN-style
samplers), trained by ``train_sampler.py`` to map Gaussian noise ``e ~ N(0, I_128)`` onto the
style bank's extrinsic z+ codes:

* ``structure``: noise -> rows 0-6 of a z+ code (``7 * 512 = 3584`` values);
* ``color``: noise -> rows 7-17 (``11 * 512 = 5632`` values).

Each net is ``lin1`` (Linear 128->128, no bias) -> ``bn1`` (BatchNorm1d) -> ReLU -> ``lin2`` ->
``bn2`` -> ReLU -> ``lin_out`` (Linear 128->yn, no bias). The module names here reproduce the
official state-dict keys, so ``ICPNet.load_state_dict(ckpt["color"], strict=True)`` works, and
the :class:`StyleSampler` state-dict keys are ``structure.<key>`` / ``color.<key>`` (the
fixture-recipe convention of ``manifests/sampler.json``).

BatchNorm mode (the important detail)
-------------------------------------
The official ``generate.py`` never calls ``.eval()`` on these nets, so its BatchNorm layers run
in *training mode*: every batch is normalised with its **own** mean and biased variance (so a
sample depends on the other samples of its batch, and a batch of one is impossible), and each
call also moves the running statistics by momentum 0.1 -- even under ``torch.no_grad()``.
:meth:`StyleSampler.sample` reproduces the official *outputs* by default
(``train_mode_bn=True``) but does **not** touch the loaded running statistics unless
``update_running_stats=True``: mutating a loaded model as a side effect of sampling would make
eval-mode results drift with the number of earlier calls, and the updated statistics are never
saved by ``generate.py`` anyway (it exits after one batch). ``train_mode_bn=False`` uses the
stored running statistics (ordinary inference; works for a batch of one and makes samples
independent of each other -- but it is *not* what ``generate.py`` produces).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import json

import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write
from ..weight_files import CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION, MODEL_KEY, read_safetensors, safe_torch_load
from ..errors import CheckpointError, InputError, short

SAMPLER_EXPECTED = ("a DualStyleGAN sampler.pt (a dict {'color': state dict, 'structure': state dict} "
                    "written by train_sampler.py)")
STYLE_DIM = 512          # every official generator's (and so every bank's) code width
N_STRUCTURE_ROWS = 7     # rows 0..6 (res_index 6) are structure
MAX_LATENT = 18          # a 1024px generator's n_latent
MAX_WIDTH = 1024         # noise / hidden widths (official: 128)
_NET_KEYS = ("lin1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
             "bn1.num_batches_tracked", "lin2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean",
             "bn2.running_var", "bn2.num_batches_tracked", "lin_out.weight")


class ICPNet(nn.Module):
    """One ICP sampler MLP (the official ``_netT(xn, yn)``): noise ``[B, xn]`` -> ``[B, yn]``.

    ``forward(noise)`` follows ordinary module semantics (``self.training`` decides the
    BatchNorm mode and training mode updates the running statistics, exactly like the official
    net); :meth:`run` lets the caller choose both explicitly.
    """

    def __init__(self, noise_dim: int = 128, out_dim: int = 5632, hidden: int = 128):
        super().__init__()
        self.noise_dim, self.out_dim, self.hidden = noise_dim, out_dim, hidden
        self.lin1 = nn.Linear(noise_dim, hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.lin2 = nn.Linear(hidden, hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.lin_out = nn.Linear(hidden, out_dim, bias=False)

    @staticmethod
    def _norm(bn: nn.BatchNorm1d, x: torch.Tensor, batch_stats: bool, update: bool) -> torch.Tensor:
        if not batch_stats:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        if update:
            # exactly what nn.BatchNorm1d does in training mode with momentum 0.1
            bn.num_batches_tracked.add_(1)
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
        # batch statistics without touching the buffers (same normalisation, no side effect)
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    def run(self, noise: torch.Tensor, batch_stats: bool, update_running_stats: bool = False) -> torch.Tensor:
        """``batch_stats``: normalise with the batch's own statistics (official ``generate.py``)
        instead of the running ones; ``update_running_stats`` (only with batch statistics): also
        update the running buffers by momentum, as a training-mode ``nn.BatchNorm1d`` does."""
        if noise.ndim != 2 or noise.shape[1] != self.noise_dim:
            raise InputError(f"sampler noise must be [B, {self.noise_dim}], got {list(noise.shape)}")
        if batch_stats and noise.shape[0] < 2:
            raise InputError("training-mode BatchNorm (batch statistics, as the official generate.py) needs a "
                             f"batch of at least 2 samples, got {noise.shape[0]}; sample a larger batch or use "
                             "train_mode_bn=False (running statistics)")
        x = F.relu(self._norm(self.bn1, self.lin1(noise), batch_stats, update_running_stats))
        x = F.relu(self._norm(self.bn2, self.lin2(x), batch_stats, update_running_stats))
        return self.lin_out(x)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.run(noise, batch_stats=self.training, update_running_stats=self.training)


class StyleSampler(nn.Module):
    """Both ICP nets of ``sampler.pt``: random extrinsic z+ codes ``[B, 18, 512]`` for a style.

    Rows ``0..n_structure-1`` come from ``self.structure``, the remaining ``n_color`` rows from
    ``self.color``. The codes live in the same z+ space as the style bank entries: map them to
    w+ with ``DualStyleGAN.map_exstyle`` before use (as ``generate.py`` does).
    """

    def __init__(self, n_structure: int = 7, n_color: int = 11, style_dim: int = 512, noise_dim: int = 128,
                 hidden: int = 128):
        super().__init__()
        self.n_structure, self.n_color, self.style_dim, self.noise_dim = n_structure, n_color, style_dim, noise_dim
        self.structure = ICPNet(noise_dim, n_structure * style_dim, hidden)
        self.color = ICPNet(noise_dim, n_color * style_dim, hidden)

    @property
    def n_latent(self) -> int:
        return self.n_structure + self.n_color

    @property
    def config(self) -> dict:
        return {"n_structure": self.n_structure, "n_color": self.n_color, "style_dim": self.style_dim,
                "noise_dim": self.noise_dim, "hidden": self.structure.hidden}

    # -- loading -----------------------------------------------------------------------------
    @staticmethod
    def check_state_dicts(color: Mapping, structure: Mapping, path: str | os.PathLike = "<state dict>",
                          style_dim=512) -> dict:
        """The config the two nets describe, refused unless it is an official sampler family
        (style_dim 512, 7 structure rows, 1..11 colour rows, noise/hidden widths up to 1024) and
        every tensor has the shape of that config. Works on
        :class:`~pastiche_core.safe_pickle.TensorMeta` too, so a file is refused before its data is read."""
        from ..safe_pickle import TensorMeta

        where = f"'{path}'"
        if isinstance(style_dim, bool) or style_dim != STYLE_DIM:
            raise CheckpointError(f"{where}: sampler style_dim is {short(repr(style_dim), 40)}, expected {STYLE_DIM}")
        dims = {}
        for part, state in (("structure", structure), ("color", color)):
            if not isinstance(state, Mapping) or not all(isinstance(v, (torch.Tensor, TensorMeta))
                                                         for v in state.values()):
                raise CheckpointError(f"{where}: '{part}' is not a state dict of tensors; expected {SAMPLER_EXPECTED}")
            missing = [k for k in _NET_KEYS if k not in state]
            unexpected = [k for k in state if k not in _NET_KEYS]
            if missing or unexpected:
                problems = []
                if missing:
                    problems.append(f"missing keys {', '.join(missing)}")
                if unexpected:
                    problems.append(f"unexpected keys {short(', '.join(map(str, list(unexpected)[:5])), 200)}")
                raise CheckpointError(f"{where}: '{part}' is not an ICP sampler net ({'; '.join(problems)}); "
                                      f"expected {SAMPLER_EXPECTED}")
            lin1, out = state["lin1.weight"], state["lin_out.weight"]
            if lin1.ndim != 2 or out.ndim != 2 or out.shape[0] % style_dim:
                raise CheckpointError(f"{where}: '{part}' has lin1.weight {list(lin1.shape)} and lin_out.weight "
                                      f"{list(out.shape)}; expected [hidden, noise] and [rows*{style_dim}, hidden]")
            dims[part] = (out.shape[0] // style_dim, lin1.shape[1], lin1.shape[0])
        (n_s, noise_s, hid_s), (n_c, noise_c, hid_c) = dims["structure"], dims["color"]
        if (noise_s, hid_s) != (noise_c, hid_c):
            raise CheckpointError(f"{where}: the structure and color nets disagree on noise/hidden size "
                                  f"({noise_s}/{hid_s} vs {noise_c}/{hid_c})")
        if n_s != N_STRUCTURE_ROWS or not 1 <= n_c <= MAX_LATENT - N_STRUCTURE_ROWS \
                or not 1 <= noise_s <= MAX_WIDTH or not 1 <= hid_s <= MAX_WIDTH:
            raise CheckpointError(f"{where}: a sampler of {n_s} structure rows, {n_c} colour rows, noise {noise_s}, "
                                  f"hidden {hid_s} is not an official one ({N_STRUCTURE_ROWS} structure rows, "
                                  f"1..{MAX_LATENT - N_STRUCTURE_ROWS} colour rows, widths up to {MAX_WIDTH})")
        config = {"n_structure": n_s, "n_color": n_c, "style_dim": style_dim, "noise_dim": noise_s, "hidden": hid_s}
        with torch.device("meta"):
            model = StyleSampler(n_s, n_c, style_dim, noise_s, hid_s)
        for part, state in (("structure", structure), ("color", color)):
            ours = getattr(model, part).state_dict()
            wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in ours.items()
                     if tuple(state[k].shape) != tuple(v.shape)]
            if wrong:
                raise CheckpointError(f"{where}: '{part}' has tensors of the wrong shape: {'; '.join(wrong[:3])}")
        return config

    @classmethod
    def from_state_dicts(cls, color: Mapping[str, torch.Tensor], structure: Mapping[str, torch.Tensor],
                         path: str | os.PathLike = "<state dict>", style_dim: int = 512) -> "StyleSampler":
        """Build from the two official state dicts (validated; loaded with ``strict=True``)."""
        config = cls.check_state_dicts(color, structure, path, style_dim)
        model = cls(**config)
        for part, state in (("structure", structure), ("color", color)):
            net: ICPNet = getattr(model, part)
            if not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"'{path}': '{part}' is not a state dict of tensors")
            ours = net.state_dict()
            net.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)
        return model

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> "StyleSampler":
        """Load the official ``sampler.pt`` (bounded weights-only read, shapes checked first), eval mode, no grad."""
        path = Path(path)
        if path.suffix == ".safetensors":
            model = load_sampler_safetensors(path)
            return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model
        def check(ckpt):
            if not isinstance(ckpt, Mapping):
                raise CheckpointError(f"'{path}' holds a {type(ckpt).__name__}, not a dict; expected {SAMPLER_EXPECTED}")
            absent = [k for k in ("color", "structure") if k not in ckpt]
            if absent:
                has = short(", ".join(map(str, list(ckpt)[:8])), 200) or "nothing"
                raise CheckpointError(f"'{path}' has no {' / '.join(repr(a) for a in absent)} entry (it has: {has}); "
                                      f"expected {SAMPLER_EXPECTED}")
            cls.check_state_dicts(ckpt["color"], ckpt["structure"], path)

        ckpt = safe_torch_load(path, SAMPLER_EXPECTED, check, allow_namespace=False)
        model = cls.from_state_dicts(ckpt["color"], ckpt["structure"], path)
        model.eval().requires_grad_(False)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    def official_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"color": ..., "structure": ...}``: what ``torch.save`` wrote into ``sampler.pt``."""
        return {"color": self.color.state_dict(), "structure": self.structure.state_dict()}

    # -- sampling ----------------------------------------------------------------------------
    def _param(self) -> torch.Tensor:
        return self.structure.lin1.weight

    def draw_noise(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise_structure, noise_color)``, each ``[batch, 128]``, drawn in the official order.

        Drawn in float32 on the generator's device (CPU for ``generator=None``, i.e. torch's
        global CPU generator, like ``generate.py``'s ``torch.randn(B, 128).to(device)``), then
        moved to the sampler's device/dtype.
        """
        dev = generator.device if generator is not None else torch.device("cpu")
        p = self._param()
        n_s = torch.randn(batch, self.noise_dim, generator=generator, device=dev, dtype=torch.float32)
        n_c = torch.randn(batch, self.noise_dim, generator=generator, device=dev, dtype=torch.float32)
        return n_s.to(p), n_c.to(p)

    def _fixed_part(self, value, part: str, rows: range, codes: torch.Tensor) -> torch.Tensor:
        """Apply a ``fix_structure``/``fix_color`` argument to ``codes`` ``[B, rows, D]``."""
        if value is None or value is False:
            return codes
        if value is True:  # generate.py --fix_<part>: the whole batch takes sample 0's part
            return codes[0:1].expand_as(codes).clone()
        if not isinstance(value, torch.Tensor):
            raise InputError(f"fix_{part} must be None, a bool or a z+ code tensor, got {type(value).__name__}")
        n, d, b = len(rows), self.style_dim, codes.shape[0]
        t = value.to(codes)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim == 3 and t.shape[1:] == (self.n_latent, d):
            t = t[:, rows.start:rows.stop]
        if t.ndim != 3 or t.shape[1:] != (n, d) or t.shape[0] not in (1, b):
            raise InputError(f"fix_{part} code must be [{n}, {d}], [1 or {b}, {n}, {d}] or a full z+ code "
                             f"[1 or {b}, {self.n_latent}, {d}], got {list(value.shape)}")
        return t.expand(b, n, d).clone()

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator | None = None, fix_structure=None, fix_color=None,
               train_mode_bn: bool = True, *, update_running_stats: bool = False,
               noise_structure: torch.Tensor | None = None, noise_color: torch.Tensor | None = None) -> torch.Tensor:
        """Random extrinsic z+ codes ``[batch, 18, 512]`` (structure rows 0-6, colour rows 7-17).

        batch: number of codes (>= 2 with ``train_mode_bn=True``).
        generator: torch generator for the noise (None: torch's global CPU generator). The
            structure noise is drawn before the colour noise, as in ``generate.py``; to reproduce
            a ``generate.py`` run also draw its content code ``torch.randn(batch, 512)`` from the
            same generator *before* calling this.
        fix_structure / fix_color: ``True`` = ``generate.py --fix_structure / --fix_color``: every
            sample gets sample 0's structure / colour rows (the nets still run on the whole
            batch, so sample 0 is the same as without the flag). A tensor keeps the part fixed to
            a given code instead: ``[7, 512]``, ``[1 or B, 7, 512]`` (``[.., 11, 512]`` for colour)
            or a full z+ code ``[1 or B, 18, 512]`` whose matching rows are used. The noise is
            drawn either way, so the other part is the same as in an unfixed call.
        train_mode_bn: True (default) = BatchNorm with the batch's own statistics, exactly the
            official ``generate.py`` output; False = eval mode (stored running statistics).
        update_running_stats: with ``train_mode_bn``, also update the running mean/var (momentum
            0.1) and ``num_batches_tracked`` like the official training-mode call does. Off by
            default so that sampling never mutates the loaded weights (see the module docstring).
        noise_structure / noise_color: explicit ``[batch, 128]`` noise instead of drawing it.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be a positive integer, got {batch!r}")
        if update_running_stats and not train_mode_bn:
            raise InputError("update_running_stats=True needs train_mode_bn=True (eval mode never updates them)")
        p = self._param()
        if noise_structure is None or noise_color is None:
            drawn = self.draw_noise(batch, generator)
            noise_structure = drawn[0] if noise_structure is None else noise_structure
            noise_color = drawn[1] if noise_color is None else noise_color
        for name, noise in (("noise_structure", noise_structure), ("noise_color", noise_color)):
            if tuple(noise.shape) != (batch, self.noise_dim):
                raise InputError(f"{name} must be [{batch}, {self.noise_dim}], got {list(noise.shape)}")
        d = self.style_dim
        structure = self.structure.run(noise_structure.to(p), train_mode_bn, update_running_stats)
        color = self.color.run(noise_color.to(p), train_mode_bn, update_running_stats)
        structure = structure.reshape(batch, self.n_structure, d)
        color = color.reshape(batch, self.n_color, d)
        structure = self._fixed_part(fix_structure, "structure", range(0, self.n_structure), structure)
        color = self._fixed_part(fix_color, "color", range(self.n_structure, self.n_latent), color)
        return torch.cat([structure, color], dim=1)

    def forward(self, batch: int, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        return self.sample(batch, generator, **kwargs)

__all__ = ["ICPNet", "SAMPLER_EXPECTED", "StyleSampler"]


SAMPLER_MODEL = "style_sampler"  # metadata model name of our sampler .safetensors


def save_sampler_safetensors(path: str | os.PathLike, model: "StyleSampler",
                             twin: str | os.PathLike | None = None) -> None:
    """Both nets as ``structure.<key>`` / ``color.<key>`` tensors with the config in metadata.

    ``twin``: also write the official ``{"color": ..., "structure": ...}`` ``.pt`` there, as a
    pair that cannot disagree (:func:`pastiche_core.atomic.write_pair`)."""
    from safetensors.torch import save_file

    tensors = {k: (v.float() if v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in model.state_dict().items()}
    meta = {FORMAT_KEY: FORMAT_VERSION, MODEL_KEY: SAMPLER_MODEL, CONFIG_KEY: json.dumps(model.config)}
    if twin is not None:
        from ..atomic import write_pair

        def official(net) -> dict:  # float32 CPU, as train_sampler.py writes it
            return {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
                    for k, v in net.state_dict().items()}
        obj = {"color": official(model.color), "structure": official(model.structure)}
        write_pair(twin, lambda tmp: torch.save(obj, tmp), path,
                   lambda tmp, more: save_file(tensors, str(tmp), metadata={**meta, **more}))
        return
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_sampler_safetensors(path: str | os.PathLike) -> "StyleSampler":
    """Read :func:`save_sampler_safetensors` output -> :class:`StyleSampler` (eval mode, no grad).
    The config metadata and every shape are checked before the tensors are read."""
    from ..safe_pickle import parse_json_meta

    path = Path(path)
    where = f"'{path}'"
    found = {}

    def split(tensors):
        return {p: {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + ".")} for p in ("color", "structure")}

    def check(metas, meta):
        if meta.get(MODEL_KEY) != SAMPLER_MODEL:
            raise CheckpointError(f"{where} is not a Pastiche style sampler (metadata {MODEL_KEY!r} is "
                                  f"{short(repr(meta.get(MODEL_KEY)), 60)})")
        config = parse_json_meta(meta, CONFIG_KEY, {}, dict, where)
        style_dim = config.get("style_dim", STYLE_DIM)
        if isinstance(style_dim, bool) or not isinstance(style_dim, int):
            raise CheckpointError(f"{where}: sampler config style_dim is {short(repr(style_dim), 40)}, expected {STYLE_DIM}")
        parts = split(metas)
        StyleSampler.check_state_dicts(parts["color"], parts["structure"], path, style_dim=style_dim)
        found["style_dim"] = style_dim

    tensors, meta = read_safetensors(path, "a Pastiche style-sampler .safetensors", check)
    parts = split(tensors)
    model = StyleSampler.from_state_dicts(parts["color"], parts["structure"], path, style_dim=found["style_dim"])
    return model.eval().requires_grad_(False)
