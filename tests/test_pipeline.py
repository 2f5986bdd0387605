"""The whole style_transfer.py path against the official runs (fixture weights, 1024 px).

Tolerances (fixtures/pipeline README): atol 1e-4 on codes, 1e-3 on images; the saved uint8 image
may differ by one level where a value sits on a quantisation boundary (compared here as 4x4
means, so at most 1 level on average).
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pastiche_core.errors import InputError
from pastiche_core.pipeline import StylePipeline, stylize
from pastiche_core.reference import fixture_encoder, fixture_model
from pastiche_core.styles import StyleBank

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def official_pipeline():
    enc = fixture_encoder(1024, "z+")
    enc_w = copy.copy(enc)  # the fixture encoder_wplus.pt has the same weights; only the space differs
    enc_w.space = "w+"
    pipe = StylePipeline(None)
    pipe._generator = fixture_model("dualstylegan", 1024).use_fast_path(True, channels_last=True)
    pipe._encoders = {"z+": enc, "w+": enc_w}
    pipe._bank = StyleBank.load(FIX / "styles" / "exstyle_code.npy")
    return pipe


@pytest.fixture(scope="module")
def photo():
    with np.load(FIX / "encoder" / "081680_uint8.npz") as z:
        return z["rgb"]


def test_seeded_noise_matches_official_draws(official_pipeline):
    """--seed 0 draws the 17 maps as torch.manual_seed(0) + normal_() per layer does."""
    g = official_pipeline.generator.generator
    maps = g.resolve_noise("random", 1, torch.zeros(1), torch.Generator().manual_seed(0))
    with np.load(FIX / "pipeline" / "noise_le256.npz") as z:
        for i in range(13):
            assert torch.equal(maps[i], torch.from_numpy(z[f"noise_{i}"])), i


@pytest.mark.parametrize("run", ["default", "preserve_color", "wplus", "wplus_preserve_color"])
def test_style_transfer_matches_official_run(run, official_pipeline, photo):
    res = stylize(photo, pipeline=official_pipeline, style_id=26, seed=0, wplus=run.startswith("wplus"),
                  preserve_color=run.endswith("preserve_color"))
    with np.load(FIX / "pipeline" / f"{run}.npz") as z:
        exp = {k: z[k] for k in z.files}
    assert res.style_name == "Cartoons_00038_07.jpg"
    for key, got in [("instyle", res.instyle), ("exstyle_latent", res.exstyle_latent), ("exstyle", res.exstyle)]:
        err = np.abs(got.numpy() - exp[key]).max()
        assert err < 1e-4, (key, err)
    assert res.raw.shape == (1, 3, 1024, 1024)
    pooled = F.adaptive_avg_pool2d(res.raw, 256).numpy()
    assert np.abs(pooled - exp["img_gen_unclamped_pool256"]).max() < 1e-3
    assert res.image.dtype == np.uint8 and res.image.shape == (1024, 1024, 3)
    u8 = res.image.astype(np.float32).reshape(256, 4, 256, 4, 3).mean((1, 3))
    assert np.abs(u8 - exp["output_uint8_pool4"]).max() <= 1.0


def test_default_style_id_is_the_official_53():
    pipe = StylePipeline(None)
    pipe._bank = StyleBank([f"s{i}" for i in range(60)], torch.randn(60, 18, 512))
    assert pipe.style_code()[1] == "s53"
    pipe._bank = StyleBank([f"s{i}" for i in range(28)], torch.randn(28, 18, 512))
    assert pipe.style_code()[1] == "s0"  # smaller banks (the demo's) start at 0


@pytest.mark.parametrize("preserve_color", [False, True])
def test_batch_with_per_image_seeds_equals_separate_calls(preserve_color):
    """A batch with one seed per image (video frames, the Generate node's random noise) gives
    each image what a one-image call with its seed gives, in one generator call; a shared
    exemplar code works with per-face colour preservation."""
    from pastiche_core.models import DualStyleGAN

    torch.manual_seed(6)
    pipe = StylePipeline(None)
    pipe._generator = DualStyleGAN(32, style_dim=512, n_mlp=8, channel_multiplier=1).eval()
    with torch.no_grad():  # noise strengths start at 0
        for name, p in pipe._generator.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    ins, ex = torch.randn(3, 8, 512), torch.randn(1, 8, 512)
    w = [0.75] * 7 + [1.0]
    seeds = [11, 12, 11]
    with torch.inference_mode():
        batch = pipe.generate(ins, ex, weights=w, seed=seeds, preserve_color=preserve_color)[0]
        alone = torch.cat([pipe.generate(ins[b: b + 1], ex, weights=w, seed=s, preserve_color=preserve_color)[0]
                           for b, s in enumerate(seeds)])
        other = pipe.generate(ins, ex, weights=w, seed=[1, 2, 3], preserve_color=preserve_color)[0]
    assert batch.shape == (3, 3, 32, 32)
    assert (batch - alone).abs().max().item() < 1e-4
    assert (other - batch).abs().max().item() > 1e-3  # the seeds matter
    with pytest.raises(InputError, match="one seed per image"):
        pipe.generate(ins, ex, weights=w, seed=[1, 2])
