"""Hostile weight files (issue 11 items 1 and 6): each attack ends in one short CheckpointError,
within a bounded amount of memory, and real files still load bit for bit.

The attacks run in one child process under ``RLIMIT_AS`` (so an allocation bomb fails instead
of taking the machine down) with a subprocess timeout as the hang guard; the child reports one
JSON line per case.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core.checkpoints import safe_torch_load, save_generator_safetensors
from pastiche_core.errors import CheckpointError
from pastiche_core.models import Generator
from pastiche_core.models.sampler import SAMPLER_MODEL, StyleSampler, save_sampler_safetensors
from pastiche_core.safe_pickle import load_torch_file
from pastiche_core.styles import StyleBank
from pastiche_core.training import checkpointing as C

ROOT = Path(__file__).resolve().parents[1]
BANK = Path(__file__).parent / "fixtures" / "styles" / "exstyle_code.npy"
MEMORY_LIMIT = 3 << 30
HANG_GUARD_S = 300


# --------------------------------------------------------------------------------------------
# A tiny pickle assembler (protocol 2 opcodes), enough to write what no pickler would
# --------------------------------------------------------------------------------------------
def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def by(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def i(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def put(n: int) -> bytes:
    return b"q" + bytes([n]) if n < 256 else b"r" + struct.pack("<I", n)


def get(n: int) -> bytes:
    return b"h" + bytes([n]) if n < 256 else b"j" + struct.pack("<I", n)


def pkl(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def bank_dict(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def write_npy(path: Path, payload: bytes) -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(payload)
    return path


def tuple_bomb(depth: int) -> bytes:
    """((t, t), (t, t)) ... : ~5 bytes a level, 2**depth objects when expanded."""
    out = b")" + put(0)
    for n in range(1, depth + 1):
        out += get(n - 1) + get(n - 1) + b"\x86" + put(n)
    return out


def wide_bomb(width: int = 2000, refs: int = 5000) -> bytes:
    """One list of `width` ints, referenced `refs` times: only two levels deep."""
    return b"](" + b"K\x01" * width + b"e" + put(0) + b"(" + get(0) * refs + b"l"


def deep_lists(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)


def backfilled_lists(depth: int = 40) -> bytes:
    """Empty lists first, each filled afterwards with two references to the one below: placed
    while empty, they would pass a size or depth count taken at placement; 2**depth when walked."""
    out = b"".join(b"]" + put(n) + b"0" for n in range(depth + 1))
    for n in range(depth, 0, -1):
        out += get(n) + b"(" + get(n - 1) + get(n - 1) + b"e0"
    return out + get(depth)


def replace_data_pkl(src: Path, dst: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = payload if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, data)
    return dst


def write_safetensors(path: Path, header, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# --------------------------------------------------------------------------------------------
# The cases: (id, loader, path) built once per module
# --------------------------------------------------------------------------------------------
def _sg2_state_tiny() -> dict:
    """Just the keys config inference reads: enough to reach the width check."""
    state = {"input.input": torch.zeros(1, 512, 4, 4), "conv1.conv.weight": torch.zeros(1, 8, 8, 1, 1),
             "style.1.weight": torch.zeros(512, 512)}
    for n in range(3):  # three ToRGB blocks: a 32px generator
        state[f"to_rgbs.{n}.bias"] = torch.zeros(1, 3, 1, 1)
        state[f"to_rgbs.{n}.conv.weight"] = torch.zeros(1, 3, 512, 1, 1)
    return state


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    d = tmp_path_factory.mktemp("hostile")
    out: dict[str, tuple[str, Path]] = {}

    # -- .npy banks
    out["npy_tuple_bomb_key"] = ("bank", write_npy(d / "bomb_key.npy", pkl(bank_dict((tuple_bomb(100), s("x"))))))
    out["npy_tuple_bomb_value"] = ("bank", write_npy(d / "bomb_val.npy", pkl(bank_dict((s("a.jpg"), tuple_bomb(100))))))
    out["npy_memo_reuse_shallow"] = ("bank", write_npy(d / "wide.npy", pkl(bank_dict((s("a.jpg"), wide_bomb())))))
    out["npy_deep_nesting"] = ("bank", write_npy(d / "deep.npy", pkl(bank_dict((s("a.jpg"), deep_lists(20000))))))
    stride0 = (g("numpy", "ndarray") + tup(tup(i(1), i(18), i(1 << 25)), s("f4"), by(b"\0" * 4), i(0),
                                            tup(i(0), i(0), i(0))) + b"R")
    out["npy_stride0_ndarray"] = ("bank", write_npy(d / "stride0.npy", pkl(bank_dict((s("a.jpg"), stride0)))))
    uninit = g("numpy.core.multiarray", "_reconstruct") + tup(g("numpy", "ndarray"), tup(i(1), i(18), i(512)),
                                                              b"C\x01b") + b"R"
    out["npy_reconstruct_big_no_build"] = ("bank", write_npy(d / "uninit.npy", pkl(bank_dict((s("a.jpg"), uninit)))))
    uninit0 = g("numpy.core.multiarray", "_reconstruct") + tup(g("numpy", "ndarray"), tup(i(0)), b"C\x01b") + b"R"
    out["npy_reconstruct_no_build"] = ("bank", write_npy(d / "uninit0.npy", pkl(bank_dict((s("a.jpg"), uninit0)))))
    short_data = (g("numpy.core.multiarray", "_reconstruct") + tup(g("numpy", "ndarray"), tup(i(0)), b"C\x01b") + b"R"
                  + tup(i(1), tup(i(1), i(18), i(1 << 20)), g("numpy", "dtype") + tup(s("f4"), b"\x89", b"\x88") + b"R"
                        + tup(i(3), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0)) + b"b", b"\x89", by(b"\0" * 64))
                  + b"b")
    out["npy_array_claims_more_than_data"] = ("bank", write_npy(d / "short.npy", pkl(bank_dict((s("a.jpg"), short_data)))))
    out["npy_ext_opcode"] = ("bank", write_npy(d / "ext.npy", b"\x80\x02\x82\x01."))

    # -- encoder.pt with a memo bomb in opts, and deep nesting
    base = d / "encoder_base.pt"
    t: tuple = ()
    for _ in range(100):
        t = (t, t)
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "opts": {"output_size": 1024, "x": t},
                "latent_avg": torch.zeros(18, 512)}, base)
    out["encoder_opts_tuple_bomb"] = ("encoder", base)
    enc_deep = d / "encoder_deep.pt"
    torch.save({"state_dict": {}, "opts": {}}, enc_deep)
    replace_data_pkl(enc_deep, enc_deep.with_name("encoder_deeper.pt"),
                     pkl(b"}(" + s("opts") + deep_lists(20000) + b"u"))
    out["encoder_deep_nesting"] = ("encoder", enc_deep.with_name("encoder_deeper.pt"))
    out["generator_backfilled_lists"] = ("generator", replace_data_pkl(
        enc_deep, d / "backfilled.pt", pkl(b"}(" + s("g_ema") + backfilled_lists() + b"u")))
    out["encoder_wide_memo_reuse"] = ("encoder", replace_data_pkl(
        enc_deep, d / "encoder_wide.pt", pkl(b"}(" + s("opts") + b"}(" + s("x") + wide_bomb() + b"uu")))

    # -- generators claiming huge widths
    state = _sg2_state_tiny()
    state["style.1.weight"] = torch.zeros(1).expand(512, 1 << 40)
    torch.save({"g_ema": state}, d / "huge_width_stride0.pt")
    out["generator_huge_width_stride0"] = ("convert", d / "huge_width_stride0.pt")
    state = _sg2_state_tiny()
    state["style.1.weight"] = torch.zeros(1, 40000)
    torch.save({"g_ema": state}, d / "wide_170k.pt")
    out["generator_width_40000"] = ("convert", d / "wide_170k.pt")
    good = d / "tiny_ok.pt"
    torch.save({"g_ema": _sg2_state_tiny()}, good)
    with zipfile.ZipFile(good) as z:
        data_pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    # a size tuple rewritten to claim far more elements than the storage holds
    forged = data_pkl.replace(b"M\x00\x02", b"J\x00\x00\x00\x40", 1) if b"M\x00\x02" in data_pkl else data_pkl
    out["generator_size_beyond_storage"] = ("convert", replace_data_pkl(good, d / "forged.pt", forged))
    full = good.read_bytes()
    for n, cut in enumerate((len(full) // 3, len(full) - 30, 40)):
        p = d / f"truncated_{n}.pt"
        p.write_bytes(full[:cut])
        out[f"generator_truncated_zip_{n}"] = ("convert", p)
    out["generator_evil_global"] = ("convert", replace_data_pkl(good, d / "evil.pt", pkl(g("os", "system") + tup(s("true")) + b"R")))

    # -- safetensors
    header = {"style.1.weight": {"dtype": "F32", "shape": [512, 1 << 40], "data_offsets": [0, 4]},
              "__metadata__": {"pastiche.format": "1", "pastiche.model": "stylegan2"}}
    out["safetensors_huge_width_header"] = ("convert", write_safetensors(d / "huge.safetensors", header, b"\0" * 4))
    sd = {k: v.contiguous() for k, v in _sg2_state_tiny().items()}
    sd["style.1.weight"] = torch.zeros(1, 40000)
    save_generator_safetensors(d / "wide.safetensors", "stylegan2", sd, {})
    out["safetensors_width_40000"] = ("convert", d / "wide.safetensors")
    out["safetensors_header_length_huge"] = ("convert", _raw(d / "len.safetensors", struct.pack("<Q", 1 << 62) + b"{}"))
    out["safetensors_header_not_json"] = ("convert", write_safetensors(d / "nojson.safetensors", None, raw_header=b"{nope"))
    out["safetensors_header_deep_json"] = ("convert", write_safetensors(d / "deepjson.safetensors", None,
                                                                        raw_header=b"[" * 100000 + b"]" * 100000))
    out["safetensors_header_bad_utf8"] = ("convert", write_safetensors(d / "utf8.safetensors", None, raw_header=b"\xff\xfe{}"))
    out["safetensors_metadata_not_strings"] = ("convert", write_safetensors(
        d / "meta.safetensors", {"__metadata__": {"pastiche.model": ["x"] * 1000}}))
    save_generator_safetensors(d / "okgen.safetensors", "stylegan2", {k: v.contiguous() for k, v in _sg2_state_tiny().items()}, {})
    out["safetensors_overlapping_entries"] = ("convert", write_safetensors(
        d / "overlap.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12))
    meta_bomb = {"__metadata__": {"pastiche.format": "1", "pastiche.model": "style_bank",
                                  "pastiche.names": "[" * 50000 + "]" * 50000},
                 "codes": {"dtype": "F32", "shape": [1, 1, 1], "data_offsets": [0, 4]}}
    out["safetensors_bank_names_deep_json"] = ("bank", write_safetensors(d / "bank_deep.safetensors", meta_bomb, b"\0" * 4))
    meta_bad = json.loads(json.dumps(meta_bomb))
    meta_bad["__metadata__"]["pastiche.names"] = '{"a": 1}'
    out["safetensors_bank_names_not_list"] = ("bank", write_safetensors(d / "bank_dict.safetensors", meta_bad, b"\0" * 4))

    # -- samplers with a style_dim of 0 / null / a string / true, and a sampler.pt with a wrong width
    sampler = StyleSampler()
    save_sampler_safetensors(d / "sampler_ok.safetensors", sampler)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d / "sampler_ok.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for label, value in (("0", 0), ("null", None), ("string", "512"), ("true", True), ("negative", -512)):
        p = d / f"sampler_style_dim_{label}.safetensors"
        save_file(tensors, str(p), metadata={"pastiche.format": "1", "pastiche.model": SAMPLER_MODEL,
                                             "pastiche.config": json.dumps({"style_dim": value})})
        out[f"sampler_style_dim_{label}"] = ("sampler", p)
    save_file(tensors, str(d / "sampler_cfg.safetensors"), metadata={"pastiche.model": SAMPLER_MODEL,
                                                                    "pastiche.config": "[1, 2"})
    out["sampler_config_not_json"] = ("sampler", d / "sampler_cfg.safetensors")
    bad = sampler.official_state()
    bad["color"]["lin_out.weight"] = torch.zeros(512 * 40, 128)
    torch.save(bad, d / "sampler_rows.pt")
    out["sampler_pt_40_colour_rows"] = ("sampler", d / "sampler_rows.pt")

    # -- training states
    good_state = C.make_state("sampler", 1, 2)
    for label, edit in (("version_string", lambda st: st.update(version="x")),
                        ("no_rng", lambda st: st.pop("rng")),
                        ("numpy_keys_shape", lambda st: st["rng"]["numpy"].update(keys=torch.zeros(3, dtype=torch.int64))),
                        ("negative_step", lambda st: st.update(step=-1)),
                        ("models_list", lambda st: st.update(models={"g": [torch.zeros(1)]})),
                        ("optimizer_string", lambda st: st.update(optimizers={"adam": "x"}))):
        st = C.make_state("sampler", 1, 2)
        edit(st)
        p = d / f"state_{label}.pt"
        torch.save(st, p)
        out[f"state_{label}"] = ("state", p)
    del good_state
    return out


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


_CHILD = r"""
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {root!r})
from pathlib import Path
from pastiche_core.errors import PasticheError
from pastiche_core.checkpoints import convert, load_generator
from pastiche_core.models.psp import PSPEncoder
from pastiche_core.models.sampler import StyleSampler
from pastiche_core.styles import StyleBank
from pastiche_core.training.checkpointing import load_state

