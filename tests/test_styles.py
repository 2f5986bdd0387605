"""Style banks (safe .npy reading, our safetensors format), preserve colour, interpolation, presets."""
from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_close_scaled
from pastiche_core.reference.fixture_weights import fixture_tensor
from pastiche_core.errors import CheckpointError, InputError
from pastiche_core.models.dualstylegan import DEFAULT_INTERP_WEIGHTS
from pastiche_core.models.stylegan2 import mapping_network
from pastiche_core.styles import (LAYER_WEIGHT_PRESETS, StyleBank, StyleLookupError, interpolate,
                                  layer_weight_preset, preserve_color_weights, preserve_color_wplus,
                                  preserve_color_zplus, read_npy_bank)

FIXTURES = Path(__file__).parent / "fixtures" / "styles"
NPY2 = FIXTURES / "exstyle_code.npy"          # written by numpy 2.4 (protocol 4, numpy._core)
NPY1 = FIXTURES / "exstyle_code_numpy1.npy"   # written by numpy 1.26 (protocol 3, numpy.core): released layout
NAMES = [f"Cartoons_{i:05d}_01.jpg" for i in range(900, 928)]
NAMES[0], NAMES[5], NAMES[26] = "Cartoons_00003_01.jpg", "Cartoons_00167_01.jpg", "Cartoons_00038_07.jpg"


@pytest.fixture(scope="module")
def bank() -> StyleBank:
    return StyleBank.load(NPY1)


@pytest.fixture(scope="module")
def pipeline():
    return dict(np.load(FIXTURES / "pipeline_codes.npz"))


