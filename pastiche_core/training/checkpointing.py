"""Resumable training state: models, EMA copies, optimisers, step and every RNG, saved atomically.

A training checkpoint is one ``torch.save`` of a plain dict (see :func:`make_state`)::

    {"format": "pastiche.train_state", "version": 1, "stage": str, "step": int, "total": int,
     "finished": bool, "config": {plain values}, "models": {name: state_dict},
     "ema": {name: state_dict}, "optimizers": {name: optimizer.state_dict()},
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...], "numpy": {...}, "python": {...},
             "generators": {name: ByteTensor}},
     "extra": {stage-specific tensors and plain values}}

Everything in it is a tensor or a plain container/number/string, so it loads with
``torch.load(weights_only=True)`` (numpy's and Python's RNG states are converted to int64
tensors on save and back on load). :func:`save_state` checks that before writing and names
the offending entry otherwise.

Writes are atomic and durable (:mod:`pastiche_core.atomic`): the state goes to a temporary file
in the same folder, is ``fsync``-ed, then renamed over the previous checkpoint and the folder
entry is ``fsync``-ed. A process killed at any point (``kill -9`` mid-write included) leaves
either the previous complete checkpoint or the new complete one, never a torn file. A temporary
file left by a dead writer is removed by the next load; one of a live process (another run
writing into the same folder) is never touched (see :mod:`pastiche_core.atomic`).
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write, remove_dead_temps
from ..weight_files import safe_torch_load
from ..errors import CheckpointError, short

FORMAT = "pastiche.train_state"
VERSION = 1
STATE_EXPECTED = "a Pastiche training-state checkpoint (written by `python -m pastiche_core train`)"
_PLAIN = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------
def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Every RNG a training step may touch, as weights-only-loadable values.

    torch CPU (global), CUDA (all devices, only when CUDA is initialised), numpy's legacy
    global generator, Python's ``random``, and the named ``torch.Generator`` objects a stage
    owns (the stages draw their own randomness from those).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": (list(torch.cuda.get_rng_state_all())
                 if torch.cuda.is_available() and torch.cuda.is_initialized() else []),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: Mapping, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Undo :func:`capture_rng` (the named generators are restored in place)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"the training state has no RNG state for generator {name!r}")
        g.set_state(saved[name])


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------
def _cpu(obj):
    """Tensors to CPU (detached, cloned), containers recursively; tuples stay tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu(v) for v in obj)
    return obj


def check_plain(obj, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value that ``torch.load(weights_only=True)`` could
    not read back (anything but tensors, dicts with str/int keys, lists, tuples and scalars)."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; only str/int keys are allowed")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}, which a weights-only checkpoint cannot hold")


def make_state(stage: str, step: int, total: int, *, config: Mapping | None = None,
               models: Mapping[str, torch.nn.Module] | None = None,
               ema: Mapping[str, torch.nn.Module] | None = None,
               optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
               generators: Mapping[str, torch.Generator] | None = None,
               extra: Mapping | None = None, finished: bool = False) -> dict:
    """Snapshot everything needed to continue training bit for bit (tensors copied to CPU)."""
    def unwrap(m):
        return getattr(m, "module", m)  # DistributedDataParallel -> the model

    return {
        "format": FORMAT, "version": VERSION, "stage": stage, "step": int(step), "total": int(total),
        "finished": bool(finished), "config": dict(config or {}),
        "models": {k: _cpu(unwrap(m).state_dict()) for k, m in (models or {}).items()},
        "ema": {k: _cpu(unwrap(m).state_dict()) for k, m in (ema or {}).items()},
        "optimizers": {k: _cpu(o.state_dict()) for k, o in (optimizers or {}).items()},
        "rng": capture_rng(generators),
        "extra": _cpu(dict(extra or {})),
    }


def apply_state(state: Mapping, *, models: Mapping[str, torch.nn.Module] | None = None,
                ema: Mapping[str, torch.nn.Module] | None = None,
                optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                generators: Mapping[str, torch.Generator] | None = None, restore_rngs: bool = True) -> None:
    """Load a :func:`make_state` snapshot into live objects (strict for models)."""
    def unwrap(m):
        return getattr(m, "module", m)

    for group, live in (("models", models), ("ema", ema)):
        for name, model in (live or {}).items():
            if name not in state[group]:
                raise CheckpointError(f"the training state has no {group} entry {name!r}")
            unwrap(model).load_state_dict(state[group][name], strict=True)
    for name, opt in (optimizers or {}).items():
        if name not in state["optimizers"]:
            raise CheckpointError(f"the training state has no optimiser {name!r}")
        opt.load_state_dict(state["optimizers"][name])
    if restore_rngs:
        restore_rng(state["rng"], generators)


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------
def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`pastiche_core.atomic.atomic_write` (temp file in the same
    folder, fsync, rename, folder fsync; a full disk is a clear error with the old file kept)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write, hint="run the same command with --resume")


def save_state(path: str | os.PathLike, state: Mapping) -> Path:
    """Validate (weights-only loadable) and write a training state atomically."""
    check_plain(state)
    return atomic_torch_save(dict(state), path)


