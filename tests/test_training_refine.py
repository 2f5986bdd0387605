"""Stage ``refine-exstyle`` (official refine_exstyle.py): per-exemplar optimisation of the
extrinsic code (+ noise maps) against the generator.

The generator is a small DualStyleGAN (32 px; res_index 6: the official 7 structure rows) with fixture-recipe
weights, saved as an official ``generator.pt``; a 256 px model costs ~15 s per step on this
CPU, and the algorithm does not depend on the size. The style images are renders of the
generator from perturbed codes, so the refinement has something to recover. VGG19 uses the
fixture recipe over torchvision's key names (He-rescaled, see test_training.py); so does LPIPS's
VGG16 (see test_training_lpips.py; the heads are the real ones). The library-level runs use
``loss="vgg"`` unless they test the default, LPIPS; the CLI runs use the CLI's default, lpips.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pastiche_core import cli
from pastiche_core.checkpoints import load_dualstylegan
from pastiche_core.errors import InputError
from pastiche_core.models import DualStyleGAN
from pastiche_core.models.sampler import StyleSampler
from pastiche_core.pipeline import StylePipeline
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.styles import StyleBank, read_npy_bank, write_npy_bank
from pastiche_core.training.checkpointing import load_state, state_path
from pastiche_core.training.losses import VGG19Features, vgg19_feature_shapes
from pastiche_core.training.lpips import LPIPS, load_heads_file
from pastiche_core.training.refine_stage import RefineConfig, refine_exstyle_codes
from test_training_lpips import fixture_backbone

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["Cartoons_00038_07.jpg", "Cartoons_00167_01.png"]
TRAIN_COMMAND = ("pastiche_core.commands.train", "train a stage of the official pipeline")


pytestmark = pytest.mark.usefixtures("single_thread")


def vgg_state(n_slices: int) -> dict[str, torch.Tensor]:
    state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(vgg19_feature_shapes(n_slices)).items()}
    return {k: (v * math.sqrt(2.0 / (v.shape[1] * 9)) if k.endswith(".weight") else v) for k, v in state.items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """checkpoints/toon/{generator.pt, exstyle_code.npy, instyle_code.npy}, data/ images, models/vgg19."""
    root = tmp_path_factory.mktemp("refine")
    gen = DualStyleGAN(32, res_index=6)
    shapes = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    gen.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()})
    gen.eval().requires_grad_(False)
    sdir = root / "checkpoints" / "toon"
    sdir.mkdir(parents=True)
    torch.save({"g_ema": gen.state_dict()}, sdir / "generator.pt")
    g = torch.Generator().manual_seed(0)
    ex = torch.randn(len(NAMES), gen.n_latent, 512, generator=g)
    ins = torch.randn(len(NAMES), gen.n_latent, 512, generator=g)
    write_npy_bank(sdir / "exstyle_code.npy", {n: ex[i:i + 1].numpy() for i, n in enumerate(NAMES)})
    write_npy_bank(sdir / "instyle_code.npy", {n: ins[i:i + 1].numpy() for i, n in enumerate(NAMES)})
    data = root / "data"
    data.mkdir()
    with torch.no_grad():
        target = gen(ins, gen.map_exstyle(ex + 0.7 * torch.randn(ex.shape, generator=g)), interp_weights=[1.0] * 8)
    for name, img in zip(NAMES, target):
        arr = ((img.clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(data / name, format="PNG")
    models = root / "models"
    models.mkdir()
    torch.save(vgg_state(5), models / "vgg19-dcbb9e9d.pth")
    torch.save(fixture_backbone(), models / "vgg16-397923af.pth")
    vgg = VGG19Features(3).load_features(vgg_state(3))
    return {"root": root, "sdir": sdir, "data": data, "models": models, "vgg": vgg,
            "lpips": LPIPS().load_backbone(fixture_backbone()).load_heads(load_heads_file()),
            "generator": load_dualstylegan(sdir / "generator.pt"),
            "exstyle": StyleBank.load(sdir / "exstyle_code.npy"), "instyle": StyleBank.load(sdir / "instyle_code.npy")}


def refine(s, out, cfg, **kw):
    return refine_exstyle_codes(s["generator"], s["exstyle"], s["instyle"], s["data"], out, cfg, vgg=s["vgg"], **kw)


def cfg(**kw) -> RefineConfig:
    base = dict(iters=3, batch=1, size=32, lr_color=0.05, lr_structure=0.005, save_every=100,
                loss="vgg")  # (the README's 0.1 overshoots in 3 steps)
    base.update(kw)
    return RefineConfig(**base)


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("refine_ref") / "toon"
    infos = []
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = refine(setup, out, cfg(), progress=lambda d, t, info: infos.append(info))
    finally:
        torch.set_num_threads(old)
    return result, out, infos


def test_loss_goes_down_and_outputs_load(setup, reference_run):
    result, out, infos = reference_run
    assert result.finished and result.total_steps == 6 and len(result.losses) == 6
    for k in range(2):  # per exemplar: both the image term and the total go down
        steps = infos[3 * k:3 * k + 3]
        assert steps[-1]["image_loss"] < steps[0]["image_loss"] and steps[-1]["loss"] < steps[0]["loss"], steps
    # official format: a pickled dict name -> float32 [1, 8, 512] in the bank's order (read without pickle)
    official = read_npy_bank(out / "refined_exstyle_code.npy")
    assert list(official) == NAMES
    assert all(v.dtype == np.float32 and v.shape == (1, 8, 512) for v in official.values())
    npy, st = StyleBank.load(out / "refined_exstyle_code.npy"), StyleBank.load(out / "refined_exstyle_code.safetensors")
    assert npy.names == st.names == NAMES and torch.equal(npy.codes, st.codes)
    assert torch.equal(npy.codes, result.artifacts["bank"].codes)
    moved = (npy.codes - setup["exstyle"].codes).abs()
    split = len(setup["generator"].structure_layers)  # the model's structure rows (7, as the official)
    assert moved[:, split:].mean() > moved[:, :split].mean() > 0  # colour lr 0.05 > structure lr 0.005
    # the inference path picks the refined bank (safetensors first) from a style folder
    pipe = StylePipeline.from_folder(out.parent, out.name, allow_demo=False)
    assert pipe.paths.bank == out / "refined_exstyle_code.safetensors" and pipe.bank.names == NAMES


@pytest.mark.parametrize("stop_at", [4, 3])  # inside the second exemplar's optimisation; between exemplars
def test_stop_and_resume_is_bit_exact(setup, reference_run, tmp_path, stop_at):
    result, out, _ = reference_run
    done = {"n": 0}

    def progress(n, total, info):
        done["n"] = n
    stopped = refine(setup, tmp_path, cfg(), progress=progress, should_stop=lambda: done["n"] >= stop_at)
    assert stopped.stopped and stopped.steps_done == stop_at
    assert not (tmp_path / "refined_exstyle_code.npy").exists()
    state = load_state(state_path(tmp_path, "refine-exstyle"))
    assert state["step"] == stop_at and (state["extra"]["ranks"] is not None) == (stop_at % 3 != 0)
    resumed = refine(setup, tmp_path, cfg(), resume=True)
    assert resumed.losses == result.losses
    assert torch.equal(StyleBank.load(tmp_path / "refined_exstyle_code.npy").codes,
                       StyleBank.load(out / "refined_exstyle_code.npy").codes)


def test_input_errors(setup, tmp_path):
    with pytest.raises(InputError, match="fewer exemplars than the batch: the bank has 2 style codes but --batch is 3"):
        refine(setup, tmp_path, cfg(batch=3))
    with pytest.raises(InputError, match="needs the VGG19 network"):
        refine_exstyle_codes(setup["generator"], setup["exstyle"], None, setup["data"], tmp_path, cfg(), vgg=None)
    with pytest.raises(InputError, match="1 of the 2 style images named in the bank are not in.*Cartoons_00167_01.png"):
        empty = tmp_path / "partial"
        empty.mkdir()
        (empty / NAMES[0]).write_bytes((setup["data"] / NAMES[0]).read_bytes())
        refine_exstyle_codes(setup["generator"], setup["exstyle"], None, empty, tmp_path, cfg(), vgg=setup["vgg"])
    assert not (tmp_path / "train_state").exists()


def test_two_processes_match_one(setup, tmp_path):
    """torchrun, 2 gloo processes with a global batch of 2: each rank refines its own exemplar
    (DistributedSampler shard), rank 0 writes the bank -- the same codes, bit for bit, as one
    process refining the exemplars one at a time (every loss term is per exemplar)."""
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from pathlib import Path
        from test_training_refine import cfg, vgg_state
        from pastiche_core.checkpoints import load_dualstylegan
        from pastiche_core.styles import StyleBank
        from pastiche_core.training.losses import VGG19Features
        from pastiche_core.training.refine_stage import refine_exstyle_codes
        sdir = Path({str(setup["sdir"])!r})
        refine_exstyle_codes(load_dualstylegan(sdir / "generator.pt"), StyleBank.load(sdir / "exstyle_code.npy"),
                             StyleBank.load(sdir / "instyle_code.npy"), {str(setup["data"])!r}, sys.argv[1],
                             cfg(iters=2, batch=2), vgg=VGG19Features(3).load_features(vgg_state(3)))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path / "ddp")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = refine(setup, tmp_path / "single", cfg(iters=2, batch=1))
    ddp = StyleBank.load(tmp_path / "ddp" / "refined_exstyle_code.npy")
    assert ddp.names == NAMES and torch.equal(ddp.codes, single.artifacts["bank"].codes)


# --------------------------------------------------------------------------------------------
# Through the CLI
# --------------------------------------------------------------------------------------------
def run_cli(monkeypatch, capsys, *argv):
    monkeypatch.setitem(cli.COMMANDS, "train", TRAIN_COMMAND)
    code = cli.main(["train", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_refine_then_sampler(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))
    out = tmp_path / "out"
    common = ["--checkpoints", setup["root"] / "checkpoints", "--style", "toon", "--out", out, "--quiet"]
    code, stdout, err = run_cli(monkeypatch, capsys, "refine-exstyle", *common, "--data", setup["data"],
                                "--loss-models", setup["models"], "--iters", 2, "--size", 32, "--lr-preset", "readme")
    assert code == 0, err
    assert stdout.split() == [str(out / "refined_exstyle_code.npy"), str(out / "refined_exstyle_code.safetensors")]
    assert "loss: LPIPS (VGG16, the official) + contextual loss" in err and "lr colour 0.1, structure 0.005" in err
    assert load_state(state_path(out, "refine-exstyle"))["config"]["loss"] == "lpips"  # the default
    refined = StyleBank.load(out / "refined_exstyle_code.npy")
    assert refined.names == NAMES and not torch.equal(refined.codes, setup["exstyle"].codes)
    # the sampler stage picks up the refined bank from the same --out
    code, stdout, err = run_cli(monkeypatch, capsys, "sampler", *common, "--iters", 3, "--batch", 16)
    assert code == 0, err
    assert str(out / "refined_exstyle_code.safetensors") in err
    sampler = StyleSampler.from_checkpoint(out / "sampler.pt")
    assert (sampler.n_structure, sampler.n_color) == (7, 1)
    # --resume of a finished run rewrites the outputs and trains nothing
    code, _, err = run_cli(monkeypatch, capsys, "sampler", *common, "--iters", 3, "--batch", 16, "--resume")
    assert code == 0, err


def test_cli_missing_vgg19_fails_before_training(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "refine-exstyle", "--checkpoints", setup["root"] / "checkpoints",
                                "--style", "toon", "--data", setup["data"], "--out", out, "--size", 32, "--loss", "vgg")
    assert code == 2 and stdout == ""
    line = err.strip()
    assert line.startswith("error: missing vgg19-dcbb9e9d.pth (VGG19 ImageNet weights") and "\n" not in line
    assert "perceptual and contextual losses of refine-exstyle" in line and "--loss pixel" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert not out.exists()  # nothing was trained or written
    # the default, lpips: its VGG16 backbone first, then VGG19 for the contextual term
    code, stdout, err = run_cli(monkeypatch, capsys, "refine-exstyle", "--checkpoints", setup["root"] / "checkpoints",
                                "--style", "toon", "--data", setup["data"], "--out", out, "--size", 32)
    line = err.strip()
    assert code == 2 and stdout == "" and "\n" not in line
    assert line.startswith("error: missing vgg16-397923af.pth (VGG16 ImageNet weights")
    assert "refine-exstyle's LPIPS loss" in line and str(tmp_path / "torch" / "hub" / "checkpoints") in line
    only16 = tmp_path / "only16"
    only16.mkdir()
    (only16 / "vgg16-397923af.pth").symlink_to(setup["models"] / "vgg16-397923af.pth")
    code, _, err = run_cli(monkeypatch, capsys, "refine-exstyle", "--checkpoints", setup["root"] / "checkpoints",
                           "--style", "toon", "--data", setup["data"], "--out", out, "--size", 32,
                           "--loss-models", only16)
    assert code == 2 and err.startswith("error: missing vgg19-dcbb9e9d.pth") and "contextual loss" in err
    assert not out.exists()
    code, _, err = run_cli(monkeypatch, capsys, "refine-exstyle", "--checkpoints", setup["root"] / "checkpoints",
                           "--style", "toon", "--data", setup["data"], "--out", out, "--batch", 3,
                           "--loss-models", setup["models"], "--size", 32)
    assert code == 2 and "fewer exemplars than the batch" in err
    code, _, err = run_cli(monkeypatch, capsys, "refine-exstyle", "--checkpoints", setup["root"], "--style", "nope",
                           "--data", setup["data"], "--out", out, "--loss", "pixel")
    assert code == 2 and "missing generator.pt" in err


# --------------------------------------------------------------------------------------------
# The loss choice: lpips (the default), vgg, pixel
# --------------------------------------------------------------------------------------------
def test_lpips_loss_is_lpips_plus_contextual(setup, tmp_path):
    """The first step's image term is LPIPS + CX(VGG19 relu3_1) of the render of the bank's code
    with the exemplar's noise maps: the official ``percept(img_gen, imgs) + LCX``."""
    from pastiche_core.training.common import derived_seed, load_style_image, to_size
    from pastiche_core.training.losses import contextual_loss

    assert RefineConfig().loss == "lpips"
    with pytest.raises(InputError, match=r"'lpips' refinement loss needs the LPIPS network \(VGG16, "
                                         r"vgg16-397923af\.pth\)"):
        refine(setup, tmp_path, cfg(loss="lpips"))
    infos = []
    result = refine(setup, tmp_path, cfg(loss="lpips", iters=2), lpips=setup["lpips"],
                    progress=lambda d, t, info: infos.append(info))
    assert result.finished and any(n.startswith("loss: LPIPS (VGG16, the official) + contextual") for n in result.notes)
    gen, lp, vgg = setup["generator"], setup["lpips"], setup["vgg"]
    for k, name in enumerate(NAMES):
        g = torch.Generator().manual_seed(derived_seed(0, "noise", name))
        noises = [torch.randn(shape, generator=g) for shape in gen.generator.noise_shapes(1)]
        target = load_style_image(setup["data"] / name, 32)[None]
        with torch.no_grad():
            image = to_size(gen(setup["instyle"][name], gen.map_exstyle(setup["exstyle"][k]), input_space="z",
                                exstyle_space="w", interp_weights=[1.0] * gen.n_latent, noise=noises, use_res=True), 32)
            expected = lp(image, target) + contextual_loss(vgg(image)[2], vgg(target)[2], 0.2, per_sample=True)
        assert infos[2 * k]["image_loss"] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)


