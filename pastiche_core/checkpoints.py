"""Safe loading of the official checkpoint files, config inference, and our safetensors format.

Official ``.pt`` files are walked by :mod:`pastiche_core.safe_pickle` (caps on size, depth and
object count; only tensors and plain containers) and then read with
``torch.load(weights_only=True)`` (torch >= 2.10) or our own zip/legacy reader. Generator
configs must be an official family and every shape must match that config before a weight
is read or a model allocated. Our own format is safetensors with the model config in the
metadata (``pastiche.model`` and ``pastiche.config``); its header is checked the same way.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import CheckpointError, short
from .weight_files import (CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION, MODEL_KEY, _describe, first_existing,  # noqa: F401
                           read_safetensors, safe_torch_load)



# --------------------------------------------------------------------------------------------
# Config inference
# --------------------------------------------------------------------------------------------
def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def is_dualstylegan_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("generator.") for k in state) and any(k.startswith("res.") for k in state)


def is_stylegan2_state(state: Mapping[str, torch.Tensor]) -> bool:
    return "input.input" in state and "conv1.conv.weight" in state


def infer_stylegan2_config(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """Generator config from tensor shapes: size from the number of ToRGB blocks, n_mlp from the
    mapping layers, style_dim from their width, channel_multiplier from the last block's width.
    Works on :class:`~pastiche_core.safe_pickle.TensorMeta` too (only shapes are read)."""
    from .models.stylegan2 import channel_counts

    n_blocks = _count(state, rf"^{re.escape(prefix)}to_rgbs\.(\d+)\.bias$")
    n_mlp = _count(state, rf"^{re.escape(prefix)}style\.(\d+)\.weight$")
    if n_blocks == 0 or n_mlp == 0:
        raise KeyError("no StyleGAN2 generator tensors (to_rgbs.*, style.*) found")
    if n_blocks > 12:  # 2 ** (n_blocks + 2) would be far beyond any real generator
        raise KeyError(f"{n_blocks} ToRGB blocks (a {2 ** min(n_blocks + 2, 64)}px generator?)")
    size = 2 ** (n_blocks + 2)
    try:
        style_dim = state[f"{prefix}style.1.weight"].shape[1]
        last_channels = state[f"{prefix}to_rgbs.{n_blocks - 1}.conv.weight"].shape[2]
    except (KeyError, IndexError, AttributeError):
        raise KeyError(f"{prefix}style.1.weight or {prefix}to_rgbs.{n_blocks - 1}.conv.weight is missing or not "
                       f"a matrix/conv weight") from None
    multiplier = 2
    if size >= 64:
        matches = [m for m in (1, 2, 4, 8) if channel_counts(m)[size] == last_channels]
        if not matches:
            raise KeyError(f"last ToRGB has {last_channels} input channels, which no channel multiplier gives at {size}px")
        multiplier = matches[0]
    return {"size": size, "style_dim": int(style_dim), "n_mlp": n_mlp, "channel_multiplier": multiplier}


# The official families: StyleGAN2 config-f (style_dim 512, 8 mapping layers, channel multiplier
# 2; 1 for the smaller rosinality configs) at 256..1024. 32..128 are accepted for the tiny
# models the training tests write. Anything else is refused *before* a model is built, so a
# file cannot make us allocate a generator of its choosing.
GENERATOR_SIZES = (32, 64, 128, 256, 512, 1024)
GENERATOR_STYLE_DIM = 512
GENERATOR_N_MLP = 8
GENERATOR_MULTIPLIERS = (1, 2)


def check_generator_config(config: Mapping, kind: str = "stylegan2") -> None:
    """Raise ``KeyError`` (a message) unless ``config`` is one of the official generator families."""
    size = config.get("size")
    if size not in GENERATOR_SIZES:
        raise KeyError(f"size {size} is not one of {', '.join(map(str, GENERATOR_SIZES))}")
    if config.get("style_dim") != GENERATOR_STYLE_DIM:
        raise KeyError(f"style_dim {short(repr(config.get('style_dim')), 40)} is not {GENERATOR_STYLE_DIM}")
    if config.get("n_mlp") != GENERATOR_N_MLP:
        raise KeyError(f"n_mlp {config.get('n_mlp')} is not {GENERATOR_N_MLP}")
    if config.get("channel_multiplier") not in GENERATOR_MULTIPLIERS:
        raise KeyError(f"channel_multiplier {config.get('channel_multiplier')} is not 1 or 2")
    if kind == "dualstylegan":
        n_latent = 2 * (size.bit_length() - 1) - 2
        if not (isinstance(config.get("res_index"), int) and 0 <= config["res_index"] < n_latent):
            raise KeyError(f"res_index {config.get('res_index')} is outside 0..{n_latent - 1}")


def _expected_shapes(kind: str, config: Mapping) -> dict[str, tuple]:
    """Key -> shape of the model a (checked) config describes, built on the meta device (no memory)."""
    from .models import DualStyleGAN, Generator

    with torch.device("meta"):
        model = DualStyleGAN(**config) if kind == "dualstylegan" else Generator(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _state_problems(ours: Mapping[str, tuple], state: Mapping) -> list[str]:
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v)})" for k, v in ours.items()
             if k in state and tuple(state[k].shape) != tuple(v)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {short(', '.join(missing[:3]), 200)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {short(', '.join(map(str, unexpected[:3])), 200)})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {short('; '.join(wrong[:2]), 200)})")
    return problems


def generator_config(kind: str, state: Mapping, path: Path) -> dict:
    """The inferred, family-checked config of a generator state dict (tensors or TensorMeta)."""
    try:
        config = infer_dualstylegan_config(state) if kind == "dualstylegan" else infer_stylegan2_config(state)
        check_generator_config(config, kind)
    except KeyError as exc:
        raise CheckpointError(f"{_describe(path)}: cannot infer the {kind} configuration: {exc.args[0]}") from None
    return config


def check_generator_state(kind: str, state: Mapping, path: Path) -> dict:
    """Refuse a state dict whose keys/shapes are not exactly the model its config describes.

    Runs on :class:`~pastiche_core.safe_pickle.TensorMeta` (before the data is read) as well."""
    config = generator_config(kind, state, path)
    problems = _state_problems(_expected_shapes(kind, config), state)
    if problems:
        raise CheckpointError(f"{_describe(path)} does not match a {kind} generator of config {config}: "
                              + "; ".join(problems))
    return config


def infer_dualstylegan_config(state: Mapping[str, torch.Tensor]) -> dict:
    """DualStyleGAN config: the inner generator's, plus res_index from the ModRes block count."""
    config = infer_stylegan2_config(state, prefix="generator.")
    n_modres = _count(state, r"^res\.(\d+)\.conv\.0\.weight$")
    n_ext_mlp = _count(state, r"^style\.(\d+)\.weight$")
    if n_modres == 0:
        raise KeyError("no ModRes blocks (res.N.conv.0.weight) found")
    if n_ext_mlp != config["n_mlp"] - 6:
        raise KeyError(f"extrinsic mapping has {n_ext_mlp} layers, expected n_mlp - 6 = {config['n_mlp'] - 6}")
    config["res_index"] = n_modres - 1
    return config


