"""Loading official-layout generator files safely, config inference, conversion round trips."""
import argparse
import subprocess
import sys

import pytest
import torch

from pastiche_core.checkpoints import (convert, infer_dualstylegan_config, load_dualstylegan, load_generator,
                                       load_stylegan2, read_generator_file, safe_torch_load)
from pastiche_core.errors import CheckpointError
from pastiche_core.models import DualStyleGAN, Generator
from pastiche_core.reference import fixture_model


@pytest.fixture(scope="module")
def dsg():
    return fixture_model("dualstylegan", 256)


@pytest.fixture(scope="module")
def dsg_file(tmp_path_factory, dsg):
    path = tmp_path_factory.mktemp("ckpt") / "generator.pt"
    torch.save({"g_ema": dsg.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def sg2_file(tmp_path_factory, dsg):
    path = tmp_path_factory.mktemp("ckpt") / "stylegan2-ffhq-config-f.pt"
    state = dsg.generator.state_dict()
    torch.save({"g_ema": state, "g": state, "latent_avg": torch.arange(512.0)}, path)
    return path


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_official_dualstylegan(dsg_file, dsg):
    model = load_dualstylegan(dsg_file)
    assert isinstance(model, DualStyleGAN) and model.size == 256 and model.res_index == 6
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert _same(model, dsg)


def test_load_stylegan2_with_latent_avg(sg2_file, dsg):
    model, latent_avg = load_stylegan2(sg2_file)
    assert isinstance(model, Generator) and model.size == 256
    assert _same(model, dsg.generator)
    assert torch.equal(latent_avg, torch.arange(512.0))
    model_g, _ = load_stylegan2(sg2_file, key="g")
    assert _same(model_g, dsg.generator)


def test_dualstylegan_file_gives_its_stylegan2(dsg_file, dsg):
    model, latent_avg = load_stylegan2(dsg_file)
    assert latent_avg is None and _same(model, dsg.generator)


def test_device_and_dtype(dsg_file):
    model = load_dualstylegan(dsg_file, device="cpu", dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("size,mult", [(64, 1), (128, 2), (512, 1)])
def test_config_inferred_from_shapes(size, mult):
    model = DualStyleGAN(size, channel_multiplier=mult)
    assert infer_dualstylegan_config(model.state_dict()) == model.config


def test_stylegan2_file_where_dualstylegan_needed(sg2_file):
    with pytest.raises(CheckpointError, match="plain StyleGAN2 generator.*DualStyleGAN"):
        load_dualstylegan(sg2_file)


def test_missing_keys_named(tmp_path, dsg):
    state = dict(dsg.state_dict())
    del state["res.3.conv.0.weight"]
    path = tmp_path / "generator.pt"
    torch.save({"g_ema": state}, path)
    with pytest.raises(CheckpointError, match=r"generator\.pt.*(missing|cannot infer)"):
        load_dualstylegan(path)


def test_wrong_shape_named(tmp_path, dsg):
    state = dict(dsg.state_dict())
    state["res.8.weight"] = torch.zeros(512, 256)
    path = tmp_path / "generator.pt"
    torch.save({"g_ema": state}, path)
    with pytest.raises(CheckpointError, match=r"wrong shape.*res\.8\.weight"):
        load_dualstylegan(path)


def test_truncated_and_empty_and_text(tmp_path, dsg_file):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(dsg_file.read_bytes()[: 100_000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path, pattern in [(truncated, "truncated|corrupt|could not be read"), (empty, "empty"),
                          (text, "not a PyTorch checkpoint|could not be read")]:
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_dualstylegan(path)
        assert str(path) in str(info.value)


class Payload:  # an arbitrary object: must never be unpickled
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_pickle_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        safe_torch_load(path, "a generator")
    assert "pwned" not in capsys.readouterr().out


def test_training_checkpoint_with_namespace_args(tmp_path, dsg):
    path = tmp_path / "generator-pretrain.pt"
    torch.save({"g_ema": dsg.state_dict(), "g": dsg.state_dict(), "args": argparse.Namespace(iter=3000),
                "ada_aug_p": 0.0}, path)
    assert _same(load_dualstylegan(path), dsg)


@pytest.mark.parametrize("src_fixture", ["dsg_file", "sg2_file"])
def test_convert_round_trip(tmp_path, request, src_fixture):
    src = request.getfixturevalue(src_fixture)
    st = tmp_path / "model.safetensors"
    back = tmp_path / "back.pt"
    convert(src, st)
    convert(st, back)
    kind0, s0, e0 = read_generator_file(src)
    for path in (st, back):
        kind, state, extras = read_generator_file(path)
        assert kind == kind0 and list(state) == list(s0)
        assert all(torch.equal(state[k], s0[k]) for k in s0)
        assert set(extras) == set(e0) and all(torch.equal(extras[k], e0[k]) for k in e0)
    assert _same(load_generator(st), load_generator(src))


def test_convert_cli(tmp_path, dsg_file):
    out = tmp_path / "g.safetensors"
    ok = subprocess.run([sys.executable, "-m", "pastiche_core", "convert", str(dsg_file), str(out)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "dualstylegan" in ok.stdout and out.exists()
    bad = subprocess.run([sys.executable, "-m", "pastiche_core", "convert", str(tmp_path / "nope.pt"),
                          str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "nope.pt" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.safetensors").exists()


def test_plain_safetensors_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a Pastiche generator"):
        load_dualstylegan(path)
