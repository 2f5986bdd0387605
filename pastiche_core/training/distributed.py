"""Multi-process training: torchrun + DistributedDataParallel + DistributedSampler.

Launch with torchrun (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``)::

    torchrun --nproc_per_node 2 -m pastiche_core train sampler --checkpoints DIR --out OUT

Without those variables everything runs as one process (world size 1, nothing initialised).
The backend is gloo on CPU and NCCL on CUDA. Only rank 0 writes files and prints progress;
:func:`stop_requested` turns rank 0's ``should_stop()`` into a decision every rank agrees on.

:class:`SyncBatchNorm1d` is a batch norm over the *global* batch that works on CPU/gloo
(``torch.nn.SyncBatchNorm`` is GPU-only): with it, DDP over ``world`` processes of
``B / world`` samples computes the same update as one process with a batch of ``B``.

:func:`check_same_run` makes the processes compare their settings, step and starting weights
before training: a process started with another seed, other settings or another copy of a
checkpoint (a node with a stale file) stops the run with one error line naming what differs,
instead of silently averaging the gradients of different models.

``PASTICHE_DIST_TRACE=DIR`` (a diagnostic for tests and for checking a launch): every process
writes ``DIR/rank<R>.jsonl``, one JSON object per line -- ``start`` (rank, world size, the
digests :func:`check_same_run` compared), ``batch`` (the training images this process used)
and ``end`` (digests of its final weights, equal on every rank when the gradients were really
averaged). Nothing is traced when the variable is unset.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import InputError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # we initialised the process group (and tear it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: str | torch.device = "cpu") -> DistContext:
    """Join the torchrun process group when launched by torchrun, else a single-process context.

    On CUDA each process uses ``cuda:LOCAL_RANK``. An already initialised default group (e.g.
    from a test harness) is reused and left alone by :func:`cleanup`.
    """
    device = torch.device(device)
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=device)
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if var not in os.environ:
                raise InputError(f"WORLD_SIZE={world} but {var} is not set: launch multi-process training with "
                                 f"torchrun (e.g. torchrun --nproc_per_node {world} -m pastiche_core train ...)")
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device,
                       backend=dist.get_backend(), owns_group=owns)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, ctx: DistContext, *, sync_buffers: bool = True, **kwargs) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else the module itself.

    ``sync_buffers=False``: do not re-broadcast rank 0's buffers before every forward (for
    buffers every rank updates identically, e.g. :func:`sync_batch_norm` running statistics)."""
    if not ctx.distributed:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if ctx.device.type == "cuda":
        kwargs.setdefault("device_ids", [ctx.device.index])
    if not sync_buffers:
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    return DistributedDataParallel(module, **kwargs)