def test_cli_loss_choice_and_resume_keeps_the_runs_loss(setup, tmp_path, monkeypatch, capsys):
    """--loss takes lpips|vgg|pixel; without it a new run is lpips and --resume keeps the loss the
    run was started with (a vgg run, with a state as written before LPIPS existed)."""
    from pastiche_core.training.checkpointing import save_state

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))
    out = tmp_path / "out"
    common = ["refine-exstyle", "--checkpoints", setup["root"] / "checkpoints", "--style", "toon", "--out", out,
              "--data", setup["data"], "--loss-models", setup["models"], "--iters", 1, "--size", 32, "--quiet"]
    code, _, err = run_cli(monkeypatch, capsys, *common, "--loss", "vgg")
    assert code == 0, err
    assert "loss: VGG19 perceptual distance" in err
    path = state_path(out, "refine-exstyle")
    state = load_state(path)
    assert state["config"]["loss"] == "vgg"
    del state["config"]["lpips"]  # as written before LPIPS was added
    save_state(path, state)
    code, _, err = run_cli(monkeypatch, capsys, *common, "--resume")
    assert code == 0, err
    assert "loss: VGG19 perceptual distance" in err  # kept vgg; lpips would have been refused
    code, _, err = run_cli(monkeypatch, capsys, *common, "--resume", "--loss", "lpips")
    assert code == 2 and "loss: checkpoint 'vgg', now 'lpips'" in err
    code, _, err = run_cli(monkeypatch, capsys, *common, "--force", "--loss", "pixel")
    assert code == 0 and "loss: L1 image loss" in err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, capsys, *common, "--loss", "l2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: argument --loss: invalid choice: 'l2'")
    assert err.replace("'", "").count("choose from lpips, vgg, pixel") == 1  # quoting differs between Pythons
