"""The GAN training stages: ``finetune-stylegan`` (official finetune_stylegan.py), ``pretrain``
(pretrain_dualstylegan.py, stages I-II) and ``finetune`` (finetune_dualstylegan.py, stage III),
their shared loop (gan.py: logistic loss, R1, path length, EMA, ADA) and the discriminator.

The discriminator is checked against the official code at full width (fixture weights, outputs
made by the official ``model/stylegan/model.py`` with its native CPU ops:
``fixtures/training/discriminator_official.npz``). The training runs use 64 px models made
narrow (32 feature maps at every resolution, by patching ``channel_counts`` while they are
built and loaded; codes stay [10, 512]): full-width StyleGAN2 keeps 512 channels up to 64 px,
which costs tens of seconds per GAN step on this CPU, and the algorithms do not depend on the
width. "Loss goes down" is measured on fixed evaluation inputs with the starting and the trained
weights (the per-step training losses are too noisy over a few steps to compare).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_close_scaled
from pastiche_core.errors import CheckpointError, InputError
from pastiche_core.models import Backbone, DualStyleGAN, Generator
from pastiche_core.models import discriminator as dmod
from pastiche_core.models import stylegan2 as sg2
from pastiche_core.reference import fixture_encoder
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.styles import StyleBank
from pastiche_core.training.checkpointing import load_state, state_path
from pastiche_core.training.gan import (GANConfig, ImageSet, d_logistic_loss, d_r1_loss, g_path_lengths)
from pastiche_core.training.losses import (IDLoss, VGG19Features, contextual_loss, perceptual_l1,
                                           vgg19_feature_shapes)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "training" / "discriminator_official.npz"
SIZE = 64
NARROW = {r: 32 for r in (4, 8, 16, 32, 64, 128, 256)}

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------
def narrow(on: bool = True) -> None:
    """Build (and load) narrow models while on; the official widths when off."""
    counts = (lambda m=2: dict(NARROW)) if on else ORIGINAL_COUNTS
    sg2.channel_counts = counts
    dmod.channel_counts = counts


ORIGINAL_COUNTS = sg2.channel_counts


@pytest.fixture(autouse=True)
def _narrow_models():
    narrow(True)
    yield
    narrow(False)


class module_setup:
    """Narrow models and one thread (as the tests) inside module-scoped fixtures: the number of
    threads changes float rounding, and the resume tests compare bit for bit."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        narrow(True)

    def __exit__(self, *exc):
        narrow(False)
        torch.set_num_threads(self.threads)


def fixture_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()}


def make_vgg() -> VGG19Features:
    state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(vgg19_feature_shapes(3)).items()}
    state = {k: (v * math.sqrt(2.0 / (v.shape[1] * 9)) if k.endswith(".weight") else v) for k, v in state.items()}
    return VGG19Features(3).load_features(state)


def make_id_loss() -> IDLoss:
    with torch.device("meta"):
        net = Backbone(input_size=112, num_layers=50, mode="ir_se")
    net.load_state_dict(fixture_weights(net), strict=True, assign=True)
    return IDLoss(net)


