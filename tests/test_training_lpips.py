"""LPIPS-VGG (pastiche_core.training.lpips) against the official DualStyleGAN LPIPS code.

tests/fixtures/lpips/lpips_vgg_official.npz holds distances computed by the official
``lpips.PerceptualLoss(model="net-lin", net="vgg")`` (made by make_lpips_fixture.py beside it:
its docstring has the recipe) on three cases: B=2 at 256, B=3 at 64 (one identical pair), B=2 at
40 x 56. The VGG16 backbone is the fixture recipe over torchvision's ``features.*`` keys with He
scaling, rebuilt here from the seed; the heads are the real LPIPS v0.1 file the package ships.

Measured: float32 max abs difference to the official float32 distances 1.9e-9 (distances
0.02-0.14); the official float32 vs float64 spread is 4.4e-9. The bar, 2e-7, is ~50x the
spread and ~0.001 % of the smallest non-zero distance, while leaving out the heads (all ones)
or the scaling layer moves the distances by orders of magnitude more (asserted below).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core.errors import CheckpointError
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.training import lpips as L
from pastiche_core.training.losses import MissingLossNetworkError, find_loss_network

FIX = Path(__file__).parent / "fixtures" / "lpips"
CASES = ("b2_256", "b3_64", "b2_40x56")
ATOL_F32 = 2e-7
ATOL_F64 = 1e-12

pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=1)
def fixture_backbone() -> dict[str, torch.Tensor]:
    """As make_lpips_fixture.fixture_backbone: the recipe over the manifest's features.* keys, He-scaled."""
    shapes = {k: tuple(v) for k, v in json.loads((FIX / "vgg16_torchvision_features.json").read_text())["features"].items()}
    state = fixture_state_dict(shapes)
    return {k: torch.from_numpy((v * np.float32(math.sqrt(2.0 / (v.shape[1] * 9)))).astype(np.float32)
                                if k.endswith(".weight") else v) for k, v in state.items()}


@pytest.fixture(scope="module")
def official():
    return np.load(FIX / "lpips_vgg_official.npz")


@pytest.fixture(scope="module")
def model():
    return L.LPIPS().load_backbone(fixture_backbone()).load_heads(L.load_heads_file())


@pytest.fixture(scope="module")
def model64():
    return L.LPIPS().load_backbone(fixture_backbone()).load_heads(L.load_heads_file()).double()


def inputs(official, case: str, dtype=torch.float32):
    return tuple(torch.from_numpy(official[f"in_{case}_{s}"]).to(dtype) / 127.5 - 1 for s in "xy")


def test_backbone_keys_are_torchvision_vgg16s():
    manifest = json.loads((FIX / "vgg16_torchvision_features.json").read_text())["features"]
    assert L.vgg16_feature_shapes() == {k: tuple(v) for k, v in manifest.items()}


@pytest.mark.parametrize("case", CASES)
def test_matches_the_official_lpips_float32(model, official, case):
    x, y = inputs(official, case)
    with torch.no_grad():
        d = model(x, y)
        layers = model.distance(model.features(x), model.features(y), per_layer=True)
    assert d.dtype == torch.float32 and d.shape == (x.shape[0],)
    np.testing.assert_allclose(d.numpy(), official[f"out_{case}"], rtol=0, atol=ATOL_F32)
    np.testing.assert_allclose(torch.stack(layers).numpy(), official[f"out_{case}_layers"], rtol=0, atol=ATOL_F32)


@pytest.mark.parametrize("case", CASES[1:])  # the 256 case adds ~10 s of float64 convs and nothing else
def test_matches_the_official_lpips_float64(model64, official, case):
    x, y = inputs(official, case, torch.float64)
    with torch.no_grad():
        d = model64(x, y)
    assert d.dtype == torch.float64
    np.testing.assert_allclose(d.numpy(), official[f"out_{case}_f64"], rtol=0, atol=ATOL_F64)


def test_the_heads_and_the_scaling_layer_matter(model, official):
    """The fixture tells the official LPIPS from its near misses by far more than the bar."""
    x, y = inputs(official, "b3_64")
    expected = official["out_b3_64"]
    plain = L.LPIPS().load_backbone(fixture_backbone())
    for head in plain.heads:
        head.weight.fill_(1.0)  # the unweighted distance ('--loss vgg' formula on VGG16)
    unscaled = L.LPIPS().load_backbone(fixture_backbone()).load_heads(L.load_heads_file())
    unscaled.shift.zero_()
    unscaled.scale.fill_(1.0)
    with torch.no_grad():
        assert np.abs(plain(x, y).numpy() - expected).max() > 1e4 * ATOL_F32
        assert np.abs(unscaled(x, y).numpy() - expected).max() > 1e3 * ATOL_F32
        assert torch.equal(model(x, x), torch.zeros(3))


def test_gradients_flow_to_the_image_only(model, official):
    x, y = inputs(official, "b3_64")
    x = x.clone().requires_grad_(True)
    target = [f.detach() for f in model.features(y)]
    d = model.distance(model.features(x), target)
    torch.testing.assert_close(d.detach(), model(x.detach(), y).detach(), rtol=0, atol=1e-7)
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training  # always in eval mode (no dropout)


def test_heads_file_is_the_lpips_v01_vgg_file():
    import hashlib

    assert hashlib.sha256(L.HEADS_FILE.read_bytes()).hexdigest() == L.HEADS_SHA256
    state = L.load_heads_file()
    assert {k: tuple(v.shape) for k, v in state.items()} == L.heads_shapes()
    assert all((v >= 0).all() for v in state.values())  # LPIPS clamps its learned weights to >= 0
    note = (L.HEADS_FILE.parent / "LPIPS_LICENSE.txt").read_text()
    assert L.HEADS_SHA256 in note and "Copyright (c) 2018, Richard Zhang" in note


def test_a_changed_heads_file_is_refused(tmp_path):
    bad = tmp_path / "vgg.pth"
    data = bytearray(L.HEADS_FILE.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        L.load_heads_file(bad)


def test_found_and_loaded_from_a_folder(tmp_path, official):
    folder = tmp_path / "models"
    folder.mkdir()
    torch.save(fixture_backbone(), folder / "vgg16-397923af.pth")
    lp = L.load_lpips([folder], use_hub_cache=False)
    x, y = inputs(official, "b3_64")
    with torch.no_grad():
        np.testing.assert_allclose(lp(x, y).numpy(), official["out_b3_64"], rtol=0, atol=ATOL_F32)


def test_missing_backbone_names_the_file_and_the_folder(tmp_path):
    with pytest.raises(MissingLossNetworkError) as err:
        L.load_lpips([tmp_path], purpose="destylize's LPIPS loss", use_hub_cache=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing vgg16-397923af.pth" in msg and str(tmp_path) in msg and "destylize's LPIPS loss" in msg


def test_a_vgg19_file_is_not_a_vgg16(tmp_path):
    from pastiche_core.training.losses import vgg19_feature_shapes

    state = {k: torch.zeros(s) for k, s in vgg19_feature_shapes(5).items()}
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    assert find_loss_network("vgg16", [tmp_path], use_hub_cache=False) == tmp_path / "vgg16-397923af.pth"
    with pytest.raises(CheckpointError, match=r"not torchvision's VGG16 state dict \(vgg16-397923af\.pth\): "
                                              r"\d+ missing keys"):
        L.load_lpips([tmp_path], use_hub_cache=False)


def test_images_must_be_rgb_batches(model):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="one shape"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 48))
