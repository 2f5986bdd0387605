"""Stage ``sampler`` (official train_sampler.py): ICP training of the structure/colour nets.

Small settings keep it fast: a bank of 6 codes of a 256 px model (14 rows), repeated to 96
training codes, batch 16 (6 steps per epoch) -- the algorithm is the official one, only the
sizes (1000 codes, batch 128, 31248 steps) are smaller.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pastiche_core.errors import CheckpointError, InputError
from pastiche_core.models.sampler import StyleSampler
from pastiche_core.pipeline import StylePipeline
from pastiche_core.styles import StyleBank
from pastiche_core.training.checkpointing import load_state, state_path
from pastiche_core.training.sampler_stage import SamplerConfig, load_sampler_safetensors, train_sampler

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6  # per epoch with the settings below


pytestmark = pytest.mark.usefixtures("single_thread")


def make_bank(n: int = 6, rows: int = 14) -> StyleBank:
    g = torch.Generator().manual_seed(0)
    return StyleBank([f"Cartoons_{i:05d}_01.jpg" for i in range(n)], torch.randn(n, rows, 512, generator=g))


def config(iters: int, **kw) -> SamplerConfig:
    return SamplerConfig(iters=iters, batch=16, repeat_to=96, **kw)


def weights(path) -> dict[str, torch.Tensor]:
    return StyleSampler.from_checkpoint(path).state_dict()


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run of 2 x 15 steps (two and a half epochs per net)."""
    out = tmp_path_factory.mktemp("sampler_ref")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_sampler(make_bank(), out, config(15))
    finally:
        torch.set_num_threads(old)
    return result, out


def test_loss_goes_down_and_outputs_load(reference_run, tmp_path):
    result, out = reference_run
    assert result.finished and result.steps_done == result.total_steps == 30 and len(result.losses) == 30
    for part in range(2):  # colour, then structure: the last epoch fits better than the first
        losses = result.losses[part * 15:(part + 1) * 15]
        assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    # official sampler.pt: {"color", "structure"} state dicts, tensors only
    raw = torch.load(out / "sampler.pt", weights_only=True)
    assert set(raw) == {"color", "structure"}
    assert tuple(raw["color"]["lin_out.weight"].shape) == (7 * 512, 128)
    assert tuple(raw["structure"]["lin_out.weight"].shape) == (7 * 512, 128)
    model = StyleSampler.from_checkpoint(out / "sampler.pt")
    assert (model.n_structure, model.n_color) == (7, 7)
    assert_same(model.state_dict(), load_sampler_safetensors(out / "sampler.safetensors").state_dict())
    assert_same(model.state_dict(), result.artifacts["sampler"].state_dict())
    codes = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (8, 14, 512) and torch.isfinite(codes).all()
    # the inference pipeline finds and loads it from a style folder (our safetensors first)
    pipe = StylePipeline.from_folder(out.parent, out.name, allow_demo=False)
    assert pipe.paths.sampler == out / "sampler.safetensors"
    assert_same(pipe.sampler.state_dict(), model.state_dict())


def test_stop_and_resume_is_bit_exact(reference_run, tmp_path):
    result, out = reference_run
    for stop_at in (8, 15, 21):  # mid-epoch of the colour net, between the nets, mid-epoch of the structure net
        run = tmp_path / f"stop{stop_at}"
        done = {"n": 0}

        def progress(n, total, info):
            done["n"] = n
        stopped = train_sampler(make_bank(), run, config(15, save_every=1000), progress=progress,
                                should_stop=lambda: done["n"] >= stop_at)
        assert stopped.stopped and stopped.steps_done == stop_at and not (run / "sampler.pt").exists()
        assert load_state(state_path(run, "sampler"))["step"] == stop_at
        resumed = train_sampler(make_bank(), run, config(15), resume=True)
        assert resumed.finished and resumed.losses == result.losses
        assert_same(weights(run / "sampler.pt"), weights(out / "sampler.pt"))


