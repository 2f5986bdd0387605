"""pSp encoders (z+ ``encoder.pt``, w+ ``encoder_wplus.pt``) and the ArcFace IR-SE50 of the ID
loss against the official code's outputs (tests/fixtures/encoder/README.md).

Weights: ``fixture_weights.fixture_state_dict`` over the official key lists (the manifests
copied beside the fixtures), written to real ``encoder.pt`` / ``encoder_wplus.pt`` files and
read back through ``PSPEncoder.from_checkpoint``. Both files hold the same tensors, as in the
fixtures; they differ in ``opts`` (the w+ one lacks ``output_size``) and file name.

Tolerances (rtol 0): the official float32 run differs from a float64 run of the same code
by at most 1.6e-6 on codes and 8.9e-6 on the 1024 reconstruction (fixture REPORT.json,
``fp32_vs_fp64_maxabs``). ``ATOL_CODES = 1e-4`` (~60x that spread: codes, pyramid features,
mapped w+, whose values reach |x| ~ 6) and ``ATOL_IMAGE = 2e-4`` (~20x: unclamped
reconstructions, the generator suite's bar) leave room for other summation orders
(channels_last convolutions) while any structural mistake moves outputs by >1e-2.
ID embeddings are unit vectors with entries <= 0.15: ``ATOL_FEATS = 1e-5``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_scaled
from pastiche_core.reference.fixture_weights import fixture_state_dict, fixture_tensor
from pastiche_core.errors import CheckpointError, InputError
from pastiche_core.models.irse import Backbone, arcface_input
from pastiche_core.models.psp import PSPEncoder, infer_space

FIX = Path(__file__).parent / "fixtures" / "encoder"
ATOL_CODES = 1e-4
ATOL_IMAGE = 2e-4
ATOL_FEATS = 1e-5


def manifest(name: str) -> dict:
    return json.loads((FIX / name).read_text())


def shapes_of(man: dict) -> dict[str, tuple]:
    return {t["key"]: tuple(t["shape"]) for t in man["tensors"]}


def npz(name: str) -> dict[str, np.ndarray]:
    with np.load(FIX / name) as z:
        return {k: z[k] for k in z.files}


def maxdiff(a, b) -> float:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def content_1024(stem: str) -> torch.Tensor:
    """The official style_transfer.py input: PIL RGB -> ToTensor -> Normalize(0.5, 0.5), batch 1."""
    rgb = torch.from_numpy(npz(f"{stem}_uint8.npz")["rgb"])
    x = rgb.permute(2, 0, 1)[None].float() / 255
    return (x - 0.5) / 0.5


# --------------------------------------------------------------------------------------------
# Weights and checkpoint files (built once per module: ~300M elements)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder_weights():
    sd = fixture_state_dict(shapes_of(manifest("encoder.json")))
    return ({k: torch.from_numpy(v) for k, v in sd.items()},
            torch.from_numpy(fixture_tensor("latent_avg", (18, 512))))


@pytest.fixture(scope="module")
def checkpoint_files(encoder_weights, tmp_path_factory):
    state_dict, latent_avg = encoder_weights
    folder = tmp_path_factory.mktemp("psp")
    paths = {}
    for space, man_name, file_name in (("z+", "encoder.json", "encoder.pt"), ("w+", "encoder_wplus.json", "encoder_wplus.pt")):
        opts = manifest(man_name)["opts"]
        paths[space] = folder / file_name
        torch.save({"state_dict": state_dict, "opts": opts, "latent_avg": latent_avg}, paths[space])
    assert "output_size" not in manifest("encoder_wplus.json")["opts"]
    return paths


def _run(path, fn):
    model = PSPEncoder.from_checkpoint(path)
    with torch.inference_mode():
        out = fn(model)
    out.update(space=model.space, reason=model.space_reason, latent_avg=model.latent_avg.clone(),
               training=model.training, frozen=not any(p.requires_grad for p in model.parameters()))
    return out


@pytest.fixture(scope="module")
def zplus_out(checkpoint_files):
    """One z+ pass: 081680 as the official 1024 crop (the encoder pools it to 256)."""
    def fn(model):
        codes, feats = model.encode(content_1024("081680"), return_features=True)
        image = model.reconstruct(codes)
        return {"codes": codes, "feats": feats, "wplus": model.to_wplus(codes),
                "image_size": tuple(image.shape), "img_rec_pool256": F.adaptive_avg_pool2d(image, 256)}
    return _run(checkpoint_files["z+"], fn)


@pytest.fixture(scope="module")
def wplus_out(checkpoint_files):
    """One w+ pass, official forward (resize=True: face_pool), a batch of the two 256 inputs."""
    def fn(model):
        x = torch.from_numpy(np.concatenate([npz(f"wplus_{s}.npz")["input_256"] for s in ("081680", "077417")]))
        image, codes = model(x, resize=True)
        return {"codes": codes, "img_rec_pool256": image, "wplus": model.to_wplus(codes), "input": x}
    return _run(checkpoint_files["w+"], fn)


# --------------------------------------------------------------------------------------------
# State-dict contract
# --------------------------------------------------------------------------------------------
def test_state_dict_keys_match_official_manifests():
    with torch.device("meta"):
        psp, arcface = PSPEncoder(), Backbone(112, 50, "ir_se")
    for model, name in ((psp, "encoder.json"), (psp, "encoder_wplus.json"), (arcface, "model_ir_se50.json")):
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == shapes_of(manifest(name)), name
    assert list(psp.state_dict()) == [t["key"] for t in manifest("encoder.json")["tensors"]]


def test_load_state_dict_strict(encoder_weights):
    state_dict, _ = encoder_weights
    with torch.device("meta"):
        model = PSPEncoder()
    result = model.load_state_dict(state_dict, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


# --------------------------------------------------------------------------------------------
# z+ (encoder.pt)
# --------------------------------------------------------------------------------------------
def test_zplus_loaded_as_zplus(zplus_out):
    assert zplus_out["space"] == "z+"
    assert zplus_out["training"] is False and zplus_out["frozen"]


def test_zplus_codes(zplus_out):
    ref = npz("zplus_081680.npz")
    codes = zplus_out["codes"]
    assert codes.shape == (1, 18, 512) and codes.dtype == torch.float32
    assert maxdiff(codes, ref["codes"]) <= ATOL_CODES
    assert maxdiff(codes - zplus_out["latent_avg"], ref["codes_raw"]) <= ATOL_CODES


def test_zplus_pyramid_features(zplus_out):
    ref = npz("zplus_081680.npz")
    feats = zplus_out["feats"]
    assert feats["c1"].shape == (1, 128, 64, 64) and feats["c2"].shape == (1, 256, 32, 32)
    assert feats["c3"].shape == (1, 512, 16, 16)
    # the fixture keeps the first quarter of the channels of each map (see README)
    for name, n in (("c1", 32), ("c2", 64), ("c3", 128)):
        assert maxdiff(feats[name][:, :n], ref[f"{name}_ch0_{n}"]) <= ATOL_CODES, name


def test_zplus_mapped_wplus(zplus_out):
    assert maxdiff(zplus_out["wplus"], npz("zplus_081680.npz")["codes_mapped_wplus"]) <= ATOL_CODES


def test_zplus_reconstruction(zplus_out):
    assert zplus_out["image_size"] == (1, 3, 1024, 1024)
    assert maxdiff(zplus_out["img_rec_pool256"], npz("zplus_081680.npz")["img_rec_pool256"]) <= ATOL_IMAGE


# --------------------------------------------------------------------------------------------
# w+ (encoder_wplus.pt)
# --------------------------------------------------------------------------------------------
def test_wplus_loaded_as_wplus(wplus_out):
    assert wplus_out["space"] == "w+"
    assert "file name" in wplus_out["reason"]


@pytest.mark.parametrize("i, stem", [(0, "081680"), (1, "077417")])
def test_wplus_codes(wplus_out, i, stem):
    ref = npz(f"wplus_{stem}.npz")
    codes = wplus_out["codes"][i: i + 1]
    assert maxdiff(codes, ref["codes"]) <= ATOL_CODES
    assert maxdiff(codes - wplus_out["latent_avg"], ref["codes_raw"]) <= ATOL_CODES
    assert torch.equal(wplus_out["wplus"], wplus_out["codes"])  # w+ codes are used as they are


def test_codes_raw_same_in_both_files(zplus_out, wplus_out):
    # same tensors in both files: the encoder output differs only by the pooling path
    assert maxdiff(zplus_out["codes"], wplus_out["codes"][:1].numpy()) <= ATOL_CODES


@pytest.mark.parametrize("i, stem", [(0, "081680"), (1, "077417")])
def test_wplus_reconstruction(wplus_out, i, stem):
    image = wplus_out["img_rec_pool256"][i: i + 1]
    assert maxdiff(image, npz(f"wplus_{stem}.npz")["img_rec_pool256"]) <= ATOL_IMAGE


# --------------------------------------------------------------------------------------------
# ArcFace IR-SE50 (ID loss)
# --------------------------------------------------------------------------------------------
def test_id_backbone_features(wplus_out):
    with torch.device("meta"):
        model = Backbone(input_size=112, num_layers=50, mode="ir_se")
    sd = fixture_state_dict(shapes_of(manifest("model_ir_se50.json")))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True, assign=True)
    model.eval()
    ref = npz("id_loss.npz")
    x = wplus_out["input"]
    with torch.inference_mode():
        crop = arcface_input(x)
        feats = model(crop)
    assert maxdiff(crop, ref["crop_pool112"]) <= 1e-6
    assert maxdiff(feats, ref["feats"]) <= ATOL_FEATS
    assert_close_scaled(feats.norm(dim=1), torch.ones(2))  # a 512-term sum in float32
    loss = 1 - (feats[0] * feats[1]).sum()
    assert abs(float(loss) - float(ref["loss_0_vs_1"])) <= 1e-5


# --------------------------------------------------------------------------------------------
# Space inference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts, space", [
    ("encoder.pt", {"output_size": 1024}, "z+"),
    ("encoder_wplus.pt", {"output_size": 1024}, "w+"),
    ("encoder_wplus.pt", {}, "w+"),
    ("my_encoder_w_plus.pt", {"output_size": 1024}, "w+"),
    ("Encoder-W+.pt", {"output_size": 1024}, "w+"),
    ("psp_ffhq_encode.pt", {"output_size": 1024}, "w+"),
    ("renamed.pt", {}, "w+"),                      # original pSp opts lack output_size
    ("zplus_renamed.pt", {}, "z+"),
    ("newplus.pt", {"output_size": 1024}, "z+"),   # 'wplus' inside a word is not a hint
])
def test_infer_space(name, opts, space):
    assert infer_space(Path("/models") / name, opts)[0] == space


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "encoder.pt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="encoder.pt"):
        PSPEncoder.from_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        PSPEncoder.from_checkpoint(tmp_path / "missing.pt")


def test_stylegan2_file_given_as_encoder(tmp_path):
    g = {"style.1.weight": torch.zeros(2, 2), "convs.0.conv.weight": torch.zeros(1, 2, 2, 3, 3)}
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    torch.save({"g": g, "d": {}, "g_ema": g, "latent_avg": torch.zeros(512)}, path)
    with pytest.raises(CheckpointError, match="generator checkpoint.*not a pSp encoder"):
        PSPEncoder.from_checkpoint(path)
    torch.save(g, path)  # a bare generator state dict
    with pytest.raises(CheckpointError, match="generator checkpoint"):
        PSPEncoder.from_checkpoint(path)


def test_arcface_file_given_as_encoder(tmp_path):
    path = tmp_path / "model_ir_se50.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "output_layer.3.weight": torch.zeros(512, 8)}, path)
    with pytest.raises(CheckpointError, match="IR-SE50"):
        PSPEncoder.from_checkpoint(path)


def test_bad_layout(tmp_path):
    path = tmp_path / "encoder.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        PSPEncoder.from_checkpoint(path)
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "opts": "nope", "latent_avg": torch.zeros(18, 512)}, path)
    with pytest.raises(CheckpointError, match="'opts' must be a dict"):
        PSPEncoder.from_checkpoint(path)


def test_missing_and_unexpected_keys(encoder_weights):
    state_dict, latent_avg = encoder_weights
    opts = manifest("encoder.json")["opts"]
    partial = {k: v for k, v in state_dict.items() if k != "encoder.styles.5.linear.weight"}
    with pytest.raises(CheckpointError, match=r"'enc\.pt'.*1 missing keys \('encoder\.styles\.5\.linear\.weight'\)"):
        PSPEncoder.from_state_dict(partial, opts, latent_avg, source="enc.pt")
    extra = dict(state_dict, **{"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="1 unexpected keys"):
        PSPEncoder.from_state_dict(extra, opts, latent_avg, source="enc.pt")
    no_decoder = {k: v for k, v in state_dict.items() if k.startswith("encoder.")}
    with pytest.raises(CheckpointError, match=r"missing keys \('decoder\."):
        PSPEncoder.from_state_dict(no_decoder, opts, latent_avg, source="enc.pt")
    bad_shape = dict(state_dict, **{"encoder.latlayer1.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="wrong shape.*latlayer1"):
        PSPEncoder.from_state_dict(bad_shape, opts, latent_avg, source="enc.pt")
    with pytest.raises(CheckpointError, match="no latent_avg"):
        PSPEncoder.from_state_dict(state_dict, opts, None, source="enc.pt")
    with pytest.raises(CheckpointError, match="latent_avg must be"):
        PSPEncoder.from_state_dict(state_dict, opts, torch.zeros(14, 512), source="enc.pt")
    with pytest.raises(CheckpointError, match="encoder_type"):
        PSPEncoder.from_state_dict(state_dict, dict(opts, encoder_type="BackboneEncoderUsingLastLayerIntoW"))


@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return PSPEncoder()


@pytest.mark.parametrize("x, match", [
    (torch.zeros(3, 256, 256), "add a batch dimension"),
    (torch.zeros(1, 256, 256, 3), "channels"),
    (torch.zeros(1, 1, 256, 256), "3 channels"),
    (torch.zeros(1, 3, 256, 192), "square"),
    (torch.zeros(1, 3, 256, 256, dtype=torch.uint8), "float"),
    (torch.zeros(0, 3, 256, 256), "empty"),
    (np.zeros((1, 3, 256, 256), np.float32), "torch.Tensor"),
])
def test_bad_inputs(meta_model, x, match):
    with pytest.raises(InputError, match=match):
        meta_model.encode(x)


def test_bad_codes(meta_model):
    with pytest.raises(InputError, match=r"\[B, 18, 512\]"):
        meta_model.reconstruct(torch.zeros(1, 14, 512))
    with pytest.raises(InputError, match=r"\[B, 18, 512\]"):
        meta_model.to_wplus(torch.zeros(18, 512))


def test_arcface_bad_inputs():
    with torch.device("meta"):
        model = Backbone()
    with pytest.raises(InputError, match="arcface_input"):
        model(torch.zeros(1, 3, 256, 256))
    with pytest.raises(InputError, match="256, 256"):
        arcface_input(torch.zeros(1, 3, 112, 112))
