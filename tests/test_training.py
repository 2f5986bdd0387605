"""Training infrastructure: resumable state (atomic, weights-only), the loss networks and
losses, the CLI's stage dispatch. The two stages are in test_training_sampler.py and
test_training_refine.py.

Loss networks are built with the fixture recipe over their real key names and shapes. The
recipe's catch-all is N(0, 1), which for VGG19's plain 3x3 convs (fan-in up to 4608) grows
activations ~50x per layer and overflows float32 by relu5_1; :func:`vgg_fixture_state` therefore
rescales each conv weight by sqrt(2 / fan_in) (He scaling) -- the same reason the recipe has
its own rules for the IR-SE50 convs.
"""
from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core import cli
from pastiche_core.errors import CheckpointError
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.training import checkpointing as C
from pastiche_core.training.losses import (IDLoss, MissingLossNetworkError, VGG19Features, contextual_loss,
                                           find_loss_network, load_vgg19, noise_normalize_, noise_regularize,
                                           perceptual_distance, perceptual_l1, style_loss, vgg19_feature_shapes)

ROOT = Path(__file__).resolve().parents[1]
ENC = Path(__file__).parent / "fixtures" / "encoder"
TRAIN_COMMAND = ("pastiche_core.commands.train", "train a stage of the official pipeline")


pytestmark = pytest.mark.usefixtures("single_thread")


def vgg_fixture_state(n_slices: int = 3) -> dict[str, torch.Tensor]:
    """torchvision-named VGG19 'features' tensors from the fixture recipe, He-rescaled (see module doc)."""
    state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(vgg19_feature_shapes(n_slices)).items()}
    for k, v in state.items():
        if k.endswith(".weight"):
            state[k] = v * math.sqrt(2.0 / (v.shape[1] * v.shape[2] * v.shape[3]))
    return state


def run_cli(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setitem(cli.COMMANDS, "train", TRAIN_COMMAND)
    code = cli.main(["train", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------
# Training state
# --------------------------------------------------------------------------------------------
def _toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    ema = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.99), weight_decay=1e-4)
    return model, ema, opt


def _step(model, ema, opt, gen):
    x = torch.randn(16, 4, generator=gen) + torch.rand(1)  # global torch RNG too
    x = x * float(np.random.rand()) + random.random()        # numpy and python RNGs too
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 0.1)
    return float(loss.detach())


def test_state_roundtrip_is_weights_only_and_bit_exact(tmp_path):
    model, ema, opt = _toy()
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    for _ in range(3):
        _step(model, ema, opt, gen)
    state = C.make_state("toy", 3, 10, config={"lr": 1e-2}, models={"m": model}, ema={"m": ema},
                         optimizers={"adam": opt}, generators={"data": gen}, extra={"tensors": [torch.ones(2)]})
    path = C.save_state(tmp_path / "state.pt", state)
    raw = torch.load(path, weights_only=True)  # no allow-list needed: tensors and plain values only
    assert raw["step"] == 3 and raw["stage"] == "toy" and isinstance(raw["rng"]["numpy"]["keys"], torch.Tensor)
    # the uninterrupted continuation
    expected = [_step(model, ema, opt, gen) for _ in range(3)]
    # a fresh process-like start from the file
    model2, ema2, opt2 = _toy()
    gen2 = torch.Generator()
    loaded = C.load_state(path, "toy")
    C.apply_state(loaded, models={"m": model2}, ema={"m": ema2}, optimizers={"adam": opt2}, generators={"data": gen2})
    got = [_step(model2, ema2, opt2, gen2) for _ in range(3)]
    assert got == expected
    for a, b in zip(list(model.state_dict().values()) + list(ema.state_dict().values()),
                    list(model2.state_dict().values()) + list(ema2.state_dict().values())):
        assert torch.equal(a, b)


def test_state_rejects_objects_weights_only_cannot_load(tmp_path):
    state = C.make_state("toy", 0, 1, extra={"where": Path("/x")})
    with pytest.raises(TypeError, match=r"\['extra'\]\['where'\].*PosixPath|\['extra'\]\['where'\].*Path"):
        C.save_state(tmp_path / "s.pt", state)
    assert not (tmp_path / "s.pt").exists()


