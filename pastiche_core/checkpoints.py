"""Safe loading of the official checkpoint files, config inference, and our safetensors format.

Official ``.pt`` files are read with ``torch.load(weights_only=True)``: only tensors and
plain containers are unpickled, never arbitrary objects. Our own format is safetensors with
the model config in the metadata (``pastiche.model`` and ``pastiche.config``).
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

FORMAT_KEY = "pastiche.format"
MODEL_KEY = "pastiche.model"
CONFIG_KEY = "pastiche.config"
FORMAT_VERSION = "1"


def first_existing(folder: str | os.PathLike, stems, suffixes) -> Path | None:
    """The first ``folder/<stem><suffix>`` file that exists, trying stems in order, then suffixes.

    A ``.safetensors`` written together with its ``.pt``/``.npy`` twin is skipped when that twin
    has changed since (replaced by another tool, or a crash between the two renames): the
    stale copy must not win over the file next to it."""
    for stem in stems:
        for suffix in suffixes:
            p = Path(folder) / f"{stem}{suffix}"
            if p.is_file():
                if suffix == ".safetensors":
                    from .atomic import twin_is_stale

                    twin = twin_is_stale(p)
                    if twin is not None:
                        warnings.warn(f"'{p}' is older than '{twin.name}' next to it; using '{twin.name}'",
                                      stacklevel=2)
                        continue
                return p
    return None


def _describe(path: Path) -> str:
    return f"'{path}'"


def safe_torch_load(path: str | os.PathLike, expected: str) -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with clear errors.

    expected: what the file should be, for messages (e.g. "a DualStyleGAN generator.pt").
    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or
    non-PyTorch file, or one that holds objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{_describe(path)} does not exist (expected {expected})")
    if path.is_dir():
        raise CheckpointError(f"{_describe(path)} is a folder, not a file (expected {expected})")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{_describe(path)} is empty (0 bytes); expected {expected}. Download it again.")
    try:
        # argparse.Namespace (the 'args' entry of official training checkpoints) is a plain
        # attribute bag, safe to rebuild; everything else must be tensors and containers.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here; translate them all
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            match = re.search(r"(Unsupported global: GLOBAL [^\s]+|global '[^']+')", text)
            what = f" ({match.group(1)})" if match else ""
            raise CheckpointError(
                f"{_describe(path)} contains pickled Python objects other than tensors{what}; "
                f"refusing to unpickle it. Expected {expected}.") from None
        if zipfile.is_zipfile(path) is False and path.suffix in (".pt", ".pth"):
            raise CheckpointError(f"{_describe(path)} is not a PyTorch checkpoint or is truncated/corrupt "
                                  f"({size} bytes); expected {expected}.") from None
        raise CheckpointError(f"{_describe(path)} could not be read as a PyTorch checkpoint "
                              f"({type(exc).__name__}: {text.splitlines()[0] if text else ''}); "
                              f"expected {expected}.") from None


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
    mapping layers, style_dim from their width, channel_multiplier from the last block's width."""
    from .models.stylegan2 import channel_counts

    n_blocks = _count(state, rf"^{re.escape(prefix)}to_rgbs\.(\d+)\.bias$")
    n_mlp = _count(state, rf"^{re.escape(prefix)}style\.(\d+)\.weight$")
    if n_blocks == 0 or n_mlp == 0:
        raise KeyError("no StyleGAN2 generator tensors (to_rgbs.*, style.*) found")
    size = 2 ** (n_blocks + 2)
    style_dim = state[f"{prefix}style.1.weight"].shape[1]
    last_channels = state[f"{prefix}to_rgbs.{n_blocks - 1}.conv.weight"].shape[2]
    multiplier = 2
    if size >= 64:
        matches = [m for m in (1, 2, 4, 8) if channel_counts(m)[size] == last_channels]
        if not matches:
            raise KeyError(f"last ToRGB has {last_channels} input channels, which no channel multiplier gives at {size}px")
        multiplier = matches[0]
    return {"size": size, "style_dim": int(style_dim), "n_mlp": n_mlp, "channel_multiplier": multiplier}


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