loaders = {{"bank": StyleBank.load, "encoder": PSPEncoder.from_checkpoint, "generator": load_generator,
           "sampler": StyleSampler.from_checkpoint, "state": load_state,
           "convert": lambda p: convert(p, Path(p).with_name(Path(p).stem + "-out.safetensors"))}}
for case, loader, path in json.loads(sys.stdin.read()):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    try:
        loaders[loader](path)
        result = {{"status": "loaded"}}
    except PasticheError as exc:
        result = {{"status": "error", "cls": type(exc).__name__, "msg": str(exc)}}
    except BaseException as exc:
        result = {{"status": "other", "cls": type(exc).__name__, "msg": str(exc)[:500]}}
    result.update(case=case, seconds=time.time() - t0,
                  rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    print(json.dumps(result), flush=True)
"""


@pytest.fixture(scope="module")
def results(cases) -> dict[str, dict]:
    child = _CHILD.format(limit=MEMORY_LIMIT, root=str(ROOT))
    todo = [[case, loader, str(path)] for case, (loader, path) in cases.items()]
    proc = subprocess.run([sys.executable, "-c", child], input=json.dumps(todo), capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    got = {r["case"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert proc.returncode == 0, proc.stderr[-3000:]
    return got


ATTACKS = [
    "npy_tuple_bomb_key", "npy_tuple_bomb_value", "npy_memo_reuse_shallow", "npy_deep_nesting",
    "npy_stride0_ndarray", "npy_reconstruct_big_no_build", "npy_reconstruct_no_build",
    "npy_array_claims_more_than_data", "npy_ext_opcode",
    "encoder_opts_tuple_bomb", "encoder_deep_nesting", "encoder_wide_memo_reuse", "generator_backfilled_lists",
    "generator_huge_width_stride0", "generator_width_40000", "generator_size_beyond_storage",
    "generator_truncated_zip_0", "generator_truncated_zip_1", "generator_truncated_zip_2", "generator_evil_global",
    "safetensors_huge_width_header", "safetensors_width_40000", "safetensors_header_length_huge",
    "safetensors_header_not_json", "safetensors_header_deep_json", "safetensors_header_bad_utf8",
    "safetensors_metadata_not_strings", "safetensors_overlapping_entries", "safetensors_bank_names_deep_json",
    "safetensors_bank_names_not_list",
    "sampler_style_dim_0", "sampler_style_dim_null", "sampler_style_dim_string", "sampler_style_dim_true",
    "sampler_style_dim_negative", "sampler_config_not_json", "sampler_pt_40_colour_rows",
    "state_version_string", "state_no_rng", "state_numpy_keys_shape", "state_negative_step", "state_models_list",
    "state_optimizer_string",
]

# what each refusal must say (beyond naming the file)
EXPECT = {
    "npy_tuple_bomb_key": "nested more than|expands to more than|dict key",
    "npy_tuple_bomb_value": "nested more than|expands to more than",
    "npy_memo_reuse_shallow": "expands to more than",
    "npy_deep_nesting": "nested more than",
    "npy_stride0_ndarray": "numpy.ndarray",
    "npy_reconstruct_big_no_build": "_reconstruct",
    "npy_reconstruct_no_build": "uninitialised",
    "npy_array_claims_more_than_data": "bytes of data",
    "encoder_opts_tuple_bomb": "nested more than|expands to more than",
    "encoder_deep_nesting": "nested more than",
    "encoder_wide_memo_reuse": "expands to more than",
    "generator_backfilled_lists": "changed after it was placed",
    "generator_huge_width_stride0": "overlap",
    "generator_width_40000": "style_dim 40000 is not 512",
    "generator_evil_global": "os.system",
    "safetensors_huge_width_header": "claims",
    "safetensors_width_40000": "style_dim 40000 is not 512",
    "safetensors_overlapping_entries": "overlap",
    "sampler_style_dim_0": "style_dim", "sampler_style_dim_null": "style_dim", "sampler_style_dim_string": "style_dim",
    "sampler_style_dim_true": "style_dim", "sampler_style_dim_negative": "style_dim",
    "sampler_pt_40_colour_rows": "colour rows",
    "state_version_string": "version", "state_no_rng": "rng", "state_numpy_keys_shape": "numpy",
    "state_negative_step": "step", "state_models_list": "models", "state_optimizer_string": "optimizers",
}


@pytest.mark.parametrize("case", ATTACKS)
def test_attack_is_one_short_checkpoint_error(results, cases, case):
    r = results[case]
    assert r["status"] == "error" and r["cls"] == "CheckpointError", r
    assert len(r["msg"]) < 1000 and "\n" not in r["msg"], r["msg"][:2000]
    assert cases[case][1].name in r["msg"], r["msg"]
    if case in EXPECT:
        import re

        assert re.search(EXPECT[case], r["msg"]), r["msg"]
    # an allocation bomb would have needed gigabytes; a refusal needs next to nothing
    assert r["rss_growth_mb"] < 200, r


def test_generator_size_beyond_storage_is_refused(results):
    r = results["generator_size_beyond_storage"]
    assert r["status"] == "error" and len(r["msg"]) < 1000, r


# --------------------------------------------------------------------------------------------
# Real files: the own reader (used on torch < 2.10) gives exactly what torch.load gives
# --------------------------------------------------------------------------------------------
def _same(a, b, where="obj") -> None:
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), where
        assert torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{n}]")
    elif isinstance(a, argparse.Namespace):
        _same(vars(a), vars(b), where)
    else:
        assert a == b or (a != a and b != b), where


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    gen = Generator(32).eval()
    state = collections.OrderedDict(gen.state_dict())
    state._metadata = gen.state_dict()._metadata
    official = {"g_ema": state, "latent_avg": torch.randn(512), "args": argparse.Namespace(iter=3, lr=0.002),
                "ada_aug_p": 0.25, "view": torch.arange(10.0)[2:8:2], "bf16": torch.ones(3, dtype=torch.bfloat16)}
    torch.save(official, d / "generator.pt")
    torch.save(official, d / "generator_legacy.pt", _use_new_zipfile_serialization=False)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    C.save_state(d / "state.pt", C.make_state("toy", 1, 2, models={"m": model}, optimizers={"adam": opt},
                                              extra={"tensors": [torch.ones(2)], "pair": (1, "x")}))
    torch.save(StyleSampler().official_state(), d / "sampler.pt")
    return d


@pytest.mark.parametrize("name", ["generator.pt", "generator_legacy.pt", "state.pt", "sampler.pt"])
def test_own_reader_matches_torch_load(real_files, name):
    path = real_files / name
    ref = torch.load(path, map_location="cpu", weights_only=False)
    for reader in ("own", "torch"):
        _same(load_torch_file(path, "a test file", reader=reader), ref)


def test_own_reader_forced_by_env(real_files, monkeypatch):
    monkeypatch.setenv("PASTICHE_OWN_LOADER", "1")
    from pastiche_core.checkpoints import load_stylegan2

    model, latent_avg = load_stylegan2(real_files / "generator.pt")
    ref = torch.load(real_files / "generator.pt", weights_only=False)
    assert all(torch.equal(v, ref["g_ema"][k]) for k, v in model.state_dict().items())
    assert torch.equal(latent_avg, ref["latent_avg"])
    assert C.load_state(real_files / "state.pt", "toy")["step"] == 1


def test_old_torch_uses_own_reader(real_files, monkeypatch):
    import pastiche_core.safe_pickle as sp

    assert sp.torch_is_safe("2.10.0") and sp.torch_is_safe("2.13.0+cpu") and not sp.torch_is_safe("2.9.1")
    monkeypatch.setattr(sp, "torch_is_safe", lambda version=None: False)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used on an old torch"))
    state = safe_torch_load(real_files / "generator_legacy.pt", "a generator")
    assert isinstance(state["args"], argparse.Namespace) and state["args"].iter == 3


def test_real_bank_still_loads_bit_identically():
    bank = StyleBank.load(BANK)
    ref = np.load(BANK, allow_pickle=True).item()
    assert bank.names == list(ref)
    for n, name in enumerate(bank.names):
        assert np.array_equal(bank[n].numpy(), ref[name].astype(np.float32))


def test_walker_refuses_without_building(tmp_path, capsys):
    """A refused pickle runs nothing: the walk happens before any unpickler sees the file."""
    marker = tmp_path / "ran"
    path = replace_data_pkl(_tiny_pt(tmp_path), tmp_path / "evil.pt",
                            pkl(g("builtins", "exec") + tup(s(f"open({str(marker)!r}, 'w')")) + b"R"))
    with pytest.raises(CheckpointError, match="builtins.exec"):
        safe_torch_load(path, "anything")
    assert not marker.exists()


def _tiny_pt(d: Path) -> Path:
    torch.save({"a": torch.zeros(1)}, d / "tiny.pt")
    return d / "tiny.pt"


def test_bomb_bank_in_a_style_folder_does_not_hang_node_registration(tmp_path):
    """Every bank is read when ComfyUI builds the node list: a ~500-byte bomb must just be skipped."""
    style = tmp_path / "models" / "dualstylegan" / "cartoon"
    style.mkdir(parents=True)
    bomb = write_npy(style / "exstyle_code.npy", pkl(bank_dict((tuple_bomb(100), s("x")))))
    assert bomb.stat().st_size < 1000
    script = f"""
import importlib.util, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
sys.path.insert(0, {str(Path(__file__).parent / "comfy_stub")!r})
import folder_paths
folder_paths.set_base({str(tmp_path)!r})
spec = importlib.util.spec_from_file_location("pack", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["pack"] = pack
spec.loader.exec_module(pack)
schemas = [n.GET_SCHEMA() for n in pack.NODES]
from pack.nodes.styles import bank_options
print("registered", len(schemas), len(bank_options()))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "registered" in proc.stdout, proc.stderr[-3000:]


def test_loss_network_files_are_checked_before_reading(tmp_path, monkeypatch):
    from pastiche_core.training.losses import IDLoss, VGG19Features

    # the checks run on the walked file: no tensor data is ever read for a wrong file
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("weights read before the shapes were checked"))
    path = tmp_path / "model_ir_se50.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "output_layer.3.weight": torch.zeros(512, 8)}, path)
    with pytest.raises(CheckpointError, match="does not match the ArcFace IR-SE50.*missing keys"):
        IDLoss.from_file(path)
    torch.save({"input_layer.0.weight": 3}, path)
    with pytest.raises(CheckpointError, match="bare state dict of tensors"):
        IDLoss.from_file(path)
    vgg = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(7)}, vgg)
    with pytest.raises(CheckpointError, match="not torchvision's VGG19"):
        VGG19Features.from_file(vgg)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "args": argparse.Namespace(a=1)}, vgg)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        VGG19Features.from_file(vgg)