def make_checkpoints(root: Path) -> Path:
    """root/{stylegan2-ffhq-config-f.pt, faces/, style/}: fixture StyleGAN2 + D, 4 renders as
    "photos", 4 recoloured renders as "style images"."""
    root.mkdir(parents=True, exist_ok=True)
    g = Generator(SIZE)
    gs = fixture_weights(g)
    g.load_state_dict(gs)
    ds = fixture_weights(dmod.Discriminator(SIZE))
    torch.save({"g": gs, "g_ema": gs, "d": ds, "latent_avg": torch.zeros(512)}, root / "stylegan2-ffhq-config-f.pt")
    rng = torch.Generator().manual_seed(0)
    tint = torch.tensor([0.3, -0.3, 0.15]).view(1, 3, 1, 1)
    for sub, styled in (("faces", False), ("style", True)):
        (root / sub).mkdir(exist_ok=True)
        with torch.no_grad():
            imgs = g([torch.randn(4, 512, generator=rng)], noise="stored").clamp(-1, 1)
        if styled:
            imgs = (imgs * 0.5 + tint).clamp(-1, 1)
        for i, im in enumerate(imgs):
            arr = ((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            Image.fromarray(arr).save(root / sub / f"{sub}_{i}.png")
    return root


def gan_config(iters: int, **kw) -> GANConfig:
    kw.setdefault("batch", 2)
    kw.setdefault("save_every", 100)
    return GANConfig(iters=iters, **kw)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    with module_setup():
        return make_checkpoints(tmp_path_factory.mktemp("gan") / "checkpoint")


# --------------------------------------------------------------------------------------------
# Discriminator and losses
# --------------------------------------------------------------------------------------------
def test_discriminator_matches_the_official_code():
    narrow(False)
    ref = np.load(FIXTURE)
    d = dmod.Discriminator(64)
    d.load_state_dict(fixture_weights(d))
    x = torch.from_numpy(ref["d64_input"]).requires_grad_(True)
    logits = d(x)
    (grad,) = torch.autograd.grad(logits.sum(), x)
    assert_close_scaled(logits, torch.from_numpy(ref["d64_logits"]), what="logits")
    # The input gradient goes back through every convolution, and most of its elements are
    # small differences of large terms: float32 summation order alone (another CPU, thread
    # split or conv algorithm) moves it by ~1.5e-3 of its largest value (the fixture differs
    # by 2e-6 at a scale of 1.3e-3, while float32 and float64 runs here agree to 1e-9). A bug
    # moves it by the whole scale.
    ref_grad = torch.from_numpy(ref["d64_grad"])
    assert_close_scaled(grad, ref_grad, rel=1e-2, what="input gradient")
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 2e-3
    d = dmod.Discriminator(256)
    d.load_state_dict(fixture_weights(d))
    x = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(256)).clamp(-1.5, 1.5)
    with torch.no_grad():
        assert_close_scaled(d(x), torch.from_numpy(ref["d256_logits"]), what="256 logits")


def test_discriminator_keys_are_the_official_ones():
    import json

    narrow(False)
    manifest = json.loads((ROOT / "tests" / "fixtures" / "training" / "discriminator_1024_keys.json").read_text())
    with torch.device("meta"):
        d = dmod.Discriminator(1024)
    assert [(k, list(v.shape)) for k, v in d.state_dict().items()] == [(k, s) for k, s in manifest]


def test_discriminator_input_errors():
    d = dmod.Discriminator(SIZE)
    with pytest.raises(ValueError, match=r"takes \[B, 3, 64, 64\]"):
        d(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 4"):
        d(torch.zeros(6, 3, SIZE, SIZE))


def test_r1_and_path_length_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    pred = (x ** 2).sum(dim=(1, 2, 3), keepdim=True)
    r1 = d_r1_loss(pred, x)
    assert torch.allclose(r1, (2 * x).pow(2).reshape(3, -1).sum(1).mean())
    r1.backward()  # differentiable (double backward)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert float(d_logistic_loss(torch.tensor([[10.0]]), torch.tensor([[-10.0]]))) < 1e-3
    latents = torch.randn(2, 3, 5, requires_grad=True)
    images = latents.sum(-1).view(2, 1, 1, 3).expand(2, 3, 4, 3) * 2.0  # d img / d latent = 2 everywhere
    noise = torch.ones(2, 3, 4, 3)
    lengths = g_path_lengths(images, latents, noise)
    # grad per latent element: 2 * (3 * 4 rows*channels) / sqrt(4 * 3); squared-summed over 5, mean over 3
    expected = math.sqrt(5 * (2 * 12 / math.sqrt(12)) ** 2)
    assert torch.allclose(lengths, torch.full((2,), expected))


# --------------------------------------------------------------------------------------------
# finetune-stylegan
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def stylegan_eval(g_state, d_state, real):
    g = Generator(SIZE)
    g.load_state_dict(g_state)
    d = dmod.Discriminator(SIZE)
    d.load_state_dict(d_state)
    fake = g([torch.randn(4, 512, generator=torch.Generator().manual_seed(123))], noise="stored")
    return float(d_logistic_loss(d(real), d(fake))), fake.mean(dim=(0, 2, 3))


def run_finetune_stylegan(ckpts, out, iters, data=None, **kw):
    from pastiche_core.training.stylegan_stage import finetune_stylegan

    cfg_kw = {k: kw.pop(k) for k in list(kw) if k in GANConfig.__dataclass_fields__}
    return finetune_stylegan(ckpts, data or ckpts / "style", out, gan_config(iters, **cfg_kw), **kw)


@pytest.fixture(scope="module")
def stylegan_run(ckpts, tmp_path_factory):
    with module_setup():
        out = tmp_path_factory.mktemp("ftsg") / "toon"
        return run_finetune_stylegan(ckpts, out, 10), out


def test_finetune_stylegan_learns_the_style(ckpts, stylegan_run):
    from pastiche_core.checkpoints import load_stylegan2

    result, out = stylegan_run
    assert result.finished and len(result.losses) == 10 and all(math.isfinite(v) for v in result.losses)
    real = ImageSet(ckpts / "style", SIZE).batch(range(4))
    start = torch.load(ckpts / "stylegan2-ffhq-config-f.pt", weights_only=True)
    state = load_state(result.checkpoint, "finetune-stylegan")
    d_before, colour_before = stylegan_eval(start["g"], start["d"], real)
    d_after, colour_after = stylegan_eval(state["models"]["g"], state["models"]["d"], real)
    target = real.mean(dim=(0, 2, 3))
    assert d_after < 0.9 * d_before                      # D tells the style images from samples better
    assert (colour_after - target).norm() < 0.6 * (colour_before - target).norm()  # samples take the colours
    # official output: {"g_ema"} only, loadable by the inference path (and by destylize)
    assert result.outputs == [out / "finetune-000010.pt", out / "finetune-000010.safetensors"]
    assert set(torch.load(out / "finetune-000010.pt", weights_only=True)) == {"g_ema"}
    for path in result.outputs:
        g, _ = load_stylegan2(path)
        assert all(torch.equal(a, state["ema"]["g_ema"][k]) for k, a in g.state_dict().items())


def test_finetune_stylegan_stop_and_resume_is_bit_exact(ckpts, stylegan_run, tmp_path):
    result, out = stylegan_run
    run = tmp_path / "toon"
    calls = []
    stopped = run_finetune_stylegan(ckpts, run, 10, should_stop=lambda: len(calls) >= 5,
                                    progress=lambda n, t, i: calls.append(n))
    assert stopped.stopped and stopped.steps_done == 5 and not list(run.glob("finetune-*"))
    resumed = run_finetune_stylegan(ckpts, run, 10, resume=True)
    assert resumed.finished and resumed.losses == result.losses
    a = torch.load(run / "finetune-000010.pt", weights_only=True)["g_ema"]
    b = torch.load(out / "finetune-000010.pt", weights_only=True)["g_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    final_a, final_b = load_state(resumed.checkpoint), load_state(result.checkpoint)
    for group in ("models", "ema"):
        for name, sd in final_b[group].items():
            assert all(torch.equal(final_a[group][name][k], v) for k, v in sd.items()), (group, name)


def test_resume_with_augmentation_and_after_sigkill(ckpts, tmp_path):
    """ADA on (its p, statistics and RNG are in the state); a process killed with SIGKILL right
    after its step-4 checkpoint resumes to the weights of an uninterrupted run."""
    opts = dict(augment=True, augment_p=0.5)
    straight = run_finetune_stylegan(ckpts, tmp_path / "straight", 6, **opts)
    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_training_gan as T
        torch.set_num_threads(1)  # after the import: conftest (imported by it) sets the suite's count
        from pathlib import Path
        T.narrow(True)
        def progress(n, total, info):
            if n == 4:  # the step-4 checkpoint is on disk when progress(4) runs
                os.kill(os.getpid(), signal.SIGKILL)
        T.run_finetune_stylegan(Path({str(ckpts)!r}), Path({str(run)!r}), 6, save_every=2, progress=progress,
                                augment=True, augment_p=0.5)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_state(state_path(run, "finetune-stylegan"))["step"] == 4
    resumed = run_finetune_stylegan(ckpts, run, 6, resume=True, **opts)
    assert resumed.losses == straight.losses
    a = torch.load(run / "finetune-000006.pt", weights_only=True)["g_ema"]
    b = torch.load(tmp_path / "straight" / "finetune-000006.pt", weights_only=True)["g_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="other settings"):
        run_finetune_stylegan(ckpts, run, 6, resume=True, augment=True, augment_p=0.25)


def eight_images(ckpts: Path, folder: Path) -> Path:
    """The 4 style images of ``ckpts`` and their quarter turns: 8 distinct images in ``folder``."""
    folder.mkdir()
    for p in sorted((ckpts / "style").iterdir()):
        Image.open(p).save(folder / p.name)
        Image.open(p).transpose(Image.Transpose.ROTATE_90).save(folder / f"r_{p.name}")
    return folder


def test_two_processes_match_one(ckpts, tmp_path):
    """torchrun, 2 gloo processes x 4 images == 1 process with the global batch of 8 (the
    discriminator's stddev groups coincide: rank r holds samples r, r+2, ...)."""
    data = eight_images(ckpts, tmp_path / "eight")
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_training_gan as T
        torch.set_num_threads(1)  # after the import: conftest (imported by it) sets the suite's count
        from pathlib import Path
        from pastiche_core.training.checkpointing import load_state
        T.narrow(True)
        out = Path(sys.argv[1])
        result = T.run_finetune_stylegan(Path({str(ckpts)!r}), out, 3, data=Path({str(data)!r}), batch=8)
        torch.save(result.losses, out / ("losses%s.pt" % os.environ["RANK"]))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path / "ddp")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ddp" / f"losses{r}.pt") for r in (0, 1)]
    assert ranks[0] == ranks[1]
    single = run_finetune_stylegan(ckpts, tmp_path / "single", 3, data=data, batch=8)
    assert single.losses == pytest.approx(ranks[0], rel=1e-4, abs=1e-5)
    a = load_state(state_path(tmp_path / "ddp", "finetune-stylegan"))
    b = load_state(state_path(tmp_path / "single", "finetune-stylegan"))
    for group, name in (("models", "g"), ("models", "d"), ("ema", "g_ema")):
        for k, v in b[group][name].items():
            assert torch.allclose(a[group][name][k], v, atol=2e-4, rtol=1e-3), (name, k)


def test_finetune_stylegan_input_errors(ckpts, tmp_path):
    with pytest.raises(InputError, match="fewer style images than the batch: 4 images.*--batch 8"):
        run_finetune_stylegan(ckpts, tmp_path / "o", 2, batch=8)
    with pytest.raises(CheckpointError, match="missing stylegan2-ffhq-config-f.pt.*FFHQ StyleGAN2"):
        from pastiche_core.training.stylegan_stage import finetune_stylegan

        finetune_stylegan(tmp_path, ckpts / "style", tmp_path / "o", gan_config(2))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="has no images"):
        from pastiche_core.training.stylegan_stage import finetune_stylegan

        finetune_stylegan(ckpts, empty, tmp_path / "o", gan_config(2))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# pretrain (stages I-II) and finetune (stage III)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def pretrain_eval(g_state, vgg, inject: int = 5) -> float:
    g = DualStyleGAN(SIZE)
    g.load_state_dict(g_state)
    rng = torch.Generator().manual_seed(77)
    z1, z2 = torch.randn(4, 512, generator=rng), torch.randn(4, 512, generator=rng)
    target = g.generator([z1, z2], inject_index=inject, noise="stored")
    fake = g([z1], g.generator.mapping(z2), interp_weights=[1.0] * g.n_latent, noise="stored")
    return float(perceptual_l1(vgg(fake), vgg(target), layers=(0, 1, 2), weights=(0.5, 0.5, 0.5)))


@pytest.fixture(scope="module")
def dual_runs(ckpts, tmp_path_factory):
    """pretrain (16 steps: phases 1, 1, 16) then finetune (8 steps) into one folder."""
    from pastiche_core.training.dualstylegan_stage import finetune_dualstylegan, pretrain_dualstylegan

    with module_setup():
        out = tmp_path_factory.mktemp("dual") / "toon"
        vgg = make_vgg()
        pre = pretrain_dualstylegan(ckpts, ckpts / "faces", out, fixture_encoder(SIZE, "z+"), vgg, gan_config(16))
        names = sorted(p.name for p in (ckpts / "style").iterdir())
        rng = torch.Generator().manual_seed(3)
        instyle = StyleBank(names, torch.randn(len(names), 10, 512, generator=rng), space="z+")
        exstyle = StyleBank(names, torch.randn(len(names), 10, 512, generator=rng), space="z+")
        from pastiche_core.checkpoints import safe_torch_load

        start = safe_torch_load(out / "generator-pretrain.pt", "generator-pretrain.pt")["g"]
        fin = finetune_dualstylegan(ckpts, ckpts / "style", out, vgg, make_id_loss(), instyle, exstyle,
                                    gan_config(8))
        return {"pretrain": pre, "finetune": fin, "out": out, "vgg": vgg, "instyle": instyle,
                "exstyle": exstyle, "start": start}


def test_pretrain_learns_the_mixing_target(ckpts, dual_runs):
    result, out, vgg = dual_runs["pretrain"], dual_runs["out"], dual_runs["vgg"]
    assert result.finished and result.total_steps == 1 + 1 + 16
    torch.manual_seed(0)
    initial = DualStyleGAN(SIZE)  # what the stage starts from (seeded init + the FFHQ g_ema inside)
    initial.generator.load_state_dict(torch.load(ckpts / "stylegan2-ffhq-config-f.pt", weights_only=True)["g_ema"])
    state = load_state(result.checkpoint, "pretrain")
    before, after = pretrain_eval(initial.state_dict(), vgg), pretrain_eval(state["models"]["g"], vgg)
    assert after < 0.95 * before, (before, after)
    # only the extrinsic path and T_s train; the intrinsic StyleGAN2 stays the FFHQ one
    for k, v in initial.state_dict().items():
        if k.startswith("generator."):
            assert torch.equal(state["models"]["g"][k], v), k
    # the official file, read back weights-only (args is an allow-listed argparse.Namespace)
    from pastiche_core.checkpoints import safe_torch_load

    saved = safe_torch_load(out / "generator-pretrain.pt", "generator-pretrain.pt")
    assert set(saved) == {"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}
    assert saved["args"].iter == 16 and saved["args"].subspace_freq == 4
    assert os.path.samefile(out / "generator-pretrain.pt", out / "generator-pretrain-000016.pt")


@torch.no_grad()
def finetune_eval(g_state, vgg, instyle, exstyle, images):
    g = DualStyleGAN(SIZE)
    g.load_state_dict(g_state)
    fake = g([instyle], g.generator.mapping(exstyle), interp_weights=[1.0] * g.n_latent, noise="stored")
    feats, target = vgg(fake), vgg(images)
    return (float(perceptual_l1(feats, target, layers=(1, 2), weights=(0.5, 1.0))),
            float(contextual_loss(feats[2], target[2])))


def test_finetune_learns_the_exemplars_and_loads_for_inference(ckpts, dual_runs):
    from pastiche_core.checkpoints import load_dualstylegan

    result, out, vgg = dual_runs["finetune"], dual_runs["out"], dual_runs["vgg"]
    assert result.finished and len(result.losses) == 8
    names = dual_runs["instyle"].names
    ins = torch.cat([dual_runs["instyle"][n] for n in names])
    exs = torch.cat([dual_runs["exstyle"][n] for n in names])
    images = ImageSet(ckpts / "style", SIZE).batch(range(len(names)))
    state = load_state(result.checkpoint, "finetune")
    perc0, cx0 = finetune_eval(dual_runs["start"], vgg, ins, exs, images)
    perc1, cx1 = finetune_eval(state["models"]["g"], vgg, ins, exs, images)
    assert perc1 < 0.9 * perc0 and cx1 < cx0, (perc0, perc1, cx0, cx1)
    assert (out / "generator.pt").is_file() and (out / "generator-000008.pt").is_file()
    for path in (out / "generator.pt", out / "generator.safetensors"):
        g = load_dualstylegan(path)
        assert all(torch.equal(v, state["ema"]["g_ema"][k]) for k, v in g.state_dict().items())
        with torch.no_grad():
            image = g(ins[:1], exs[:1], exstyle_space="z", noise="stored")
        assert image.shape == (1, 3, SIZE, SIZE) and torch.isfinite(image).all()


def test_finetune_input_errors(ckpts, dual_runs, tmp_path):
    from pastiche_core.training.dualstylegan_stage import finetune_dualstylegan

    out = dual_runs["out"]
    other = StyleBank(["nope.png"], torch.zeros(1, 10, 512), space="z+")
    with pytest.raises(InputError, match="not in"):
        finetune_dualstylegan(ckpts, ckpts / "style", out, dual_runs["vgg"], make_id_loss(), other, other,
                              gan_config(2))
    with pytest.raises(CheckpointError, match="missing generator-pretrain.pt"):
        finetune_dualstylegan(tmp_path, ckpts / "style", tmp_path / "o", dual_runs["vgg"], make_id_loss(),
                              dual_runs["instyle"], dual_runs["exstyle"], gan_config(2))


def test_numbered_snapshots_and_a_sample_grid(ckpts, dual_runs, tmp_path, capsys):
    """finetune with snapshot_every 2: generator-000002.pt / -000004.pt (six digits; never the
    pretrain file's name) and samples-NNNNNN.png; a snapshot is a generator inference loads."""
    import shutil

    from pastiche_core import cli
    from pastiche_core.pipeline import StylePipeline
    from pastiche_core.training.dualstylegan_stage import finetune_dualstylegan

    out = tmp_path / "toon"
    out.mkdir()
    shutil.copyfile(dual_runs["out"] / "generator-pretrain.pt", out / "generator-pretrain.pt")
    with module_setup():
        result = finetune_dualstylegan(ckpts, ckpts / "style", out, dual_runs["vgg"], make_id_loss(),
                                       dual_runs["instyle"], dual_runs["exstyle"], gan_config(4, snapshot_every=2))
    assert result.finished
    assert sorted(p.name for p in out.glob("generator-0*.pt")) == ["generator-000002.pt", "generator-000004.pt"]
    assert (out / "generator-pretrain.pt").is_file()
    for step in (2, 4):
        with Image.open(out / f"samples-{step:06d}.png") as im:
            assert im.size == (4 * SIZE, SIZE)
    from pastiche_core.checkpoints import safe_torch_load

    def g_ema(name):
        return safe_torch_load(out / name, name)["g_ema"]

    snap, final = g_ema("generator-000002.pt"), g_ema("generator-000004.pt")
    assert list(snap) == list(final) and any(not torch.equal(snap[k], final[k]) for k in snap)
    # the last snapshot is the finished run's generator
    assert all(torch.equal(final[k], v) for k, v in g_ema("generator.pt").items())
    # inference picks a snapshot instead of generator.pt (narrow test models: the path, not the weights)
    pipe = StylePipeline.from_folder(tmp_path, "toon", allow_demo=False, generator=out / "generator-000002.pt")
    assert pipe.paths.generator == out / "generator-000002.pt"
    code = cli.main(["stylize", str(out / "samples-000002.png"), "--checkpoints", str(tmp_path), "--style", "toon",
                     "--generator", str(out / "nope.pt"), "--out", str(tmp_path / "x.png")])
    assert code == 2 and "--generator" in capsys.readouterr().err


def test_a_finished_run_extends_with_more_iters(ckpts, tmp_path):
    """--resume with a larger --iters continues a finished finetune-stylegan run: the same
    weights and losses, bit for bit, as one run of that many steps; fewer iters are refused."""
    from pastiche_core.checkpoints import safe_torch_load

    with module_setup():
        short = run_finetune_stylegan(ckpts, tmp_path / "a", 2)
        extended = run_finetune_stylegan(ckpts, tmp_path / "a", 4, resume=True)
        straight = run_finetune_stylegan(ckpts, tmp_path / "b", 4)
        assert short.finished and extended.finished and extended.steps_done == 4
        assert extended.losses == straight.losses and extended.losses[:2] == short.losses
        a = safe_torch_load(tmp_path / "a" / "finetune-000004.pt", "finetune")["g_ema"]
        b = safe_torch_load(tmp_path / "b" / "finetune-000004.pt", "finetune")["g_ema"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        with pytest.raises(CheckpointError, match="iters: checkpoint 4, now 3"):
            run_finetune_stylegan(ckpts, tmp_path / "a", 3, resume=True)
