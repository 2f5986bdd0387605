"""ICP sampler (sampler.pt): parity with the official nets (fixtures/sampler/sampler.npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core.reference.fixture_weights import fixture_state_dict, fixture_tensor
from pastiche_core.errors import CheckpointError, InputError
from pastiche_core.models.sampler import ICPNet, StyleSampler

FIXTURES = Path(__file__).parent / "fixtures" / "sampler"
# The computation is tiny (three 128-wide matmuls); observed error vs the official float32
# run is 0.0. The tolerance only allows for a different BLAS / thread split.
ATOL = 1e-5

# manifests/sampler.json: the 13 tensors of each official _netT state dict, in order
NET_SHAPES = {
    "lin1.weight": (128, 128), "bn1.weight": (128,), "bn1.bias": (128,), "bn1.running_mean": (128,),
    "bn1.running_var": (128,), "bn1.num_batches_tracked": (), "lin2.weight": (128, 128), "bn2.weight": (128,),
    "bn2.bias": (128,), "bn2.running_mean": (128,), "bn2.running_var": (128,), "bn2.num_batches_tracked": (),
}
OUT_ROWS = {"color": 11, "structure": 7}


def official_state(part: str) -> dict[str, torch.Tensor]:
    shapes = {f"{part}.{k}": v for k, v in NET_SHAPES.items()}
    shapes[f"{part}.lin_out.weight"] = (OUT_ROWS[part] * 512, 128)
    return {k.split(".", 1)[1]: torch.from_numpy(np.asarray(v)) for k, v in fixture_state_dict(shapes).items()}


@pytest.fixture(scope="module")
def sampler_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sampler") / "sampler.pt"
    torch.save({"color": official_state("color"), "structure": official_state("structure")}, path)
    return path


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "sampler.npz"))


@pytest.fixture()
def sampler(sampler_pt) -> StyleSampler:
    return StyleSampler.from_checkpoint(sampler_pt)


def fixture_noise(ref):
    return torch.from_numpy(ref["noise_structure"]), torch.from_numpy(ref["noise_color"])


def maxabs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().double().numpy() - b.astype(np.float64)).max())


# -- structure / loading ----------------------------------------------------------------------
def test_keys_reproduce_official_layout(sampler):
    for part in ("color", "structure"):
        net = getattr(sampler, part)
        assert list(net.state_dict()) == list(NET_SHAPES) + ["lin_out.weight"]
        net.load_state_dict(official_state(part), strict=True)  # each net loads the official dict strictly
    assert (sampler.n_structure, sampler.n_color, sampler.n_latent) == (7, 11, 18)
    assert set(sampler.official_state()) == {"color", "structure"}
    assert not sampler.training and not any(p.requires_grad for p in sampler.parameters())


def test_fixture_inputs_come_from_the_recipe(ref):
    ns, nc = fixture_noise(ref)
    assert np.array_equal(ns.numpy(), fixture_tensor("sampler_input.structure", (8, 128)))
    assert np.array_equal(nc.numpy(), fixture_tensor("sampler_input.color", (8, 128)))


# -- parity -----------------------------------------------------------------------------------
def test_train_mode_matches_generate_py_and_keeps_running_stats(sampler, ref):
    before = {k: v.clone() for k, v in sampler.state_dict().items()}
    ns, nc = fixture_noise(ref)
    z = sampler.sample(8, noise_structure=ns, noise_color=nc)
    assert z.shape == (8, 18, 512) and z.dtype == torch.float32
    assert maxabs(z, ref["latent_trainmode"]) <= ATOL
    assert maxabs(z[:, :7], ref["structure_trainmode"]) <= ATOL
    assert maxabs(z[:, 7:], ref["color_trainmode"]) <= ATOL
    for k, v in sampler.state_dict().items():  # default: the loaded statistics are not mutated
        assert torch.equal(v, before[k]), k


def test_eval_mode_matches(sampler, ref):
    ns, nc = fixture_noise(ref)
    z = sampler.sample(8, noise_structure=ns, noise_color=nc, train_mode_bn=False)
    assert maxabs(z[:, :7], ref["structure_evalmode"]) <= ATOL
    assert maxabs(z[:, 7:], ref["color_evalmode"]) <= ATOL
    # eval mode: samples are independent of each other, and a batch of one works
    one = sampler.sample(1, noise_structure=ns[3:4], noise_color=nc[3:4], train_mode_bn=False)
    assert torch.allclose(one[0], z[3], atol=ATOL, rtol=0)


def test_update_running_stats_reproduces_official_side_effect(sampler, ref):
    ns, nc = fixture_noise(ref)
    plain = sampler.sample(8, noise_structure=ns, noise_color=nc)
    updated = sampler.sample(8, noise_structure=ns, noise_color=nc, update_running_stats=True)
    assert torch.equal(plain, updated)  # same output, plus the side effect
    assert maxabs(sampler.color.bn1.running_mean, ref["color_bn1_running_mean_after_one_trainmode_call"]) <= ATOL
    assert int(sampler.color.bn1.num_batches_tracked) == 1
    assert int(sampler.structure.bn2.num_batches_tracked) == 1
    with pytest.raises(InputError, match="train_mode_bn"):
        sampler.sample(8, train_mode_bn=False, update_running_stats=True)


def test_icpnet_module_semantics_match_batchnorm(ref):
    """Plain forward follows nn.Module train/eval semantics, like the official _netT."""
    net = ICPNet(128, 11 * 512)
    net.load_state_dict(official_state("color"), strict=True)
    nc = torch.from_numpy(ref["noise_color"])
    net.train()
    with torch.no_grad():
        out = net(nc)
    assert maxabs(out.reshape(8, 11, 512), ref["color_trainmode"]) <= ATOL
    assert maxabs(net.bn1.running_mean, ref["color_bn1_running_mean_after_one_trainmode_call"]) <= ATOL


def test_dtype_conversion(sampler_pt, ref):
    s64 = StyleSampler.from_checkpoint(sampler_pt, dtype=torch.float64)
    ns, nc = fixture_noise(ref)
    z = s64.sample(8, noise_structure=ns, noise_color=nc)
    assert z.dtype == torch.float64
    assert maxabs(z, ref["latent_trainmode"]) <= 1e-4  # float64 vs the float32 reference
    assert s64.color.bn1.num_batches_tracked.dtype == torch.int64


# -- random drawing ---------------------------------------------------------------------------
def test_generator_and_official_draw_order(sampler):
    g = torch.Generator().manual_seed(123)
    z = sampler.sample(4, generator=g)
    g.manual_seed(123)
    ns, nc = torch.randn(4, 128, generator=g), torch.randn(4, 128, generator=g)  # structure first
    assert torch.equal(z, sampler.sample(4, noise_structure=ns, noise_color=nc))
    # generate.py: instyle randn(B, 512), then structure noise, then colour noise (global RNG)
    torch.manual_seed(7)
    _instyle = torch.randn(4, 512)
    z_global = sampler.sample(4)
    torch.manual_seed(7)
    torch.randn(4, 512)
    ns, nc = torch.randn(4, 128), torch.randn(4, 128)
    assert torch.equal(z_global, sampler.sample(4, noise_structure=ns, noise_color=nc))


# -- fix_structure / fix_color ---------------------------------------------------------------
def test_fix_color_and_structure_follow_generate_py(sampler, ref):
    ns, nc = fixture_noise(ref)
    free = sampler.sample(8, noise_structure=ns, noise_color=nc)
    fc = sampler.sample(8, noise_structure=ns, noise_color=nc, fix_color=True)
    # colour rows: every sample gets sample 0's (computed with the whole batch's statistics)
    assert torch.equal(fc[:, 7:], free[0:1, 7:].expand(8, -1, -1))
    assert torch.equal(fc[:, :7], free[:, :7])
    fs = sampler.sample(8, noise_structure=ns, noise_color=nc, fix_structure=True)
    assert torch.equal(fs[:, :7], free[0:1, :7].expand(8, -1, -1))
    assert torch.equal(fs[:, 7:], free[:, 7:])
    both = sampler.sample(8, noise_structure=ns, noise_color=nc, fix_structure=True, fix_color=True)
    assert torch.equal(both, free[0:1].expand(8, -1, -1))
    # a fixed part never changes the RNG stream: the free part is the same as unfixed
    g = torch.Generator().manual_seed(5)
    a = sampler.sample(3, generator=g)
    g.manual_seed(5)
    b = sampler.sample(3, generator=g, fix_color=True)
    assert torch.equal(a[:, :7], b[:, :7])


def test_fix_with_given_code(sampler):
    target = torch.randn(1, 18, 512)
    z = sampler.sample(4, generator=torch.Generator().manual_seed(0), fix_color=target)
    assert torch.equal(z[:, 7:], target[:, 7:].expand(4, -1, -1))
    z = sampler.sample(4, generator=torch.Generator().manual_seed(0), fix_structure=target[0, :7])
    assert torch.equal(z[:, :7], target[:, :7].expand(4, -1, -1))
    with pytest.raises(InputError, match="fix_color"):
        sampler.sample(4, fix_color=torch.zeros(3, 11, 512))
    with pytest.raises(InputError, match="fix_structure"):
        sampler.sample(4, fix_structure="yes")


# -- errors -----------------------------------------------------------------------------------
def test_sampling_errors(sampler):
    with pytest.raises(InputError, match="at least 2"):
        sampler.sample(1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="positive integer"):
            sampler.sample(bad)
    with pytest.raises(InputError, match=r"noise_color must be \[4, 128\]"):
        sampler.sample(4, noise_color=torch.zeros(4, 64))


def test_checkpoint_errors(tmp_path, sampler_pt):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        StyleSampler.from_checkpoint(missing)

    cases = {
        "no_color.pt": ({"structure": official_state("structure")}, "'color'"),
        "tensor.pt": (torch.zeros(3), "holds a Tensor"),
        "g_ema.pt": ({"g_ema": {"style.1.weight": torch.zeros(2)}}, "has no"),
        "missing_key.pt": ({"color": {k: v for k, v in official_state("color").items() if k != "bn2.running_var"},
                            "structure": official_state("structure")}, "bn2.running_var"),
        "extra_key.pt": ({"color": {**official_state("color"), "lin_out.bias": torch.zeros(5632)},
                          "structure": official_state("structure")}, "unexpected keys lin_out.bias"),
        "bad_shape.pt": ({"color": {**official_state("color"), "bn1.bias": torch.zeros(64)},
                          "structure": official_state("structure")}, "wrong shape"),
        "bad_rows.pt": ({"color": {**official_state("color"), "lin_out.weight": torch.zeros(1000, 128)},
                         "structure": official_state("structure")}, "lin_out.weight"),
    }
    for name, (obj, message) in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError) as info:
            StyleSampler.from_checkpoint(path)
        assert name in str(info.value) and message in str(info.value), str(info.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        StyleSampler.from_checkpoint(garbage)
