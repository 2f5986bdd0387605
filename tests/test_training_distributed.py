"""Distributed training really is distributed: a real ``torchrun --nproc_per_node 2`` launch of
``python -m pastiche_core train finetune-stylegan`` (gloo, CPU) with ``PASTICHE_DIST_TRACE`` set,
whose per-rank trace files (see :mod:`pastiche_core.training.distributed`) show

* both processes ran as ranks 0 and 1 of a world of 2 (a run that ignored torchrun would be two
  world-1 runs, each training on every image),
* each step's global batch was split into disjoint halves and every epoch covered every image
  exactly once,
* both ranks ended with bit-identical weights that differ from the start (the gradients were
  averaged; without it every rank would train its own model on its own half) and are what rank 0
  saved;

and that a rank started with another seed, or from another copy of the starting checkpoint,
stops the run before the first step with one ``error:`` line naming what differs (also in the
sampler stage: every stage calls the same check).

The models are the narrow 64 px ones of test_training_gan.py (the worker patches the channel
counts before calling the CLI): full-width GAN steps cost a minute each on CI's CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pastiche_core.training import distributed as D

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STAGE = "finetune-stylegan"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The narrow 64 px checkpoint, 8 style images and the torchrun worker."""
    import test_training_gan as T

    base = tmp_path_factory.mktemp("dist")
    with T.module_setup():
        ckpts = T.make_checkpoints(base / "checkpoint")
    data = T.eight_images(ckpts, base / "eight")
    worker = base / "worker.py"
    # the CLI arguments come as JSON in the environment (torchrun would take some of them for its own
    # abbreviated options, e.g. --start); RANK1_ARGS: extra ones for rank 1 only (a rank that disagrees)
    worker.write_text(textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(TESTS)!r})
        import torch
        import test_training_gan as T
        torch.set_num_threads(1)
        T.narrow(True)
        from pastiche_core import cli
        argv = json.loads(os.environ["WORKER_ARGV"])
        if os.environ["RANK"] == "1":
            argv += json.loads(os.environ.get("RANK1_ARGS", "[]"))
        sys.exit(cli.main(argv))
    """))
    return ckpts, data, worker


def torchrun(worker: Path, argv: list[str], trace: Path, rank1: tuple[str, ...] = ()):
    """``torchrun --nproc_per_node 2`` of ``python -m pastiche_core ARGV`` (through the worker)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
               WORKER_ARGV=json.dumps(argv), RANK1_ARGS=json.dumps(list(rank1)), **{D.TRACE_ENV: str(trace)})
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker)], capture_output=True, text=True, timeout=600, env=env)


def train_gan(setup, out: Path, trace: Path, *extra: str, rank1: tuple[str, ...] = ()):
    """finetune-stylegan, 4 steps of a global batch of 4 (2 per rank) over the 8 images: 2 epochs."""
    ckpts, data, worker = setup
    argv = ["train", STAGE, "--checkpoints", str(ckpts), "--data", str(data), "--out", str(out), "--batch", "4",
            "--iters", "4", "--quiet", "--no-face-check", *extra]
    return torchrun(worker, argv, trace, rank1)