def test_resume_after_sigkill(reference_run, tmp_path):
    """A process killed (SIGKILL) right after its step-8 checkpoint resumes to the same weights."""
    result, out = reference_run
    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_training_sampler import config, make_bank
        from pastiche_core.training.sampler_stage import train_sampler
        def progress(n, total, info):
            if n == 8:  # the checkpoint of step 8 is on disk when progress(8) runs
                os.kill(os.getpid(), signal.SIGKILL)
        train_sampler(make_bank(), {str(run)!r}, config(15, save_every=4), progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert load_state(state_path(run, "sampler"))["step"] == 8
    resumed = train_sampler(make_bank(), run, config(15), resume=True)
    assert resumed.losses == result.losses
    assert_same(weights(run / "sampler.pt"), weights(out / "sampler.pt"))


def test_resume_refuses_other_settings(reference_run, tmp_path):
    _, out = reference_run
    with pytest.raises(CheckpointError, match="other settings.*batch: checkpoint 16, now 32"):
        train_sampler(make_bank(), out, SamplerConfig(iters=15, batch=32, repeat_to=96), resume=True)
    other = make_bank()
    other.add("extra.jpg", torch.zeros(14, 512))
    with pytest.raises(CheckpointError, match="bank"):
        train_sampler(other, out, config(15), resume=True)


def test_two_processes_match_one(tmp_path):
    """torchrun, 2 gloo processes of 8 codes each == 1 process with the global batch of 16.

    Run in float64: ICP training amplifies rounding differences (a mere reordering of the rows
    of a batch moves float32 weights by ~1e-4 within a few Adam steps -- BatchNorm gradients
    are differences of nearly equal terms and Adam rescales tiny gradients to full steps), so
    only float64 shows that the two-process update *is* the single-process one."""
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_training_sampler import config, make_bank
        from pastiche_core.training.sampler_stage import train_sampler
        out = sys.argv[1]
        result = train_sampler(make_bank(), out, config(9, dtype="float64"))
        torch.save(result.artifacts["sampler"].state_dict(), os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
        if os.environ["RANK"] == "0":
            torch.save(result.losses, os.path.join(out, "losses.pt"))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path / "ddp")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert_same(rank0, rank1)                                  # every rank ends with the same weights
    saved = weights(tmp_path / "ddp" / "sampler.pt")  # rank 0 saved them (as float32, the official dtype)
    assert all(torch.equal(saved[k], rank0[k].to(saved[k].dtype)) for k in saved)
    single = train_sampler(make_bank(), tmp_path / "single", config(9, dtype="float64"))
    assert single.losses == pytest.approx(torch.load(tmp_path / "ddp" / "losses.pt"), rel=1e-9)
    single = single.artifacts["sampler"].state_dict()
    for k in single:  # same global batch: equal up to float64 rounding (amplified ~1e7x: ~1e-8 seen)
        assert torch.allclose(rank0[k], single[k], rtol=0, atol=1e-6), (k, float((rank0[k] - single[k]).abs().max()))


def test_fewer_codes_than_the_batch(tmp_path):
    with pytest.raises(InputError, match="fewer exemplars than the batch.*3 styles, 3 training codes"):
        train_sampler(make_bank(3), tmp_path, SamplerConfig(iters=2, batch=8, repeat_to=3))
    with pytest.raises(InputError, match="divisible"):
        from pastiche_core.training.distributed import DistContext
        train_sampler(make_bank(), tmp_path, SamplerConfig(iters=2, batch=15, repeat_to=96),
                      dist_ctx=DistContext(rank=0, world_size=2))
    assert not (tmp_path / "train_state").exists()


def test_pipeline_reads_the_sampler_safetensors(tmp_path):
    """Our sampler.safetensors stands in for sampler.pt, as the pipeline's folder layout promises."""
    from pastiche_core.models.sampler import StyleSampler, save_sampler_safetensors
    from pastiche_core.pipeline import demo_sampler

    model = demo_sampler()
    path = tmp_path / "sampler.safetensors"
    save_sampler_safetensors(path, model)
    loaded = StyleSampler.from_checkpoint(path, dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    a = model.sample(3, generator=g)
    b = loaded.float().sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