def _is_tensor(v) -> bool:
    from ..safe_pickle import TensorMeta

    return isinstance(v, (torch.Tensor, TensorMeta))


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_state(state, path: str | os.PathLike, stage: str | None = None) -> None:
    """Refuse anything but a :func:`make_state` snapshot, naming the first wrong entry.

    Runs on the walked file (tensors as :class:`~pastiche_core.safe_pickle.TensorMeta`) before
    the data is read, so that resuming never meets a malformed state half-way through
    :func:`apply_state` / :func:`restore_rng`."""
    where = f"'{path}'"
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not {STATE_EXPECTED}")
    version = state.get("version", 0)
    if not _int(version):
        raise CheckpointError(f"{where}: training-state version {short(repr(version), 40)} is not an integer")
    if version > VERSION:
        raise CheckpointError(f"{where} was written by a newer Pastiche (training-state version "
                              f"{version}; this one reads up to {VERSION})")

    def bad(entry: str, want: str):
        raise CheckpointError(f"{where}: training-state entry {entry} is not {want}; the file is damaged or not "
                              f"{STATE_EXPECTED}")

    if not isinstance(state.get("stage"), str):
        bad("'stage'", "a string")
    for key in ("step", "total"):
        if not _int(state.get(key)) or state[key] < 0:
            bad(repr(key), "a non-negative integer")
    if not isinstance(state.get("finished", False), bool):
        bad("'finished'", "a bool")
    for key in ("config", "extra"):
        if not isinstance(state.get(key, {}), Mapping):
            bad(repr(key), "a dict")
    for group in ("models", "ema"):
        models = state.get(group, {})
        if not isinstance(models, Mapping):
            bad(repr(group), "a dict of state dicts")
        for name, sd in models.items():
            if not isinstance(sd, Mapping) or not all(isinstance(k, str) and _is_tensor(v) for k, v in sd.items()):
                bad(f"{group}[{short(repr(name), 60)}]", "a state dict of tensors")
    optimizers = state.get("optimizers", {})
    if not isinstance(optimizers, Mapping):
        bad("'optimizers'", "a dict")
    for name, opt in optimizers.items():
        if not isinstance(opt, Mapping) or not isinstance(opt.get("state"), Mapping) \
                or not isinstance(opt.get("param_groups"), list):
            bad(f"optimizers[{short(repr(name), 60)}]", "an optimizer state dict (state, param_groups)")
    rng = state.get("rng")
    if not isinstance(rng, Mapping):
        bad("'rng'", "a dict of RNG states")
    if not (_is_tensor(rng.get("torch")) and rng["torch"].dtype == torch.uint8 and rng["torch"].ndim == 1):
        bad("rng['torch']", "a uint8 tensor")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(_is_tensor(t) and t.dtype == torch.uint8 for t in cuda):
        bad("rng['cuda']", "a list of uint8 tensors")
    npst = rng.get("numpy")
    if not (isinstance(npst, Mapping) and isinstance(npst.get("kind"), str) and _is_tensor(npst.get("keys"))
            and npst["keys"].dtype == torch.int64 and tuple(npst["keys"].shape) == (624,)
            and _int(npst.get("pos")) and _int(npst.get("has_gauss"))
            and isinstance(npst.get("cached_gaussian"), (int, float)) and not isinstance(npst["cached_gaussian"], bool)):
        bad("rng['numpy']", "numpy's MT19937 state (kind, keys int64 [624], pos, has_gauss, cached_gaussian)")
    py = rng.get("python")
    if not (isinstance(py, Mapping) and _int(py.get("version")) and _is_tensor(py.get("internal"))
            and py["internal"].dtype == torch.int64 and tuple(py["internal"].shape) == (625,)
            and (py.get("gauss_next") is None or isinstance(py.get("gauss_next"), float))):
        bad("rng['python']", "Python's random state (version, internal int64 [625], gauss_next)")
    generators = rng.get("generators", {})
    if not isinstance(generators, Mapping) or not all(isinstance(k, str) and _is_tensor(v) and v.dtype == torch.uint8
                                                     for k, v in generators.items()):
        bad("rng['generators']", "a dict of uint8 generator states")
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(f"{where} is a training state of stage {short(repr(state.get('stage')), 60)}, "
                              f"not {stage!r}")


def load_state(path: str | os.PathLike, stage: str | None = None) -> dict:
    """Read a training state (bounded, weights-only); clear errors for a missing, corrupt or
    foreign file, one written by another stage, or one whose entries are not what
    :func:`make_state` writes (checked before the tensors are read)."""
    path = Path(path)
    remove_dead_temps(path.parent)  # only dead writers' leftovers: a live run's in-flight file stays
    # no mmap: the next save replaces this very file, which a live mapping blocks on Windows
    state = safe_torch_load(path, STATE_EXPECTED, lambda skeleton: check_state(skeleton, path, stage), mmap=False,
                            allow_namespace=False)
    check_state(state, path, stage)
    return dict(state)


def state_path(out_dir: str | os.PathLike, stage: str) -> Path:
    """Where a stage keeps its resumable state inside the output folder."""
    return Path(out_dir) / "train_state" / f"{stage}.pt"


__all__ = ["FORMAT", "VERSION", "apply_state", "atomic_torch_save", "capture_rng", "check_plain", "load_state",
           "make_state", "restore_rng", "save_state", "state_path"]