# --------------------------------------------------------------------------------------------
# Generator files
# --------------------------------------------------------------------------------------------
DSG_EXPECTED = "a DualStyleGAN generator (the official checkpoint/<style>/generator.pt, or our .safetensors)"
SG2_EXPECTED = ("a StyleGAN2 generator (rosinality's stylegan2-ffhq-config-f.pt, a finetune-*.pt, "
                "or our .safetensors)")


def _is_tensor(v) -> bool:
    from .safe_pickle import TensorMeta

    return isinstance(v, (torch.Tensor, TensorMeta))


def _select_state(ckpt, key: str, path: Path):
    """``(kind, state, latent_avg)`` of an official generator checkpoint dict (tensors or TensorMeta)."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{_describe(path)} holds a {type(ckpt).__name__}, not a checkpoint dict with '{key}'")
    if key in ckpt:
        state = ckpt[key]
    elif ckpt and all(_is_tensor(v) for v in ckpt.values()):
        state = ckpt  # a bare state dict
    else:
        has = short(", ".join(map(str, list(ckpt)[:8])), 200)
        raise CheckpointError(f"{_describe(path)} has no '{key}' entry (it has: {has}); "
                              f"expected {DSG_EXPECTED} or {SG2_EXPECTED}")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and _is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{_describe(path)}: '{key}' is not a state dict of tensors")
    latent_avg = ckpt.get("latent_avg")
    if is_dualstylegan_state(state):
        return "dualstylegan", state, latent_avg
    if is_stylegan2_state(state):
        return "stylegan2", state, latent_avg
    sample = short(", ".join(list(state)[:5]), 200)
    raise CheckpointError(f"{_describe(path)}: '{key}' is neither a DualStyleGAN nor a StyleGAN2 generator "
                          f"(first keys: {sample}); expected {DSG_EXPECTED} or {SG2_EXPECTED}")


def _check_latent_avg(latent_avg, path: Path) -> None:
    if _is_tensor(latent_avg) and (latent_avg.ndim > 2 or latent_avg.shape[-1:] != (GENERATOR_STYLE_DIM,)
                                   or latent_avg.numel() > 18 * GENERATOR_STYLE_DIM):
        raise CheckpointError(f"{_describe(path)}: latent_avg has shape {list(latent_avg.shape)}; expected [512]")


def read_generator_file(path: str | os.PathLike, key: str = "g_ema") -> tuple[str, dict[str, torch.Tensor], dict]:
    """Read any generator file -> ``(kind, state_dict, extras)``.

    kind is "dualstylegan" or "stylegan2"; extras holds ``latent_avg`` when the file has it.
    Official ``.pt`` files: the state dict under ``key`` (``g_ema`` by default; ``g`` for the
    non-EMA training copy). Our ``.safetensors``: the tensors plus the model kind in metadata.
    Keys, shapes and the config (an official family) are checked before the weights are read.
    """
    from .safe_pickle import parse_json_meta

    path = Path(path)
    extras: dict = {}
    if path.suffix == ".safetensors":
        where = _describe(path)
        found: dict = {}

        def check(metas, meta):
            if meta.get(FORMAT_KEY) is None or meta.get(MODEL_KEY) not in ("dualstylegan", "stylegan2"):
                raise CheckpointError(f"{where} is a safetensors file but not a Pastiche generator "
                                      f"(metadata {MODEL_KEY!r} is {short(repr(meta.get(MODEL_KEY)), 60)}); convert "
                                      f"official files with `python -m pastiche_core convert IN.pt OUT.safetensors`")
            names = parse_json_meta(meta, "pastiche.extras", [], list, where)
            order = parse_json_meta(meta, "pastiche.keys", [], list, where)
            if not all(isinstance(n, str) and n in metas for n in names) or not all(isinstance(k, str) for k in order):
                raise CheckpointError(f"{where}: metadata 'pastiche.extras'/'pastiche.keys' name tensors the file "
                                      f"does not have")
            state = {k: v for k, v in metas.items() if k not in names}
            kind = meta[MODEL_KEY]
            if kind == "dualstylegan" and not is_dualstylegan_state(state) or \
                    kind == "stylegan2" and not is_stylegan2_state(state):
                raise CheckpointError(f"{where}: metadata says {kind}, but the tensors are not one")
            check_generator_state(kind, state, path)
            _check_latent_avg(metas.get("latent_avg"), path)
            found.update(kind=kind, names=names, order=order)

        tensors, _ = read_safetensors(path, "a Pastiche generator .safetensors", check)
        for name in found["names"]:
            extras[name] = tensors.pop(name)
        order = found["order"]  # safetensors sorts keys; keep the official order
        if sorted(order) == sorted(tensors):
            tensors = {k: tensors[k] for k in order}
        return found["kind"], tensors, extras

    def check(ckpt):
        kind, state, latent_avg = _select_state(ckpt, key, path)
        check_generator_state(kind, state, path)
        _check_latent_avg(latent_avg, path)

    ckpt = safe_torch_load(path, "a generator checkpoint", check)
    kind, state, latent_avg = _select_state(ckpt, key, path)
    if isinstance(latent_avg, torch.Tensor):
        extras["latent_avg"] = latent_avg
    return kind, dict(state), extras


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, expected: str) -> None:
    ours = model.state_dict()
    problems = _state_problems({k: tuple(v.shape) for k, v in ours.items()}, state)
    if problems:
        raise CheckpointError(f"{_describe(path)} does not match {expected}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)


def _finish(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


def build_generator(kind: str, state: Mapping[str, torch.Tensor], path: Path):
    """Instantiate the model a state dict describes (an official family) and load it strictly."""
    from .models import DualStyleGAN, Generator

    config = generator_config(kind, state, path)
    model = DualStyleGAN(**config) if kind == "dualstylegan" else Generator(**config)
    _load_strict(model, state, path, f"a {kind} generator of config {config}")
    return model


def load_dualstylegan(path: str | os.PathLike, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None):
    """Load a DualStyleGAN (official ``generator.pt`` or our ``.safetensors``), eval mode, no grad."""
    path = Path(path)
    kind, state, _ = read_generator_file(path)
    if kind != "dualstylegan":
        raise CheckpointError(f"{_describe(path)} holds a plain StyleGAN2 generator (like stylegan2-ffhq-config-f.pt "
                              f"or finetune-*.pt), but {DSG_EXPECTED} is needed here")
    return _finish(build_generator(kind, state, path), device, dtype)


def load_stylegan2(path: str | os.PathLike, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None, key: str = "g_ema"):
    """Load a StyleGAN2 generator -> ``(Generator, latent_avg or None)``.

    A DualStyleGAN file is accepted too: its intrinsic path (``generator.*``) is a StyleGAN2.
    """
    path = Path(path)
    kind, state, extras = read_generator_file(path, key)
    if kind == "dualstylegan":
        state = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    model = _finish(build_generator("stylegan2", state, path), device, dtype)
    latent_avg = extras.get("latent_avg")
    if latent_avg is not None and (device is not None or dtype is not None):
        latent_avg = latent_avg.to(device=device, dtype=dtype)
    return model, latent_avg


def load_generator(path: str | os.PathLike, device=None, dtype=None):
    """Whatever generator the file holds (DualStyleGAN or StyleGAN2)."""
    path = Path(path)
    kind, state, _ = read_generator_file(path)
    return _finish(build_generator(kind, state, path), device, dtype)


# --------------------------------------------------------------------------------------------
# Our format
# --------------------------------------------------------------------------------------------
def save_generator_safetensors(path: str | os.PathLike, kind: str, state: Mapping[str, torch.Tensor],
                               config: dict, extras: Mapping[str, torch.Tensor] | None = None,
                               twin: str | os.PathLike | None = None, twin_write=None) -> None:
    """Write a generator state dict (+ extras such as ``latent_avg``) as safetensors, atomically.

    ``twin``: also write the official-layout ``.pt`` there (``twin_write(tmp)`` when given, else
    ``{"g_ema": ...}``), as a pair that cannot disagree (:func:`pastiche_core.atomic.write_pair`)."""
    from safetensors.torch import save_file

    extras = dict(extras or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    for name, value in extras.items():
        tensors[name] = value.detach().contiguous().cpu()
    meta = {FORMAT_KEY: FORMAT_VERSION, MODEL_KEY: kind, CONFIG_KEY: json.dumps(config),
            "pastiche.extras": json.dumps(sorted(extras)), "pastiche.keys": json.dumps(list(state))}
    if twin is not None:  # the official-layout copy, written with it so that the two cannot disagree
        from .atomic import write_pair

        if twin_write is None:
            obj = _official(state, extras)
            twin_write = lambda tmp: torch.save(obj, tmp)  # noqa: E731
        write_pair(twin, twin_write, path,
                   lambda tmp, more: save_file(tensors, str(tmp), metadata={**meta, **more}))
        return
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _official(state: Mapping[str, torch.Tensor], extras: Mapping[str, torch.Tensor] | None = None) -> dict:
    obj = {"g_ema": {k: v.detach().cpu() for k, v in state.items()}}
    for name, value in (extras or {}).items():
        obj[name] = value.detach().cpu()
    return obj


def save_generator_official(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                            extras: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the official layout ``{"g_ema": state_dict[, "latent_avg"]}`` (torch.save), atomically."""
    obj = _official(state, extras)
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Convert a generator file between the official ``.pt`` layout and our ``.safetensors``.

    The direction follows the suffix of ``dst``. Only the inference model (``g_ema``, plus
    ``latent_avg``) is converted; training-only entries (``g``, ``d``, optimisers) are dropped.
    Returns a one-line summary.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix not in (".safetensors", ".pt", ".pth"):
        raise CheckpointError(f"output '{dst}' must end in .safetensors or .pt")
    from .atomic import check_output

    check_output(dst, [src], option="OUT")  # before reading: a hard link to IN counts as IN
    kind, state, extras = read_generator_file(src)
    model = build_generator(kind, state, src)  # validates every key and shape
    if dst.suffix == ".safetensors":
        save_generator_safetensors(dst, kind, model.state_dict(), model.config, extras)
    else:
        save_generator_official(dst, model.state_dict(), extras)
    n = sum(v.numel() for v in model.state_dict().values())
    return f"{kind} {model.config} ({n / 1e6:.1f}M values) -> {dst}"
