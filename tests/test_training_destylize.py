"""Stage ``destylize`` (official destylize.py): stage I (encode), stage II (optimise z+ and the
noise through g'), the colour-row copy and the rendering with the original g, stage III
(re-encode), and the resumable state.

Models, all with fixture-recipe weights:

* the pSp **z+** encoder at output size 64 (10 code rows: the smallest size whose codes have
  rows 8.. that the colour copy touches; n_styles must match the generators and be > 7). Its
  IR-SE50 body runs at 256 px whatever the output size, ~1.3 s per image on this CPU;
* g (original) and g' (fine-tuned, = g's weights + a fixed perturbation): StyleGAN2 generators
  of 64 px built with narrow feature maps (32 channels at every resolution, by patching
  ``channel_counts`` while constructing them; the codes stay [10, 512]). A full-width 64 px
  generator costs ~1.2 s per optimisation step here; the algorithm does not depend on widths;
* VGG19 (3 slices) and the IR-SE50 ID network (~0.9 s per step with gradients); the runs use
  ``loss="vgg"`` unless they test the default, LPIPS (its VGG16 backbone from the fixture recipe as
  in test_training_lpips.py, the real heads).

The style images are renders of g' from random z+ codes (64 px PNGs), so stage II has
something to recover.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pastiche_core.errors import InputError
from pastiche_core.models import Backbone, Generator
from pastiche_core.models import stylegan2 as sg2
from pastiche_core.reference import fixture_encoder
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.styles import StyleBank, read_npy_bank
from pastiche_core.training.checkpointing import load_state, state_path
from pastiche_core.training.common import load_style_image
from pastiche_core.training.destylize_stage import DestylizeConfig, destylize, get_lr
from pastiche_core.training.losses import IDLoss, VGG19Features, vgg19_feature_shapes
from pastiche_core.training.lpips import LPIPS, load_heads_file
from test_training_lpips import fixture_backbone

NAMES = ["a_face.png", "b_face.png"]  # sorted: the bank order
ITERS = 4

pytestmark = pytest.mark.usefixtures("single_thread")


def narrow_generator(size: int = 64, width: int = 32) -> Generator:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sg2, "channel_counts", lambda m=2: {r: width for r in (4, 8, 16, 32, 64, 128, 256)})
        gen = Generator(size)
    shapes = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    gen.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()})
    return gen.eval().requires_grad_(False)


def vgg_state(n_slices: int) -> dict[str, torch.Tensor]:
    state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(vgg19_feature_shapes(n_slices)).items()}
    return {k: (v * math.sqrt(2.0 / (v.shape[1] * 9)) if k.endswith(".weight") else v) for k, v in state.items()}


def id_network() -> IDLoss:
    with torch.device("meta"):
        net = Backbone(input_size=112, num_layers=50, mode="ir_se")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()}, strict=True,
                        assign=True)
    return IDLoss(net)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("destylize")
        original = narrow_generator()
        finetuned = narrow_generator()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for k, v in finetuned.state_dict().items():
                if v.is_floating_point() and not k.endswith("kernel") and "noises." not in k:
                    v.add_(0.2 * v.pow(2).mean().sqrt() * torch.randn(v.shape, generator=g))
            z = torch.randn(len(NAMES), finetuned.n_latent, 512, generator=g)
            styles = finetuned(z, input_space="z", noise="stored")
        data = root / "data"
        data.mkdir()
        for name, img in zip(NAMES, styles):
            arr = ((img.clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            Image.fromarray(arr).save(data / name, format="PNG")
        (data / "notes.txt").write_text("not an image")  # ignored: not an image suffix
        return {"root": root, "data": data, "original": original, "finetuned": finetuned,
                "encoder": fixture_encoder(64, "z+"), "vgg": VGG19Features(3).load_features(vgg_state(3)),
                "id_loss": id_network(), "lpips": LPIPS().load_backbone(fixture_backbone()).load_heads(load_heads_file())}
    finally:
        torch.set_num_threads(old)


def cfg(**kw) -> DestylizeConfig:
    base = dict(iters=ITERS, batch=1, size=64, save_every=100, loss="vgg")
    base.update(kw)
    return DestylizeConfig(**base)


def run(s, out, config, **kw):
    kw.setdefault("vgg", s["vgg"])
    kw.setdefault("id_loss", s["id_loss"])
    return destylize(s["finetuned"], s["original"], s["encoder"], s["data"], out, config, **kw)


def _straight_run(setup, out, config, **kw):
    infos = []
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(setup, out, config, progress=lambda d, t, info: infos.append((d, t, info)), **kw)
    finally:
        torch.set_num_threads(old)
    return result, out, infos


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    """The official loss (perceptual + 0.1 ID + z regulariser + noise), 4 steps per image."""
    return _straight_run(setup, tmp_path_factory.mktemp("destylize_ref") / "toon", cfg())


# The resume tests run without the ID term: its IR-SE50 pass (~0.9 s per step) would double their
# time and has nothing to do with resuming; with id_weight 0 no ID network is needed.
NO_ID = dict(id_weight=0.0)


@pytest.fixture(scope="module")
def plain_run(setup, tmp_path_factory):
    return _straight_run(setup, tmp_path_factory.mktemp("destylize_plain") / "toon", cfg(**NO_ID), id_loss=None)


def test_lr_schedule_is_the_official():
    assert get_lr(0.0, 0.1) == 0.0  # linear ramp-up from 0
    assert get_lr(0.025, 0.1) == pytest.approx(0.05)
    assert get_lr(0.5, 0.1) == pytest.approx(0.1)
    assert get_lr(0.875, 0.1) == pytest.approx(0.05)  # half-way down the cosine ramp


def test_loss_goes_down_and_outputs_load(setup, reference_run):
    result, out, infos = reference_run
    assert result.finished and result.total_steps == 2 * ITERS and len(result.losses) == 2 * ITERS
    assert [d for d, _, _ in infos] == list(range(1, 2 * ITERS + 1)) and all(t == 2 * ITERS for _, t, _ in infos)
    assert any("LPIPS" in note for note in result.notes)
    for k, name in enumerate(NAMES):  # per image, the total and the perceptual term go down clearly
        steps = [info for _, _, info in infos[ITERS * k:ITERS * (k + 1)]]
        assert all(s["images"] == [name] and s["stage"] == "destylize" for s in steps)
        assert steps[-1]["loss"] < 0.8 * steps[0]["loss"], [s["loss"] for s in steps]
        assert steps[-1]["image_loss"] < 0.8 * steps[0]["image_loss"], [s["image_loss"] for s in steps]
        assert steps[0]["id_loss"] > 0 and steps[0]["lr"] == 0.0
    # official format: a pickled dict name -> float32 [1, 10, 512] in sorted file order
    assert [p.name for p in result.outputs] == ["exstyle_code.npy", "instyle_code.npy", "exstyle_code.safetensors",
                                                "instyle_code.safetensors"]
    for stem in ("exstyle_code", "instyle_code"):
        official = read_npy_bank(out / f"{stem}.npy")
        assert list(official) == NAMES
        assert all(v.dtype == np.float32 and v.shape == (1, 10, 512) for v in official.values())
        npy, st = StyleBank.load(out / f"{stem}.npy"), StyleBank.load(out / f"{stem}.safetensors")
        assert npy.names == st.names == NAMES and torch.equal(npy.codes, st.codes)
        assert npy.codes.shape == (2, 10, 512) and all(npy[n].shape == (1, 10, 512) for n in NAMES)
        assert torch.equal(npy.codes, result.artifacts[stem.split("_")[0]].codes)
    ex, ins = StyleBank.load(out / "exstyle_code.npy").codes, StyleBank.load(out / "instyle_code.npy").codes
    assert torch.equal(ins[:, 8:], ex[:, 8:]) and not torch.equal(ins[:, :8], ex[:, :8])
    # stage I: the extrinsic codes are the encoder's codes of the style images
    with torch.no_grad():
        assert torch.allclose(setup["encoder"].encode(load_style_image(setup["data"] / NAMES[1], 256)[None]),
                              ex[1:], atol=1e-4)
    # one visualisation per image: [S, g(z), g(z_i)] at 256
    for name in NAMES:
        with Image.open(out / "destylization" / f"{Path(name).stem}.png") as vis:
            assert vis.size == (3 * 256 + 2, 256)
    state = load_state(state_path(out, "destylize"))
    assert state["finished"] and state["step"] == 2 * ITERS


@pytest.mark.parametrize("stop_at", [2, ITERS])  # inside the first image's optimisation; between the images
def test_stop_and_resume_is_bit_exact(setup, plain_run, tmp_path, stop_at):
    result, out, _ = plain_run
    done = {"n": 0}

    def progress(n, total, info):
        done["n"] = n
    stopped = run(setup, tmp_path, cfg(**NO_ID), id_loss=None, progress=progress,
                  should_stop=lambda: done["n"] >= stop_at)
    assert stopped.stopped and stopped.steps_done == stop_at and not stopped.outputs
    assert not (tmp_path / "exstyle_code.npy").exists()
    state = load_state(state_path(tmp_path, "destylize"))
    assert state["step"] == stop_at and (state["extra"]["ranks"] is not None) == (stop_at % ITERS != 0)
    assert list(state["extra"]["done"]["exstyle"]) == NAMES[:stop_at // ITERS]
    resumed = run(setup, tmp_path, cfg(**NO_ID), id_loss=None, resume=True)
    assert resumed.finished and resumed.losses == result.losses
    for stem in ("exstyle_code", "instyle_code"):
        assert torch.equal(StyleBank.load(tmp_path / f"{stem}.npy").codes, StyleBank.load(out / f"{stem}.npy").codes)


def test_resume_refuses_other_settings(setup, tmp_path):
    from pastiche_core.errors import CheckpointError

    stopped = run(setup, tmp_path, cfg(iters=2, loss="pixel", id_weight=0.0), id_loss=None,
                  should_stop=lambda: True)
    assert stopped.stopped and stopped.steps_done == 0
    with pytest.raises(CheckpointError, match="other settings.*iters: checkpoint 2, now 3"):
        run(setup, tmp_path, cfg(iters=3, loss="pixel", id_weight=0.0), id_loss=None, resume=True)


def test_input_errors(setup, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="no style images in .*empty"):
        destylize(setup["finetuned"], setup["original"], setup["encoder"], empty, tmp_path / "o", cfg(),
                  vgg=setup["vgg"], id_loss=setup["id_loss"])
    with pytest.raises(InputError, match="fewer style images than the batch: the folder has 2 images but --batch is 3"):
        run(setup, tmp_path / "o", cfg(batch=3))
    with pytest.raises(InputError, match=r"identity loss .*model_ir_se50\.pth.*or set id_weight 0"):
        run(setup, tmp_path / "o", cfg(), id_loss=None)
    with pytest.raises(InputError, match=r"needs the VGG19 network \(vgg19-dcbb9e9d\.pth"):
        run(setup, tmp_path / "o", cfg(), vgg=None)
    with pytest.raises(InputError, match="needs the z\\+ pSp encoder"):
        destylize(setup["finetuned"], setup["original"], _WPlus(),
                  setup["data"], tmp_path / "o", cfg(), vgg=setup["vgg"], id_loss=setup["id_loss"])
    with pytest.raises(InputError, match="fine-tuned generator is 64px .* but the original is 32px"):
        destylize(setup["finetuned"], narrow_generator(32), setup["encoder"], setup["data"], tmp_path / "o", cfg(),
                  vgg=setup["vgg"], id_loss=setup["id_loss"])
    assert not (tmp_path / "o").exists()  # nothing was written


class _WPlus:
    space, n_styles = "w+", 10


# --------------------------------------------------------------------------------------------
# The loss choice: lpips (the default), vgg, pixel
# --------------------------------------------------------------------------------------------
def test_lpips_is_the_default_and_its_network_is_required(setup, tmp_path):
    assert DestylizeConfig().loss == "lpips"
    with pytest.raises(InputError, match=r"'lpips' destylization loss needs the LPIPS network \(VGG16, "
                                         r"vgg16-397923af\.pth\); or use loss='pixel'"):
        run(setup, tmp_path / "o", DestylizeConfig(iters=1, size=64, id_weight=0.0), id_loss=None)
    with pytest.raises(InputError, match="loss must be one of lpips, vgg, pixel, got 'l2'"):
        run(setup, tmp_path / "o", cfg(loss="l2"))
    assert not (tmp_path / "o").exists()


def test_lpips_loss_is_the_image_term(setup, tmp_path):
    """The first step's image term is LPIPS(g'(z_e) with the image's noise maps, S), the
    official ``percept(img_gen, imgs)``; the optimisation then lowers it."""
    from pastiche_core.training.common import derived_seed, to_size

    infos = []
    result = run(setup, tmp_path, DestylizeConfig(iters=3, size=64, id_weight=0.0, save_every=100), id_loss=None,
                 lpips=setup["lpips"], vgg=None, progress=lambda d, t, info: infos.append(info))
    assert result.finished and any(note.startswith("loss: LPIPS (VGG16, the official)") for note in result.notes)
    assert load_state(state_path(tmp_path, "destylize"))["config"]["loss"] == "lpips"
    g = setup["finetuned"]
    for k, name in enumerate(NAMES):
        image = load_style_image(setup["data"] / name, 256)[None]
        gen = torch.Generator().manual_seed(derived_seed(0, "noise", name))
        noises = [torch.randn(shape, generator=gen) for shape in g.noise_shapes(1)]
        with torch.no_grad():
            z_e = setup["encoder"].encode(image).float()
            expected = setup["lpips"](to_size(g(z_e, input_space="z", noise=noises), 64), to_size(image, 64))
        steps = infos[3 * k:3 * k + 3]
        assert steps[0]["image_loss"] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
        assert steps[-1]["image_loss"] < steps[0]["image_loss"]


def test_a_resumed_vgg_run_keeps_vgg(setup, tmp_path):
    """A run started with the VGG19 distance before LPIPS existed (its state has 'loss': 'vgg' and
    no 'lpips' entry) resumes with vgg when no loss is given; a new run gets lpips."""
    from pastiche_core.training.checkpointing import save_state
    from pastiche_core.training.runner import _loss_choice

    stopped = run(setup, tmp_path, cfg(iters=1, **NO_ID), id_loss=None, should_stop=lambda: True)
    assert stopped.stopped
    path = state_path(tmp_path, "destylize")
    state = load_state(path)
    del state["config"]["lpips"]  # as written before LPIPS was added
    save_state(path, state)
    assert _loss_choice("destylize", {}, tmp_path, resume=True) == "vgg"
    assert _loss_choice("destylize", {"loss": "pixel"}, tmp_path, resume=True) == "pixel"  # as given
    assert _loss_choice("destylize", {}, tmp_path, resume=False) == "lpips"
    assert _loss_choice("destylize", {}, tmp_path / "new", resume=True) == "lpips"
    resumed = run(setup, tmp_path, cfg(iters=1, loss=_loss_choice("destylize", {}, tmp_path, True), **NO_ID),
                  id_loss=None, resume=True)
    assert resumed.finished and resumed.steps_done == 2
    from pastiche_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="loss: checkpoint 'vgg', now 'lpips'"):
        run(setup, tmp_path, cfg(iters=1, loss="lpips", **NO_ID), id_loss=None, lpips=setup["lpips"], resume=True)
