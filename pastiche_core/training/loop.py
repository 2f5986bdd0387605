"""The one resumable training loop every stage runs in.

A stage gives the loop three things: ``step(done) -> info`` (one training step; ``info["loss"]``
is the number reported and kept), ``state() -> parts`` (what a checkpoint holds besides the
losses: ``models``, ``ema``, ``optimizers``, ``generators``, ``extra``; called on every rank,
so a stage may gather from the others in it) and ``finish() -> (outputs, artifacts)`` (called
on every rank once the last step is done). The loop owns the rest, the same for every stage:

* the state file ``OUT/train_state/STAGE.pt`` (:func:`~.checkpointing.state_path`), read on
  resume after checking that the run's settings (``run_config``) match the saved ones on the
  stage's resume keys, and written atomically every ``save_every`` steps, on a stop and at the
  end (``finished``);
* the stop test before every step (``should_stop`` on rank 0, agreed by every rank);
* ``progress(done, total, info)`` on rank 0, with ``"stage"`` and an optional preview;
* numbered snapshots of the trained model every ``snapshot_every`` steps (``snapshot(done)``);
* in a distributed run, the check that every process runs the same settings from the same
  starting state (:meth:`Loop.check_same_run`, called by the stage once its state is loaded),
  and with ``PASTICHE_DIST_TRACE`` set, an ``end`` trace record with ``end_digests()``;
* the :class:`~.common.StageResult`.

The state layout is what the stages wrote before they shared this loop (format version 1):
``extra["losses"]`` (float64) plus the stage's own ``extra`` entries, so older states resume.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed as D
from .checkpointing import load_state, make_state, save_state, state_path
from .common import Progress, ShouldStop, StageResult, check_compatible
from .options import LEGACY_NAMES

Step = Callable[[int], dict]
Parts = Callable[[], dict]
Finish = Callable[[], "tuple[list[Path], dict]"]


@dataclass
class Loop:
    stage: str
    out: Path
    ctx: D.DistContext
    total: int
    run_config: dict
    save_every: int
    progress: Progress | None = None
    should_stop: ShouldStop | None = None
    snapshot_every: int = 0                       # 0: no numbered snapshots
    snapshot: Callable[[int], None] | None = None  # writes the snapshot of step ``done`` (rank 0)
    preview: Callable[[], torch.Tensor | None] | None = None
    sample_every: int = 0                         # steps between previews in ``info`` (0: none)
    end_digests: Callable[[], dict] | None = None  # name -> model for the ``end`` trace record
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return state_path(self.out, self.stage)

    def load(self, resume: bool, keys: Sequence[str] | Callable[[dict], Sequence[str]]) -> dict | None:
        """The saved state when resuming (None for a fresh run or when there is none yet), after
        refusing one made with other settings (``keys``: the run-config entries that must match;
        a callable gets the state first). The losses so far are restored here."""
        if not (resume and self.path.is_file()):
            return None
        state = load_state(self.path, self.stage)
        keys = keys(state) if callable(keys) else keys
        state["config"] = {LEGACY_NAMES.get(k, k): v for k, v in state["config"].items()}  # renamed options
        check_compatible(state["config"], self.run_config, list(keys), self.path)
        self.losses = [float(v) for v in state["extra"]["losses"].tolist()]
        return state

    def check_same_run(self, starting_state: dict) -> None:
        """Before the first step: every process must have this run's settings and the same
        starting state (one error line naming what differs; nothing in a single process)."""
        D.check_same_run(self.ctx, self.run_config, starting_state)

    def stop_requested(self) -> bool:
        if self.should_stop is None and not self.ctx.distributed:
            return False
        return D.stop_requested(bool(self.should_stop is not None and self.ctx.is_main and self.should_stop()),
                                self.ctx)

    def save(self, done: int, parts: Parts, finished: bool = False) -> None:
        content = dict(parts())  # on every rank: a stage may gather its ranks' shares here
        if self.ctx.is_main:
            extra = {**content.pop("extra", {}), "losses": torch.tensor(self.losses, dtype=torch.float64)}
            save_state(self.path, make_state(self.stage, done, self.total, config=self.run_config, extra=extra,
                                             finished=finished, **content))
        D.barrier(self.ctx)

    def run(self, done: int, step: Step, parts: Parts, finish: Finish) -> StageResult:
        """Steps ``done .. total - 1`` (or until stopped), then the stage's outputs."""
        ctx, total = self.ctx, self.total
        stopped = False
        while done < total:
            if self.stop_requested():  # before any state is touched: the checkpoint is "after step done"
                stopped = True
                break
            info = step(done)
            done += 1
            self.losses.append(info["loss"])
            if done < total and done % self.save_every == 0:
                self.save(done, parts)
            if self.snapshot is not None and self.snapshot_every and done % self.snapshot_every == 0 \
                    and ctx.is_main:
                self.snapshot(done)
            if self.progress is not None and ctx.is_main:
                info = {"stage": self.stage, **info}
                if self.preview is not None and self.sample_every and (done % self.sample_every == 0 or done == total):
                    with torch.no_grad():
                        info["preview"] = self.preview()
                self.progress(done, total, info)
        if D.tracing() and self.end_digests is not None:
            D.trace(ctx, "end", stage=self.stage, step=done,
                    weights={name: D.digest(model) for name, model in self.end_digests().items()})
        if stopped:
            self.save(done, parts)
            return StageResult(self.stage, done, total, True, self.path, [], self.losses, self.notes)
        self.save(done, parts, finished=True)
        outputs, artifacts = finish()
        D.barrier(ctx)
        return StageResult(self.stage, done, total, False, self.path, outputs, self.losses, self.notes, artifacts)