# -- reading the official banks ---------------------------------------------------------------
@pytest.mark.parametrize("path", [NPY2, NPY1], ids=["numpy2", "numpy1"])
def test_load_official_bank(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no numpy.core DeprecationWarning
        b = StyleBank.load(path)
    assert len(b) == 28 and b.names == NAMES and b.space == "z+"
    assert b.codes.shape == (28, 18, 512) and b.codes.dtype == torch.float32
    for i, name in enumerate(NAMES):
        expected = fixture_tensor("exstyle." + name, (1, 18, 512))
        assert np.array_equal(b[i].numpy(), expected) and np.array_equal(b[name].numpy(), expected)
    raw = read_npy_bank(path)
    assert list(raw) == NAMES and all(v.shape == (1, 18, 512) and v.dtype == np.float32 for v in raw.values())


def test_both_writers_give_the_same_bank(bank):
    other = StyleBank.load(NPY2)
    assert other.names == bank.names and torch.equal(other.codes, bank.codes)


def _write_object_npy(path: Path, payload: bytes) -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(payload)


class _RunsCommand:
    """Unpickling this runs ``os.system(cmd)`` (what a malicious bank would do)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _CallsEval:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (eval, (f"open({self.cmd!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [0, 2, 3, 4])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    for i, evil in enumerate([_RunsCommand(f"touch {marker}"), _CallsEval(str(marker))]):
        offending = ("posix.system", "os.system", "nt.system") if i == 0 else ("builtins.eval", "__builtin__.eval")
        # a real-looking bank with the payload next to a genuine entry, and the bare payload
        holder = np.empty((), dtype=object)
        holder[()] = {"x.jpg": evil, "Cartoons_00001_01.jpg": np.zeros((1, 18, 512), np.float32)}
        for kind, obj in (("bank", holder), ("bare", evil)):
            path = tmp_path / f"evil_{i}_{kind}.npy"
            _write_object_npy(path, pickle.dumps(obj, protocol=protocol))
            with pytest.raises(CheckpointError) as info:
                StyleBank.load(path)
            message = str(info.value)
            assert path.name in message and "refusing to unpickle" in message, message
            if kind == "bare" or protocol >= 3:
                # (protocols 0/2 spell the array's bytes with _codecs.encode, refused even earlier)
                assert any(f"'{g}'" in message for g in offending), message
            assert not marker.exists(), "the payload ran"


def test_other_bad_bank_files(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((3, 18, 512), np.float32))
    with pytest.raises(CheckpointError, match="plain.npy.*plain float32"):
        StyleBank.load(plain)

    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(NPY1.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.npy.*corrupt or truncated"):
        StyleBank.load(truncated)

    not_npy = tmp_path / "text.npy"
    not_npy.write_text("hello")
    with pytest.raises(CheckpointError, match="text.npy"):
        StyleBank.load(not_npy)

    # only allowed globals, but the wrong content: a list, a string value, an int key, a bad shape
    for i, obj in enumerate([[1, 2], {"a.jpg": "text"}, {1: np.zeros((1, 18, 512), np.float32)},
                             {"a.jpg": np.zeros((2, 18, 512), np.float32)}, {}]):
        holder = np.empty((), dtype=object)
        holder[()] = obj
        path = tmp_path / f"odd_{i}.npy"
        _write_object_npy(path, pickle.dumps(holder, protocol=3))
        with pytest.raises(CheckpointError, match=f"odd_{i}.npy"):
            StyleBank.load(path)

    with pytest.raises(CheckpointError, match="missing.npy"):
        StyleBank.load(tmp_path / "missing.npy")
    with pytest.raises(CheckpointError, match="unknown style bank format"):
        StyleBank.load(tmp_path / "bank.txt")


# -- round trips ------------------------------------------------------------------------------
def test_round_trip_npy_safetensors_npy(tmp_path, bank):
    st = tmp_path / "bank.safetensors"
    bank.save(st)
    again = StyleBank.load(st)
    assert again.names == bank.names and again.space == "z+" and torch.equal(again.codes, bank.codes)

    from safetensors import safe_open
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["pastiche.names"]) == NAMES
    assert meta["pastiche.model"] == "style_bank" and meta["pastiche.space"] == "z+"
    assert json.loads(meta["pastiche.config"])["space"] == "z+"

    out = tmp_path / "exstyle_code.npy"
    again.save_npy(out)
    # identical bytes to numpy 1.26's np.save of the same dict (the released banks' layout)
    assert out.read_bytes() == NPY1.read_bytes()
    # and numpy itself reads it the official way (our own file, so allow_pickle is fine here)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        official = np.load(out, allow_pickle=True).item()
    assert list(official) == NAMES
    assert all(official[k].shape == (1, 18, 512) and official[k].dtype == np.float32 for k in official)
    assert all(np.array_equal(official[k], bank[k].numpy()) for k in NAMES)


def test_non_bank_safetensors_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "gen.safetensors"
    save_file({"codes": torch.zeros(1, 18, 512)}, str(path), metadata={"pastiche.model": "dualstylegan"})
    with pytest.raises(CheckpointError, match="gen.safetensors.*not a Pastiche style bank"):
        StyleBank.load(path)
    bad = tmp_path / "bad.safetensors"
    save_file({"codes": torch.zeros(2, 18, 512)}, str(bad),
              metadata={"pastiche.model": "style_bank", "pastiche.names": json.dumps(["a"])})
    with pytest.raises(CheckpointError, match="bad.safetensors.*inconsistent"):
        StyleBank.load(bad)


# -- indexing and editing ---------------------------------------------------------------------
def test_indexing(bank):
    assert bank.index("Cartoons_00038_07.jpg") == 26 and bank.name_of(26) == "Cartoons_00038_07.jpg"
    assert torch.equal(bank[-2], bank[26]) and torch.equal(bank[np.int64(26)], bank[26])
    assert bank[0].shape == (1, 18, 512)
    assert "Cartoons_00167_01.jpg" in bank and "nope" not in bank and list(bank) == NAMES
    with pytest.raises(StyleLookupError, match=r"28 styles \(valid indices 0\.\.27"):
        bank[28]
    with pytest.raises(StyleLookupError, match="valid indices"):
        bank[-29]
    with pytest.raises(StyleLookupError, match="did you mean 'Cartoons_00038_07.jpg'"):
        bank["Cartoons_0038_07.jpg"]
    with pytest.raises(LookupError, match="names include"):
        bank["zzz"]
    for bad in (1.5, True, None):
        with pytest.raises(InputError):
            bank[bad]
    assert issubclass(StyleLookupError, InputError)
    with pytest.raises(StyleLookupError, match="empty"):
        StyleBank()[0]


def test_add_extend_and_codes(bank, tmp_path):
    b = StyleBank()
    assert len(b) == 0 and b.codes.shape == (0, 18, 512)
    assert b.add("a.jpg", bank[0]) == 0                 # [1, 18, 512]
    assert b.add("b.jpg", bank[1][0].numpy()) == 1      # [18, 512] numpy
    assert torch.equal(b.codes, bank.codes[:2])
    with pytest.raises(InputError, match="already has"):
        b.add("a.jpg", bank[2])
    assert b.add("a.jpg", bank[2], replace=True) == 0   # replaced in place, order kept
    assert torch.equal(b["a.jpg"], bank[2]) and b.names == ["a.jpg", "b.jpg"]
    with pytest.raises(InputError, match="shape"):
        b.add("c.jpg", torch.zeros(14, 512))
    with pytest.raises(InputError, match="NaN"):
        b.add("c.jpg", torch.full((18, 512), float("nan")))
    with pytest.raises(InputError, match="name"):
        b.add("", bank[0])
    b.extend({"c.jpg": bank[3]}).extend([("d.jpg", bank[4])])
    b.extend(StyleBank.from_dict({"e.jpg": bank[5].numpy()}))
    assert b.names == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"] and len(b) == 5
    assert torch.equal(b.codes[2:], bank.codes[3:6])
    b2 = StyleBank(b.names, b.codes)
    assert b2.names == b.names and torch.equal(b2.codes, b.codes)
    # a modified bank survives both formats
    b.save_npy(tmp_path / "b.npy")
    b.save(tmp_path / "b.safetensors")
    for path in ("b.npy", "b.safetensors"):
        loaded = StyleBank.load(tmp_path / path)
        assert loaded.names == b.names and torch.equal(loaded.codes, b.codes)
    assert "5 styles" in repr(b)


# -- preserve colour --------------------------------------------------------------------------
def _fixture_mapping() -> torch.nn.Module:
    """The DualStyleGAN's intrinsic mapping network (generator.style.*) from the fixture recipe."""
    m = mapping_network(8)
    m.load_state_dict({k: torch.from_numpy(fixture_tensor("generator.style." + k, tuple(v.shape)))
                       for k, v in m.state_dict().items()})
    return m.eval()


def test_preserve_color_matches_style_transfer_py(bank, pipeline):
    """fixtures/pipeline runs of style_transfer.py --style_id 26 (copied codes)."""
    entry = bank[26]
    assert np.array_equal(entry.numpy(), pipeline["default.exstyle_latent"])
    # z+ mode: rows 7.. replaced BEFORE the mapping
    instyle = torch.from_numpy(pipeline["preserve_color.instyle"])
    latent = preserve_color_zplus(entry, instyle)
    assert np.array_equal(latent.numpy(), pipeline["preserve_color.exstyle_latent"])
    assert torch.equal(entry, bank[26])  # inputs untouched
    # --wplus mode: rows 7.. of the mapped code replaced AFTER the mapping
    instyle_w = torch.from_numpy(pipeline["wplus_preserve_color.instyle"])
    exstyle_w = torch.from_numpy(pipeline["wplus.exstyle"])  # mapping(bank[26]) from the official run
    out = preserve_color_wplus(exstyle_w, instyle_w)
    assert np.array_equal(out.numpy(), pipeline["wplus_preserve_color.exstyle"])
    # and with our mapping network (exact here; 1e-4 is the code tolerance of the reference)
    with torch.no_grad():
        m = _fixture_mapping()
        mapped = m(latent.reshape(-1, 512)).reshape(1, 18, 512)
        assert np.abs(mapped.numpy() - pipeline["preserve_color.exstyle"]).max() <= 1e-4
        mapped_w = preserve_color_wplus(m(entry.reshape(-1, 512)).reshape(1, 18, 512), instyle_w)
        assert np.abs(mapped_w.numpy() - pipeline["wplus_preserve_color.exstyle"]).max() <= 1e-4


def test_preserve_color_shapes(bank):
    ex, ins = bank[0], torch.randn(3, 18, 512)
    out = preserve_color_zplus(ex, ins)
    assert out.shape == (3, 18, 512)
    assert torch.equal(out[:, :7], ex[:, :7].expand(3, -1, -1)) and torch.equal(out[:, 7:], ins[:, 7:])
    assert torch.equal(preserve_color_wplus(ex[0], ins[0]), out[0])
    with pytest.raises(InputError):
        preserve_color_zplus(ex, torch.zeros(1, 14, 512))
    with pytest.raises(InputError):
        preserve_color_wplus(torch.zeros(2, 18, 512), torch.zeros(3, 18, 512))


# -- interpolation ----------------------------------------------------------------------------
def test_interpolate(bank):
    a, b = bank[0], bank[1]
    assert torch.equal(interpolate(a, b, 0.0), a) and torch.equal(interpolate(a, b, 1.0), b)
    assert_close_scaled(interpolate(a, b, 0.5), (a + b) / 2)  # a + t(b - a): not bit-equal to (a + b) / 2
    seq = interpolate(a, b, [0.0, 0.25, 1.0])
    assert seq.shape == (3, 18, 512)
    assert torch.equal(seq[0], a[0]) and torch.equal(seq[2], b[0])
    assert torch.equal(interpolate(a[0], b[0], torch.tensor([0.0, 1.0])), torch.cat([a, b]))  # [L, D] codes
    per_sample = interpolate(bank.codes[:2], bank.codes[2:4], torch.tensor([0.0, 1.0]))  # one t per sample
    assert torch.equal(per_sample[0], bank.codes[0]) and torch.equal(per_sample[1], bank.codes[3])
    t = torch.linspace(0, 1, 18).reshape(1, 18, 1)  # any broadcastable t: a per-layer ramp
    ramp = interpolate(a, b, t)
    assert torch.equal(ramp[:, 0], a[:, 0]) and torch.equal(ramp[:, -1], b[:, -1])
    assert_close_scaled(interpolate(a, b, 2.0), 2 * b - a)  # extrapolation
    with pytest.raises(InputError):
        interpolate(bank.codes[:2], bank.codes[:2], [0.1, 0.2, 0.3])


# -- layer-weight presets ---------------------------------------------------------------------
def test_layer_weight_presets():
    assert tuple(layer_weight_preset("default")) == tuple(DEFAULT_INTERP_WEIGHTS) == (0.75,) * 7 + (1.0,) * 11
    assert layer_weight_preset("preserve_color") == [0.75] * 7 + [0.0] * 11
    assert layer_weight_preset("readme_color_example") == [0.6] * 11 + [1.0] * 7
    assert layer_weight_preset("structure_only") == [1.0] * 7 + [0.0] * 11
    assert layer_weight_preset("color_only") == [0.0] * 7 + [1.0] * 11
    assert layer_weight_preset("full") == [1.0] * 18 and layer_weight_preset("intrinsic_only") == [0.0] * 18
    assert preserve_color_weights(0.6) == [0.6] * 7 + [0.0] * 11
    assert all(len(v) == 18 for v in LAYER_WEIGHT_PRESETS.values())
    assert layer_weight_preset("default", n_latent=14) == [0.75] * 7 + [1.0] * 7  # a 256 px model
    with pytest.raises(InputError, match="did you mean 'color_only'"):
        layer_weight_preset("colour_only")
    with pytest.raises(InputError):
        layer_weight_preset("default", n_latent=20)