def read_trace(trace: Path) -> list[list[dict]]:
    """Each rank's trace records, in order (rank 0 first)."""
    return [[json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]


def test_two_ranks_split_every_batch_and_end_with_the_same_weights(setup, tmp_path):
    from pastiche_core.training.checkpointing import load_state, state_path

    out, trace = tmp_path / "out", tmp_path / "trace"
    proc = train_gan(setup, out, trace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = read_trace(trace)
    for r, records in enumerate(ranks):
        assert {(rec["rank"], rec["world_size"]) for rec in records} == {(r, 2)}
        assert [rec["event"] for rec in records] == ["start"] + ["batch"] * 4 + ["end"]
    starts = [records[0] for records in ranks]
    assert starts[0]["settings"] == starts[1]["settings"] and starts[0]["state"] == starts[1]["state"]

    # every step: two disjoint halves of the global batch of 4; every epoch (2 steps): all 8 images once
    names = sorted(p.name for p in setup[1].iterdir())
    batches = [[rec["images"] for rec in records[1:5]] for records in ranks]
    for step in range(4):
        mine, theirs = batches[0][step], batches[1][step]
        assert len(mine) == len(theirs) == 2 and not set(mine) & set(theirs), (step, mine, theirs)
    for epoch in (0, 1):
        seen = [n for r in (0, 1) for step in (2 * epoch, 2 * epoch + 1) for n in batches[r][step]]
        assert sorted(seen) == names, (epoch, seen)

    # the gradients were averaged: both ranks hold the same weights, trained (not the start), saved by rank 0
    ends = [records[-1] for records in ranks]
    assert ends[0]["step"] == ends[1]["step"] == 4
    assert ends[0]["weights"] == ends[1]["weights"]
    for name in ("g", "d", "g_ema"):
        assert ends[0]["weights"][name] != starts[0]["state"][f"{name} weights"], name
    saved = load_state(state_path(out, STAGE), STAGE)
    assert D.digest(saved["models"]["g"]) == ends[0]["weights"]["g"]
    assert D.digest(saved["models"]["d"]) == ends[0]["weights"]["d"]
    assert D.digest(saved["ema"]["g_ema"]) == ends[0]["weights"]["g_ema"]


def _refused(proc, out: Path, trace: Path) -> str:
    """The run failed before its first step, with an ``error:`` line and no traceback of ours;
    returns that line."""
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr[-3000:]
    assert f'File "{ROOT / "pastiche_core"}' not in proc.stderr, proc.stderr[-3000:]
    for records in read_trace(trace):
        assert [rec["event"] for rec in records] == ["start"]  # compared, then stopped: not one batch
    assert not list(out.rglob("*.pt"))                          # no state, no outputs
    return errors[0]


def test_a_rank_with_another_seed_is_refused(setup, tmp_path):
    out, trace = tmp_path / "out", tmp_path / "trace"
    proc = train_gan(setup, out, trace, rank1=("--seed", "1"))
    error = _refused(proc, out, trace)
    assert "training processes disagree: rank 1 of 2 has other settings than rank 0 (seed)" in error, error
    assert "same command" in error


def test_a_rank_with_another_copy_of_the_checkpoint_is_refused(setup, tmp_path):
    """Same file name and settings, other bytes (e.g. a stale copy on one node): the starting
    weights are compared, not just the settings."""
    ckpts = setup[0]
    name = "stylegan2-ffhq-config-f.pt"
    state = torch.load(ckpts / name, weights_only=True)
    key = next(k for k in state["d"] if k.endswith("weight"))
    state["d"][key] = state["d"][key] + 1e-3
    other = tmp_path / "node2"
    other.mkdir()
    torch.save(state, other / name)
    out, trace = tmp_path / "out", tmp_path / "trace"
    proc = train_gan(setup, out, trace, "--start", str(ckpts / name), rank1=("--start", str(other / name)))
    error = _refused(proc, out, trace)
    assert "rank 1 of 2 has other starting state than rank 0 (d weights)" in error, error
    assert "same checkpoint and data files on every node" in error


def test_a_sampler_rank_with_another_seed_is_refused(setup, tmp_path):
    """The check guards the other stages too (here the ICP sampler: no images, its own loop)."""
    from pastiche_core.styles import StyleBank

    codes = torch.randn(6, 14, 512, generator=torch.Generator().manual_seed(0))
    StyleBank([f"style_{i}.jpg" for i in range(6)], codes).save_npy(tmp_path / "exstyle_code.npy")
    out, trace = tmp_path / "out", tmp_path / "trace"
    argv = ["train", "sampler", "--checkpoints", str(tmp_path), "--out", str(out), "--iters", "2", "--batch", "8",
            "--quiet"]
    error = _refused(torchrun(setup[2], argv, trace, rank1=("--seed", "1")), out, trace)
    assert "rank 1 of 2 has other settings than rank 0 (seed)" in error, error


def test_digest_tells_apart_values_dtypes_and_shapes():
    a = torch.arange(6, dtype=torch.float32)
    assert D.digest(a) == D.digest(a.clone())
    assert D.digest(a) != D.digest(a.double())
    assert D.digest(a) != D.digest(a.view(2, 3))
    b = a.clone()
    b[3] = torch.nextafter(b[3], torch.tensor(10.0))  # one ulp
    assert D.digest(a) != D.digest(b)
    assert D.digest({"x": 1, "y": [1, 2]}) == D.digest({"y": [1, 2], "x": 1})
    assert D.digest({"x": 1}) != D.digest({"x": 1.5})
    m = torch.nn.Linear(2, 2)
    assert D.digest(m) == D.digest(m.state_dict())
    assert D.digest(torch.zeros(2, dtype=torch.bfloat16)) != D.digest(torch.zeros(2, dtype=torch.float16))


def test_a_single_process_checks_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv(D.TRACE_ENV, raising=False)
    D.check_same_run(D.DistContext(), {"seed": 0}, {"w": torch.zeros(2)})  # no group, no error, no file
    monkeypatch.setenv(D.TRACE_ENV, str(tmp_path / "t"))
    D.check_same_run(D.DistContext(), {"seed": 0}, {"w": torch.zeros(2)})
    (record,) = [json.loads(line) for line in (tmp_path / "t" / "rank0.jsonl").read_text().splitlines()]
    assert record["event"] == "start" and record["world_size"] == 1
    assert record["settings"] == {"seed": D.digest(0)} and record["state"] == {"w": D.digest(torch.zeros(2))}
