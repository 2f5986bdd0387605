"""Stage ``sampler``: train the ICP extrinsic-style sampler on a style bank (official
``train_sampler.py`` + ``model/sampler/icp.py``), resumable and multi-process.

What the official script does, and what this does by default:

* the bank (refined if there is one) is stacked to ``[N, L*512]``, repeated ``1000 // N``
  times (at least once here; the official gives 0 rows for banks over 1000 entries) and every
  element jittered with N(0, 0.05^2);
* colour columns (rows 7..) and structure columns (rows 0..6) each get an ICP net
  (:class:`~pastiche_core.models.sampler.ICPNet`, 128-d noise), colour first;
* per net ``int(500000 / n_codes)`` epochs; an epoch draws ``2 * (n // 128)`` batches of 128
  Gaussian noise vectors, maps them with the net (training-mode BatchNorm, as the official),
  finds for every target code its nearest mapped sample (exact L2, as faiss ``IndexFlatL2``;
  ties go to the first), then makes ``n // 128`` Adam steps regressing the net's output for the
  matched noise onto the targets (random permutation, MSE). Adam (lr ``1e-3 * 0.5^(epoch // 50)``,
  betas (0.5, 0.999), weight decay 1e-5) is re-created every epoch.

One *iteration* here is one Adam step; ``iters`` (steps per net) defaults to the official
``epochs * (n // 128)``. Outputs: ``sampler.pt`` (official layout ``{"color", "structure"}``,
read by the official ``generate.py`` and by :meth:`StyleSampler.from_checkpoint`) and
``sampler.safetensors`` (our format, :func:`load_sampler_safetensors`; the inference pipeline
and :meth:`StyleSampler.from_checkpoint` read either).

Multi-process (torchrun): every rank maps the same noise (same seed) and finds the same
neighbours; each Adam step's global batch is split over the ranks by a ``DistributedSampler``
and the BatchNorm statistics are reduced over all ranks (:func:`~.distributed.sync_batch_norm`),
so the update equals the single-process one for the same global batch (up to float rounding).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.sampler import N_STRUCTURE_ROWS as N_STRUCTURE, ICPNet, StyleSampler, load_sampler_safetensors, save_sampler_safetensors
from . import distributed as D
from .checkpointing import apply_state
from .common import Progress, ShouldStop, StageResult, derived_seed, tensor_fingerprint
from .loop import Loop, dist_session
from .options import SamplerConfig, resume_keys

STAGE = "sampler"
SAMPLER_PT = "sampler.pt"
# The inference pipeline picks <stem>.safetensors before <stem>.pt; StyleSampler.from_checkpoint
# reads both formats, so the two files are interchangeable.
SAMPLER_SAFETENSORS = "sampler.safetensors"
PARTS = ("color", "structure")  # training order of the official script


class _ICPTrain(nn.Module):
    """The ICP net's training forward with batch norm over the global batch (DDP wraps this)."""

    def __init__(self, net: ICPNet, synced: bool):
        super().__init__()
        self.net, self.synced = net, synced

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.relu(D.sync_batch_norm(n.lin1(e), n.bn1, self.synced))
        x = F.relu(D.sync_batch_norm(n.lin2(x), n.bn2, self.synced))
        return n.lin_out(x)