class Batches:
    """The step machine of the stages that optimise codes one global batch of images at a time
    (destylize, refine-exstyle): batch ``k``, iteration ``it`` of ``iters`` within it.

    ``begin(k, saved)`` sets up batch ``k`` (``saved``: this rank's share of a batch in progress
    from the state, else None) and returns its live object; ``iterate(live, it) -> info`` is one
    step; ``end(live, k)`` collects the batch's results into ``done``; ``snapshot(live)`` is this
    rank's share of a batch in progress for the state. State ``extra`` (the layout the stages
    wrote before): ``batch_index``, ``iter``, ``done``, ``ranks`` (every rank's share, or None
    between batches).
    """

    def __init__(self, iters: int, ctx: D.DistContext, done: dict, begin, iterate, end, snapshot):
        self.iters, self.ctx, self.done = iters, ctx, done
        self.begin, self.iterate, self.end, self.snapshot = begin, iterate, end, snapshot
        self.k = self.it = 0
        self.saved = None  # this rank's share of the batch in progress, from the state
        self.live = None

    @property
    def steps_done(self) -> int:
        return self.k * self.iters + self.it

    def restore(self, extra: dict) -> None:
        self.k, self.it = int(extra["batch_index"]), int(extra["iter"])
        self.done.clear()
        self.done.update(extra["done"])
        self.saved = extra["ranks"][self.ctx.rank] if extra["ranks"] is not None else None

    def step(self, done: int) -> dict:
        if self.live is None:
            self.live = self.begin(self.k, self.saved)
            self.saved = None
        info = self.iterate(self.live, self.it)
        self.it += 1
        if self.it == self.iters:
            self.end(self.live, self.k)
            self.k, self.it, self.live = self.k + 1, 0, None
        return info

    def extra(self) -> dict:
        ranks = D.gather_objects(self.snapshot(self.live), self.ctx) if self.it > 0 else None
        return {"batch_index": self.k, "iter": self.it, "done": self.done, "ranks": ranks}


def detached_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """An optimiser's state dict with its tensors copied to the CPU (for a batch in progress)."""
    sd = opt.state_dict()
    return {"state": {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


@contextmanager
def dist_session(device: str, given: D.DistContext | None = None) -> Iterator[D.DistContext]:
    """The process group of a stage run: ``given`` (a caller's torchrun context, left open), else
    one set up here (torchrun's environment, or a single process) and closed after the run."""
    ctx = given or D.setup(device)
    try:
        yield ctx
    finally:
        if given is None:
            D.cleanup(ctx)


__all__ = ["Batches", "Loop", "detached_optimizer_state", "dist_session"]