def test_kill_during_write_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "train_state" / "toy.pt"
    C.save_state(path, C.make_state("toy", 5, 10, extra={"marker": torch.arange(3)}))
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from pastiche_core.training import checkpointing as C
        def torn_save(obj, fh, *a, **k):  # write half a file, then die like kill -9
            fh.write(b"PK\\x03\\x04" + b"x" * 100000)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        C.torch.save = torn_save
        C.save_state({str(path)!r}, C.make_state("toy", 6, 10, extra={{"marker": torch.arange(4)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    assert list(path.parent.glob(".pst-*.tmp"))  # the torn temporary file is there ...
    state = C.load_state(path, "toy")                # ... but the checkpoint is the previous one
    assert state["step"] == 5 and torch.equal(state["extra"]["marker"], torch.arange(3))
    assert not list(path.parent.glob(".pst-*.tmp"))  # and the stale temporary is cleaned up


def test_load_state_errors(tmp_path):
    path = tmp_path / "s.pt"
    C.save_state(path, C.make_state("sampler", 1, 2))
    with pytest.raises(CheckpointError, match="stage 'sampler', not 'refine-exstyle'"):
        C.load_state(path, "refine-exstyle")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="s.pt"):
        C.load_state(path)
    torch.save({"g_ema": {}}, path)
    with pytest.raises(CheckpointError, match="not a Pastiche training-state"):
        C.load_state(path)


# --------------------------------------------------------------------------------------------
# Loss networks
# --------------------------------------------------------------------------------------------
# manifests/vgg19_torchvision.json: the conv indices of torchvision's vgg19().features
VGG19_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
               16: (256, 256), 19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512), 28: (512, 512),
               30: (512, 512), 32: (512, 512), 34: (512, 512)}


def test_vgg19_uses_torchvision_key_names():
    expected = {}
    for i, (o, c) in VGG19_CONVS.items():
        if i < 30:  # relu5_1 is features[29]; the last three convs are never used
            expected[f"features.{i}.weight"] = (o, c, 3, 3)
            expected[f"features.{i}.bias"] = (o,)
    assert vgg19_feature_shapes(5) == expected
    assert {k: tuple(v.shape) for k, v in VGG19Features(5).state_dict().items()} == expected


def test_vgg19_found_in_hub_cache_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    state = vgg_fixture_state(3)
    state["classifier.6.bias"] = torch.zeros(1000)  # torchvision files carry the classifier too
    torch.save(state, hub / "vgg19-dcbb9e9d.pth")
    assert find_loss_network("vgg19", [tmp_path / "models"]) == hub / "vgg19-dcbb9e9d.pth"
    vgg = load_vgg19([tmp_path / "models"], n_slices=3)
    feats = vgg(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in feats)
    assert not any(p.requires_grad for p in vgg.parameters())
    # a model folder given first wins over the hub cache
    (tmp_path / "models").mkdir()
    torch.save(state, tmp_path / "models" / "vgg19-dcbb9e9d.pth")
    assert find_loss_network("vgg19", [tmp_path / "models"]) == tmp_path / "models" / "vgg19-dcbb9e9d.pth"


def test_missing_loss_network_names_file_purpose_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingLossNetworkError) as err:
        find_loss_network("vgg19", [tmp_path / "models"], purpose="the perceptual loss")
    msg = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in msg and "the perceptual loss" in msg and "VGG19" in msg
    assert str(tmp_path / "models") in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    with pytest.raises(MissingLossNetworkError, match="model_ir_se50.pth.*identity loss"):
        find_loss_network("irse50", [tmp_path], purpose="the identity loss")
    bad = tmp_path / "models"
    bad.mkdir()
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad / "vgg19-dcbb9e9d.pth")
    with pytest.raises(CheckpointError, match="not torchvision's VGG19.*missing keys"):
        load_vgg19([bad])


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def _cx_reference(x: torch.Tensor, y: torch.Tensor, h: float, centre_dims) -> torch.Tensor:
    """The contextual loss written out per sample, in float64, from the paper's equations."""
    x, y = x.double(), y.double()
    mu = y.mean(dim=centre_dims, keepdim=True)
    out = []
    for b in range(x.shape[0]):
        xs = (x[b] - mu[b if mu.shape[0] > 1 else 0]).flatten(1).T  # [N, C]
        ys = (y[b] - mu[b if mu.shape[0] > 1 else 0]).flatten(1).T
        xs, ys = xs / xs.norm(dim=1, keepdim=True), ys / ys.norm(dim=1, keepdim=True)
        d = 1 - xs @ ys.T                                   # d[i, j]: generated i vs target j
        rel = d / (d.min(dim=1, keepdim=True).values + 1e-5)
        w = torch.exp((1 - rel) / h)
        cx = w / w.sum(dim=1, keepdim=True)
        out.append(-torch.log(cx.max(dim=0).values.mean() + 1e-5))
    return torch.stack(out)


def test_contextual_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, 5, 4, generator=g), torch.randn(3, 8, 5, 4, generator=g)
    per = contextual_loss(x, y, 0.2, per_sample=True)
    assert torch.allclose(per.double(), _cx_reference(x, y, 0.2, (2, 3)), atol=1e-5)
    batch = contextual_loss(x, y, 0.2)
    assert abs(float(batch) - float(_cx_reference(x, y, 0.2, (0, 2, 3)).mean())) < 1e-5
    # one sample: both modes are the official value
    assert torch.allclose(contextual_loss(x[:1], y[:1], 0.2), contextual_loss(x[:1], y[:1], 0.2, per_sample=True)[0])
    assert float(contextual_loss(y, y, 0.2)) < 1e-4 < float(batch)