def _nearest(targets: torch.Tensor, mapped: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Index of the nearest row of ``mapped`` for every row of ``targets`` (squared L2; first on ties)."""
    sq = (mapped * mapped).sum(1)
    out = []
    for i in range(0, targets.shape[0], chunk):
        d = sq[None, :] - 2 * targets[i:i + chunk] @ mapped.T  # |t|^2 is constant per row
        out.append(d.argmin(dim=1))
    return torch.cat(out)


def prepare_targets(codes: torch.Tensor, cfg: SamplerConfig) -> tuple[torch.Tensor, int]:
    """Bank ``[N, L, D]`` -> jittered training codes ``[n, L*D]`` and the repeat count."""
    n_bank = codes.shape[0]
    reps = max(1, cfg.repeat_to // n_bank)
    flat = codes.reshape(n_bank, -1).float().repeat(reps, 1)
    g = torch.Generator().manual_seed(derived_seed(cfg.seed, "jitter"))
    return flat + cfg.jitter * torch.randn(flat.shape, generator=g), reps


def train_sampler(bank, out_dir: str | os.PathLike, config: SamplerConfig | None = None, *, resume: bool = False,
                  progress: Progress | None = None, should_stop: ShouldStop | None = None,
                  dist_ctx: D.DistContext | None = None) -> StageResult:
    """Train both ICP nets on ``bank`` (a z+ :class:`~pastiche_core.styles.StyleBank`) into ``out_dir``.

    ``progress(done, total, info)`` after every step (rank 0 only); ``should_stop()`` is polled
    before every step: when it returns True the state is checkpointed and the result has
    ``stopped=True`` (continue with ``resume=True``). ``resume=True`` continues from
    ``out_dir/train_state/sampler.pt`` bit for bit (a missing state starts afresh).
    """
    cfg = config or SamplerConfig()
    with dist_session(cfg.device, dist_ctx) as ctx:
        return _train(bank, Path(out_dir), cfg, ctx, resume, progress, should_stop)


def _train(bank, out: Path, cfg: SamplerConfig, ctx: D.DistContext, resume: bool, progress, should_stop) -> StageResult:
    if getattr(bank, "space", "z+") != "z+":
        raise InputError(f"the sampler learns z+ bank codes; this bank is {bank.space}")
    codes = bank.codes
    n_bank, n_latent, style_dim = codes.shape
    if n_bank == 0:
        raise InputError("the style bank is empty")
    if n_latent <= N_STRUCTURE:
        raise InputError(f"bank codes have {n_latent} rows; the sampler needs more than {N_STRUCTURE} "
                         f"(rows 0-6 structure, the rest colour)")
    if cfg.batch < 2:
        raise InputError(f"--batch must be at least 2 (the ICP nets use batch norm), got {cfg.batch}")
    if cfg.batch % ctx.world_size:
        raise InputError(f"--batch {cfg.batch} must be divisible by the number of processes ({ctx.world_size})")
    targets, reps = prepare_targets(codes, cfg)
    n = targets.shape[0]
    batch_n = n // cfg.batch
    if batch_n == 0:
        raise InputError(f"fewer exemplars than the batch: the bank has {n_bank} styles, {n} training codes after "
                         f"repeating them {reps}x (repeat_to {cfg.repeat_to}), fewer than the batch of {cfg.batch}; "
                         f"use a smaller --batch (at most {n})")
    epochs_official = int(500000 / n)
    steps_per_net = cfg.iters if cfg.iters is not None else max(1, epochs_official) * batch_n
    if steps_per_net < 1:
        raise InputError(f"--iters must be at least 1, got {steps_per_net}")
    total = len(PARTS) * steps_per_net
    device = ctx.device
    if cfg.dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {cfg.dtype!r}")
    dtype = getattr(torch, cfg.dtype)
    local_b = cfg.batch // ctx.world_size
    dims = {"color": (n_latent - N_STRUCTURE) * style_dim, "structure": N_STRUCTURE * style_dim}
    columns = {"color": slice(N_STRUCTURE * style_dim, None), "structure": slice(0, N_STRUCTURE * style_dim)}
    targets = targets.to(device, dtype)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, "init") % (1 << 62))
        model = StyleSampler(N_STRUCTURE, n_latent - N_STRUCTURE, style_dim, cfg.noise_dim).to(device, dtype)
    model.train()
    g_icp = torch.Generator().manual_seed(derived_seed(cfg.seed, "icp"))

    run_config = {"stage": STAGE, "seed": cfg.seed, "batch": cfg.batch, "repeat_to": cfg.repeat_to,
                  "jitter": cfg.jitter, "lr": cfg.lr, "lr_decay_epochs": cfg.lr_decay_epochs, "lr_decay": cfg.lr_decay,
                  "betas": [cfg.beta1, cfg.beta2], "weight_decay": cfg.weight_decay, "noise_dim": cfg.noise_dim,
                  "bank": tensor_fingerprint(codes), "n_latent": n_latent, "steps_per_net": steps_per_net,
                  "dtype": cfg.dtype}
    loop = Loop(STAGE, out, ctx, total, run_config, cfg.save_every, progress, should_stop)
    part_i, epoch, batch_i = 0, 0, 0
    epoch_data = None
    opt_state = None
    state = loop.load(resume, resume_keys(cfg))
    if state is not None:
        apply_state(state, models={"sampler": model}, generators={"icp": g_icp})
        ex = state["extra"]
        part_i, epoch, batch_i = int(ex["part"]), int(ex["epoch"]), int(ex["batch"])
        if batch_i > 0:
            epoch_data = (ex["noise"].to(device, dtype), ex["nearest"].to(device))
            opt_state = state["optimizers"]["adam"]
    done = part_i * steps_per_net + epoch * batch_n + batch_i

    def lr_of(ep: int) -> float:
        return cfg.lr * cfg.lr_decay ** (ep // cfg.lr_decay_epochs)

    def new_optimizer(net: ICPNet) -> torch.optim.Adam:  # re-created every epoch, as the official
        return torch.optim.Adam(net.parameters(), lr=lr_of(epoch), betas=(cfg.beta1, cfg.beta2),
                                weight_decay=cfg.weight_decay)

    opt = None
    if opt_state is not None:  # resumed mid-epoch: that epoch's Adam state
        opt = new_optimizer(getattr(model, PARTS[part_i]))
        opt.load_state_dict(opt_state)

    def parts() -> dict:
        mid_epoch = batch_i > 0
        extra = {"part": part_i, "epoch": epoch, "batch": batch_i,
                 "noise": epoch_data[0] if mid_epoch else None, "nearest": epoch_data[1] if mid_epoch else None,
                 "n_codes": n}
        return {"models": {"sampler": model}, "optimizers": {"adam": opt} if mid_epoch else {},
                "generators": {"icp": g_icp}, "extra": extra}

    loop.check_same_run({"sampler weights": model, "step": done, "random state": g_icp.get_state(),
                         "epoch in progress": epoch_data or (), "optimiser state": opt_state or {}})
    train_module, module_part = None, None

    def step(done: int) -> dict:
        nonlocal part_i, epoch, batch_i, epoch_data, opt, train_module, module_part
        part = PARTS[part_i]
        net: ICPNet = getattr(model, part)
        part_targets = targets[:, columns[part]]
        if module_part != part:
            train_module, module_part = D.wrap_ddp(_ICPTrain(net, synced=ctx.distributed), ctx,
                                                   sync_buffers=False), part
        if epoch_data is None:  # epoch start: map 2 * batch_n noise batches, match every target (same on all ranks)
            net.train()
            noise_all, mapped = [], []
            with torch.no_grad():
                for _ in range(2 * batch_n):
                    e = torch.randn(cfg.batch, cfg.noise_dim, generator=g_icp).to(device, dtype)
                    noise_all.append(e)
                    mapped.append(net(e))
            epoch_data = (torch.cat(noise_all), _nearest(part_targets, torch.cat(mapped)))
        if opt is None:
            opt = new_optimizer(net)
        perm = D.shard(n, ctx, shuffle=True, seed=derived_seed(cfg.seed, "perm", part) % (1 << 62), epoch=epoch)
        rows = torch.tensor(perm[batch_i * local_b:(batch_i + 1) * local_b], device=device)
        noise, nearest = epoch_data
        pred = train_module(noise[nearest[rows]])
        sq = (pred - part_targets[rows]).pow(2).sum()
        loss = sq / (cfg.batch * dims[part]) * ctx.world_size  # DDP averages: the sum is the global MSE
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(D.all_reduce_sum(sq.detach(), ctx)) / (cfg.batch * dims[part])
        batch_i += 1
        part_done = done + 1 - part_i * steps_per_net
        if batch_i == batch_n or part_done == steps_per_net:  # end of an epoch
            epoch, batch_i, opt, epoch_data = epoch + 1, 0, None, None
            if part_done == steps_per_net:  # this net is done; the next starts at epoch 0
                part_i, epoch = part_i + 1, 0
        return {"loss": value, "part": part, "epoch": epoch}

    def finish():
        outputs = [out / SAMPLER_PT, out / SAMPLER_SAFETENSORS]
        model.eval().requires_grad_(False)
        if ctx.is_main:
            save_sampler_safetensors(outputs[1], model, twin=outputs[0])  # sampler.pt + .safetensors, one pair
        loop.notes.append(f"{n_bank} styles x {reps} = {n} training codes, batch {cfg.batch}, {batch_n} steps per "
                          f"epoch, {steps_per_net} steps per net (official default {max(1, epochs_official) * batch_n})")
        return outputs, {"sampler": model}

    return loop.run(done, step, parts, finish)


# --------------------------------------------------------------------------------------------
# Our safetensors format for the sampler
# --------------------------------------------------------------------------------------------
__all__ = ["SAMPLER_PT", "SAMPLER_SAFETENSORS", "SamplerConfig", "load_sampler_safetensors", "prepare_targets",
           "save_sampler_safetensors", "train_sampler"]