def read_safetensors(path: str | os.PathLike, expected: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with clear errors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{_describe(path)} does not exist (expected {expected})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{_describe(path)} is not a readable safetensors file ({exc}); expected {expected}") from None
    return tensors, meta


def read_generator_file(path: str | os.PathLike, key: str = "g_ema") -> tuple[str, dict[str, torch.Tensor], dict]:
    """Read any generator file -> ``(kind, state_dict, extras)``.

    kind is "dualstylegan" or "stylegan2"; extras holds ``latent_avg`` when the file has it.
    Official ``.pt`` files: the state dict under ``key`` (``g_ema`` by default; ``g`` for the
    non-EMA training copy). Our ``.safetensors``: the tensors plus the model kind in metadata.
    """
    path = Path(path)
    extras: dict = {}
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path, "a Pastiche generator .safetensors")
        if meta.get(FORMAT_KEY) is None or meta.get(MODEL_KEY) not in ("dualstylegan", "stylegan2"):
            raise CheckpointError(f"{_describe(path)} is a safetensors file but not a Pastiche generator "
                                  f"(metadata {MODEL_KEY!r} is {meta.get(MODEL_KEY)!r}); convert official files "
                                  f"with `python -m pastiche_core convert IN.pt OUT.safetensors`")
        for name in json.loads(meta.get("pastiche.extras", "[]")):
            extras[name] = tensors.pop(name)
        order = json.loads(meta.get("pastiche.keys", "[]"))  # safetensors sorts keys; keep the official order
        if sorted(order) == sorted(tensors):
            tensors = {k: tensors[k] for k in order}
        return meta[MODEL_KEY], tensors, extras
    ckpt = safe_torch_load(path, "a generator checkpoint")
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{_describe(path)} holds a {type(ckpt).__name__}, not a checkpoint dict with '{key}'")
    if key in ckpt:
        state = ckpt[key]
    elif all(isinstance(v, torch.Tensor) for v in ckpt.values()) and ckpt:
        state = ckpt  # a bare state dict
    else:
        raise CheckpointError(f"{_describe(path)} has no '{key}' entry (it has: {', '.join(map(str, list(ckpt)[:8]))}); "
                              f"expected {DSG_EXPECTED} or {SG2_EXPECTED}")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{_describe(path)}: '{key}' is not a state dict of tensors")
    if isinstance(ckpt.get("latent_avg"), torch.Tensor):
        extras["latent_avg"] = ckpt["latent_avg"]
    if is_dualstylegan_state(state):
        return "dualstylegan", dict(state), extras
    if is_stylegan2_state(state):
        return "stylegan2", dict(state), extras
    sample = ", ".join(list(state)[:5])
    raise CheckpointError(f"{_describe(path)}: '{key}' is neither a DualStyleGAN nor a StyleGAN2 generator "
                          f"(first keys: {sample}); expected {DSG_EXPECTED} or {SG2_EXPECTED}")


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, expected: str) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in ours.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:2])})")
    if problems:
        raise CheckpointError(f"{_describe(path)} does not match {expected}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)


def _finish(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


def build_generator(kind: str, state: Mapping[str, torch.Tensor], path: Path):
    """Instantiate the model a state dict describes and load it strictly."""
    from .models import DualStyleGAN, Generator

    try:
        if kind == "dualstylegan":
            config = infer_dualstylegan_config(state)
            model = DualStyleGAN(**config)
        else:
            config = infer_stylegan2_config(state)
            model = Generator(**config)
    except KeyError as exc:
        raise CheckpointError(f"{_describe(path)}: cannot infer the {kind} configuration: {exc.args[0]}") from None
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
def _atomic_write(path: Path, write) -> None:
    from .atomic import atomic_write

    atomic_write(path, write)


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
    _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _official(state: Mapping[str, torch.Tensor], extras: Mapping[str, torch.Tensor] | None = None) -> dict:
    obj = {"g_ema": {k: v.detach().cpu() for k, v in state.items()}}
    for name, value in (extras or {}).items():
        obj[name] = value.detach().cpu()
    return obj


def save_generator_official(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                            extras: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the official layout ``{"g_ema": state_dict[, "latent_avg"]}`` (torch.save), atomically."""
    obj = _official(state, extras)
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


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