def test_perceptual_style_and_noise_terms():
    g = torch.Generator().manual_seed(1)
    fx = [torch.randn(2, 4, 6, 6, generator=g) for _ in range(3)]
    fy = [torch.randn(2, 4, 6, 6, generator=g) for _ in range(3)]
    l1 = perceptual_l1(fx, fy, (1, 2), (0.5, 1.0))
    assert torch.allclose(l1, 0.5 * (fx[1] - fy[1]).abs().mean() + (fx[2] - fy[2]).abs().mean())
    st = style_loss(fx, fy, (1, 2))
    assert torch.allclose(st, sum(((fx[k].mean((2, 3)) - fy[k].mean((2, 3))) ** 2).mean() for k in (1, 2)))
    d = perceptual_distance(fx, fy)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(perceptual_distance([f * 7 for f in fx], fy), d, atol=1e-5)  # channel-normalised
    assert torch.equal(perceptual_distance(fy, fy), torch.zeros(2))
    noises = [torch.randn(3, 1, r, r, generator=g) for r in (4, 8, 16)]
    per = noise_regularize(noises, per_sample=True)
    assert torch.allclose(per, torch.stack([noise_regularize([n[i:i + 1] for n in noises]) for i in range(3)]))
    noise_normalize_(noises, per_sample=True)
    assert all(abs(float(n[i].mean())) < 1e-6 and abs(float(n[i].std()) - 1) < 1e-6 for n in noises for i in range(3))


def test_id_loss_matches_official():
    """IDLoss(x, x.flip(0)) on the two encoder inputs, against the official criteria.id_loss."""
    import json

    from pastiche_core.models import Backbone

    shapes = {t["key"]: tuple(t["shape"]) for t in json.loads((ENC / "model_ir_se50.json").read_text())["tensors"]}
    with torch.device("meta"):
        net = Backbone(input_size=112, num_layers=50, mode="ir_se")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()}, strict=True,
                        assign=True)
    loss_fn = IDLoss(net)
    x = torch.from_numpy(np.concatenate([np.load(ENC / f"wplus_{s}.npz")["input_256"] for s in ("081680", "077417")]))
    ref = np.load(ENC / "id_loss.npz")
    with torch.no_grad():
        assert abs(float(loss_fn(x, x.flip(0))) - float(ref["loss_batch_vs_flipped"])) < 1e-5
        assert abs(float(loss_fn(x[:1], x[1:])) - float(ref["loss_0_vs_1"])) < 1e-5
        # other sizes are pooled to 256 first, as the official
        assert abs(float(loss_fn(torch.nn.functional.interpolate(x, scale_factor=2.0), x.flip(0)))) < 1.0
    assert not loss_fn.backbone.training


# --------------------------------------------------------------------------------------------
# CLI dispatch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage, missing", [
    ("finetune-stylegan", "missing stylegan2-ffhq-config-f.pt"),
    ("destylize", "missing finetune-000600.pt"),
    ("pretrain", "missing stylegan2-ffhq-config-f.pt"),  # its first input (stages.PretrainStage.reads)
    ("finetune", "missing generator-pretrain.pt"),
])
def test_stage_inputs_missing_exit_2(stage, missing, tmp_path, monkeypatch, capsys):
    """Every stage checks its files before training: one error line naming the file, exit 2."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    (tmp_path / "data").mkdir()
    code, out, err = run_cli(monkeypatch, capsys, stage, "--checkpoints", tmp_path / "ck", "--data",
                             tmp_path / "data", "--out", tmp_path / "out")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {missing}"), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_cli_argument_errors(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "sampler", "--checkpoints", tmp_path)
    assert code == 2 and "--out DIR is required" in err
    code, _, err = run_cli(monkeypatch, capsys, "sampler", "--checkpoints", tmp_path, "--out", tmp_path / "o",
                           "--iters", 0)
    assert code == 2 and "--iters must be at least 1" in err
    code, _, err = run_cli(monkeypatch, capsys, "sampler", "--checkpoints", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "missing exstyle_code.npy" in err
    code, _, err = run_cli(monkeypatch, capsys, "refine-exstyle", "--checkpoints", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "needs --data" in err


def test_vgg_refine_loss_for_the_faithful_exemplar_mode():
    """refine.vgg_refine_loss: the official refinement terms as refine_exstyle's ``perceptual``."""
    from pastiche_core.training.refine_stage import vgg_refine_loss

    vgg = VGG19Features(3).load_features(vgg_fixture_state(3))
    calls = []
    vgg.register_forward_hook(lambda *a: calls.append(1))
    g = torch.Generator().manual_seed(0)
    image, target = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    loss_fn = vgg_refine_loss(vgg)
    first, second = loss_fn(image, target), loss_fn(image, target)
    assert len(calls) == 3  # the target's features are computed once per target tensor
    fi, ft = vgg(image), vgg(target)
    expected = perceptual_distance(fi, ft).sum() + contextual_loss(fi[2], ft[2], 0.2)
    assert torch.allclose(first, expected) and torch.equal(first, second)