def shard(n: int, ctx: DistContext, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> list[int]:
    """This rank's indices of ``range(n)`` from a ``DistributedSampler`` (padded to a multiple
    of the world size; the permutation depends on ``seed + epoch`` only, so every rank and a
    single-process run agree on it: rank r gets ``perm[r::world]``)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; identity for one process)."""
    if not ctx.distributed:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def stop_requested(local: bool, ctx: DistContext) -> bool:
    """True on every rank when any rank asks to stop (rank 0 normally owns ``should_stop``)."""
    if not ctx.distributed:
        return bool(local)
    flag = torch.tensor([1.0 if local else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable) as a list ordered by rank, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Every process runs the same training
# --------------------------------------------------------------------------------------------
def digest(value) -> str:
    """A short hash of a tensor, a module's state, or a (nested) setting; equal exactly when
    the dtypes, shapes and bytes (or the JSON text) are equal."""
    h = hashlib.blake2b(digest_size=12)
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value) -> None:
    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {t.dtype} {tuple(value.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(f"{k!s}:".encode())
            _feed(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(json.dumps(value, default=repr).encode() + b";")


def check_same_run(ctx: DistContext, settings: Mapping, state: Mapping) -> None:
    """Refuse to train when the processes of a distributed run disagree.

    ``settings``: the run's configuration (each key is compared: the error names the ones that
    differ); ``state``: what training starts from (weights, step, random generators: modules,
    tensors or plain values, each compared). Every rank compares every rank's digests with rank
    0's, so all of them raise the same error together (none is left waiting in a collective).
    Traced as the ``start`` event. Nothing to compare (or hash) in a single process."""
    if not ctx.distributed and not tracing():
        return
    mine = {"settings": {str(k): digest(v) for k, v in settings.items()},
            "state": {str(k): digest(v) for k, v in state.items()}}
    trace(ctx, "start", **mine)
    if not ctx.distributed:
        return
    every = gather_objects(mine, ctx)
    for rank, theirs in enumerate(every[1:], start=1):
        for group, what in (("settings", "settings"), ("state", "starting state")):
            keys = sorted(set(every[0][group]) | set(theirs[group]))
            differ = [k for k in keys if every[0][group].get(k) != theirs[group].get(k)]
            if differ:
                raise InputError(
                    f"the training processes disagree: rank {rank} of {ctx.world_size} has other {what} than rank 0 "
                    f"({', '.join(differ[:8])}{', ...' if len(differ) > 8 else ''}); every process must run the same "
                    f"command with the same files (same --seed and options; the same checkpoint and data files on "
                    f"every node)")


TRACE_ENV = "PASTICHE_DIST_TRACE"
_trace_records: dict[Path, list[str]] = {}


def tracing() -> bool:
    return bool(os.environ.get(TRACE_ENV))


def trace(ctx: DistContext, event: str, **fields) -> None:
    """Append ``{"event", "rank", "world_size", **fields}`` to ``$PASTICHE_DIST_TRACE/rank<R>.jsonl``
    (rewritten atomically with every record so far); nothing when the variable is unset."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return
    from ..atomic import atomic_write

    path = Path(folder) / f"rank{ctx.rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = _trace_records.setdefault(path, [])
    lines.append(json.dumps({"event": event, "rank": ctx.rank, "world_size": ctx.world_size, **fields},
                            default=repr))
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------------------------
# Batch norm over the global batch
# --------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce: forward sums over ranks, backward sums the gradients."""

    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def differentiable_all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


def sync_batch_norm(x: torch.Tensor, bn: torch.nn.BatchNorm1d, synced: bool) -> torch.Tensor:
    """Training-mode ``bn(x)`` for ``x [b, C]`` with statistics over the batch of every rank
    (``synced=True`` in a distributed run), updating ``bn``'s running statistics exactly as
    ``nn.BatchNorm1d`` does for that global batch (momentum, unbiased running variance).
    With ``synced=False`` this is ``F.batch_norm`` in training mode."""
    if not synced:
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
    count = differentiable_all_reduce(torch.tensor([float(x.shape[0])], device=x.device, dtype=x.dtype).detach())
    mean = differentiable_all_reduce(x.sum(0)) / count
    centred = x - mean
    var = differentiable_all_reduce(centred.pow(2).sum(0)) / count  # biased, for normalisation
    with torch.no_grad():
        n = count.item()
        bn.num_batches_tracked.add_(1)
        bn.running_mean.mul_(1 - bn.momentum).add_(mean.detach(), alpha=bn.momentum)
        bn.running_var.mul_(1 - bn.momentum).add_(var.detach() * (n / max(n - 1, 1)), alpha=bn.momentum)
    out = centred * torch.rsqrt(var + bn.eps)
    return out * bn.weight + bn.bias


__all__ = ["TRACE_ENV", "DistContext", "all_reduce_sum", "barrier", "check_same_run", "cleanup",
           "differentiable_all_reduce", "digest", "env_world_size", "gather_objects", "setup", "shard",
           "stop_requested", "sync_batch_norm", "trace", "tracing", "wrap_ddp"]
