"""Seeded fuzzing of the loaders through the CLI (issue 11 items 1 and 6).

Mutated generator checkpoints (byte flips and opcode edits inside the zip's data.pkl with the
CRCs fixed up, truncation), style banks (.npy pickle and header edits, safetensors header
edits) and generator safetensors headers go through ``pastiche_core.cli.main`` -- ``convert
IN OUT`` and ``styles --bank FILE``. Contract for every case: exit status 0, or status 2 with
exactly one ``error: ...`` line on stderr; never an escaped exception, and a bounded growth of
the peak RSS. All cases run in one child process (imports paid once) under ``RLIMIT_AS``, with
a subprocess timeout as the hang guard.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core.checkpoints import save_generator_safetensors
from pastiche_core.models import Generator
from pastiche_core.styles import StyleBank

ROOT = Path(__file__).resolve().parents[1]
BANK = Path(__file__).parent / "fixtures" / "styles" / "exstyle_code.npy"
SEED = 20261201
MEMORY_LIMIT = 3 << 30
HANG_GUARD_S = 900
COUNTS = {"npy": 150, "bank_st": 80, "gen_pt": 70, "gen_trunc": 10, "gen_st": 30}

_CHILD = r'''
import contextlib, io, json, os, random, resource, shutil, struct, sys, time, zlib, zipfile, pickletools, traceback
base = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (base["limit"], base["limit"]))
sys.path.insert(0, base["root"])
from pathlib import Path
from pastiche_core import cli

work = Path(base["work"])
rng = random.Random(base["seed"])
counts = base["counts"]

def flip(data, lo, hi, n=None):
    data = bytearray(data)
    for _ in range(n or rng.randint(1, 3)):
        p = rng.randrange(lo, max(lo + 1, min(hi, len(data))))
        data[p] ^= rng.randint(1, 255)
    return bytes(data)

def edit_opcode(pkl):
    """Same-length edit of one opcode: its argument bytes randomised, or the opcode byte replaced."""
    ops = list(pickletools.genops(pkl))
    op, arg, pos = rng.choice(ops[:-1])
    data = bytearray(pkl)
    end = ops[ops.index((op, arg, pos)) + 1][2]
    if rng.random() < 0.3 or end - pos < 2:
        data[pos] = (rng.choice(b"()]}tlduaesrbRJKMXhqQc.NI\x85\x86\x87\x88\x89\x81\x80\x93\x94\x95"))
    else:
        for p in range(pos + 1, min(end, pos + 9)):
            if rng.random() < 0.5:
                data[p] = rng.randrange(256)
    return bytes(data)

def patch_zip_entry(path, name, new):
    """Overwrite a stored zip entry in place (same length) and fix both CRC fields."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    crc = struct.pack("<I", zlib.crc32(new))
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        n, m = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + n + m)
        f.write(new)
        f.seek(info.header_offset + 14)
        f.write(crc)
        size = f.seek(0, 2)
        f.seek(max(0, size - 200000))
        tail_at = f.tell()
        tail = f.read()
        at = tail.rfind(name.encode())  # the central directory entry: the last mention of the name
        entry = tail_at + at - 46
        f.seek(entry)
        assert f.read(4) == b"PK\x01\x02"
        f.seek(entry + 16)
        f.write(crc)

def st_header(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n])

def mutate_json_header(header):
    h = json.loads(json.dumps(header))
    names = [k for k in h if k != "__metadata__"]
    choice = rng.randrange(8)
    if choice <= 3 and names:
        entry = h[rng.choice(names)]
        field = rng.choice(["dtype", "shape", "data_offsets"])
        if rng.random() < 0.15:
            entry.pop(field, None)
        elif field == "dtype":
            entry["dtype"] = rng.choice(["F16", "F64", "I8", "U8", "BOOL", "Q4", "", 5, None])
        elif field == "shape":
            shape = entry["shape"]
            if shape and rng.random() < 0.7:
                k = rng.randrange(len(shape))
                shape[k] = rng.choice([0, -1, shape[k] * 1000, 1 << 40, "7", 2.5, None, shape[k] + 1])
            else:
                shape.append(rng.choice([1, 2, 1 << 30]))
        else:
            off = entry["data_offsets"]
            k = rng.randrange(2)
            off[k] = rng.choice([0, -8, off[k] + 4, off[k] - 4, 1 << 62, "0", None])
    elif choice <= 5:
        meta = h.setdefault("__metadata__", {})
        key = rng.choice(list(meta) or ["pastiche.model"])
        meta[key] = rng.choice(['[', '{"a": 1}', '[1, 2]', '["x"]', '', 'null', '"style_bank"', 'w+', 'z+',
                                '[' * 3000 + ']' * 3000, '{"style_dim": 0}', '{"space": 5}', 7])
    elif choice == 6:
        h[rng.choice(["x", "codes2", "style.1.weight"])] = rng.choice([
            {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, [], "x", {"dtype": "F32"}])
    else:
        if names:
            h.pop(rng.choice(names))
    return h

def write_st(path, header_obj, body, pad_to=None):
    text = json.dumps(header_obj).encode()
    if pad_to is not None:
        if len(text) > pad_to:
            return False
        text += b" " * (pad_to - len(text))
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return True

def cases():
    npy = Path(base["npy"]).read_bytes()
    npy_np2 = Path(base["npy_np2"]).read_bytes()
    for n in range(counts["npy"]):
        src = npy if n % 3 else npy_np2
        hlen = 10 + struct.unpack("<H", src[8:10])[0]
        kind = rng.choice(["flip", "flip", "opcode", "opcode", "truncate", "header"])
        if kind == "flip":
            data = flip(src, hlen, hlen + 1500) if rng.random() < 0.8 else flip(src, 0, len(src))
        elif kind == "opcode":
            data = src[:hlen] + edit_opcode(src[hlen:])
        elif kind == "truncate":
            data = src[:rng.randrange(len(src))]
        else:
            text = rng.choice(["{'descr': '<f4', 'fortran_order': False, 'shape': (3, 18, 512), }",
                               "{'descr': '|O', 'fortran_order': True, 'shape': (2,), }",
                               "{'descr': '|O', 'fortran_order': False, 'shape': (), 'x': __import__('os')}",
                               "{'descr': '|O8x', 'fortran_order': False, 'shape': (), }", "not a dict at all"])
            text = text.ljust(hlen - 11) + "\n"
            data = src[:10] + text.encode()[:hlen - 10] + src[hlen:]
        path = work / f"npy_{n}.npy"
        path.write_bytes(data)
        yield f"npy_{n}_{kind}", ["styles", "--bank", str(path)], [path]

    bank_st = Path(base["bank_st"]).read_bytes()
    n_h, header = st_header(bank_st)
    body = bank_st[8 + n_h:]
    for n in range(counts["bank_st"]):
        path = work / f"bank_{n}.safetensors"
        kind = rng.choice(["json", "json", "json", "flip", "truncate"])
        if kind == "json":
            write_st(path, mutate_json_header(header), body)
        elif kind == "flip":
            path.write_bytes(flip(bank_st, 0, 8 + n_h))
        else:
            path.write_bytes(bank_st[:rng.randrange(len(bank_st))])
        yield f"bank_st_{n}_{kind}", ["styles", "--bank", str(path)], [path]

    gen = Path(base["gen_pt"])
    with zipfile.ZipFile(gen) as z:
        name = next(i for i in z.namelist() if i.endswith("/data.pkl"))
        pkl = z.read(name)
    for n in range(counts["gen_pt"]):
        path = work / f"gen_{n}.pt"
        out = work / f"gen_{n}.safetensors"
        shutil.copyfile(gen, path)
        kind = rng.choice(["flip", "opcode", "opcode"])
        new = flip(pkl, 0, len(pkl)) if kind == "flip" else edit_opcode(pkl)
        patch_zip_entry(path, name, new)
        yield f"gen_pt_{n}_{kind}", ["convert", str(path), str(out)], [path, out]
    size = gen.stat().st_size
    for n in range(counts["gen_trunc"]):
        path = work / f"gen_trunc_{n}.pt"
        out = work / f"gen_trunc_{n}.safetensors"
        with open(gen, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read(rng.choice([rng.randrange(2000), rng.randrange(size), size - rng.randrange(1, 200)])))
        yield f"gen_trunc_{n}", ["convert", str(path), str(out)], [path, out]

    gst = Path(base["gen_st"])
    raw_head = gst.read_bytes()[:200000]
    n_h, header = st_header(raw_head)
    for n in range(counts["gen_st"]):
        path = work / f"gen_st_{n}.safetensors"
        out = work / f"gen_st_{n}.pt"
        shutil.copyfile(gst, path)
        for _ in range(20):
            text = json.dumps(mutate_json_header(header)).encode()
            if len(text) <= n_h:
                break
        else:
            text = json.dumps(header).encode()
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(text + b" " * (n_h - len(text)))
        yield f"gen_st_{n}", ["convert", str(path), str(out)], [path, out]

for case, argv, files in cases():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err, out = io.StringIO(), io.StringIO()
    t0 = time.time()
    crash = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = cli.main(argv)
            except SystemExit as exc:
                rc = exc.code
    except BaseException as exc:
        rc, crash = None, "".join(traceback.format_exception(exc))[-3000:]
    for f in files:
        if f.exists():
            f.unlink()
    print(json.dumps({"case": case, "rc": rc, "stderr": err.getvalue()[-5000:], "crash": crash,
                      "seconds": round(time.time() - t0, 3),
                      "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}),
          flush=True)
'''


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory) -> list[dict]:
    d = tmp_path_factory.mktemp("fuzz")
    bank = StyleBank.load(BANK)
    small = StyleBank(bank.names[:3], bank.codes[:3])
    small.save_npy(d / "bank.npy")  # the numpy 1.x layout of the released banks (protocol 3)
    np.save(d / "bank_np2.npy", small.to_dict(), allow_pickle=True)  # this numpy's own layout
    small.save(d / "bank.safetensors")
    torch.manual_seed(0)
    state = {k: v.half() for k, v in Generator(32).state_dict().items()}  # half: a smaller file, same structure
    torch.save({"g_ema": state, "latent_avg": torch.zeros(512)}, d / "generator.pt")
    save_generator_safetensors(d / "generator.safetensors", "stylegan2", state, {"size": 32})
    work = d / "work"
    work.mkdir()
    base = {"work": str(work), "npy": str(d / "bank.npy"), "npy_np2": str(d / "bank_np2.npy"),
            "bank_st": str(d / "bank.safetensors"), "gen_pt": str(d / "generator.pt"),
            "gen_st": str(d / "generator.safetensors")}
    base.update(limit=MEMORY_LIMIT, root=str(ROOT), seed=SEED, counts=COUNTS)
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(base), capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (proc.stderr[-3000:], results[-1:] if results else None)
    return results


def test_every_case_ran(fuzz_results):
    assert len(fuzz_results) == sum(COUNTS.values())


def test_contract_success_or_one_error_line(fuzz_results):
    bad = []
    for r in fuzz_results:
        lines = [ln for ln in r["stderr"].splitlines() if not ln.startswith("warning:")]
        if r["crash"] is not None:
            bad.append((r["case"], "escaped exception", r["crash"][-1500:]))
        elif r["rc"] == 0:
            continue
        elif r["rc"] != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in r["stderr"]:
            bad.append((r["case"], r["rc"], r["stderr"][-1500:]))
        elif len(lines[0]) > 1000:
            bad.append((r["case"], "long message", lines[0][:300]))
    assert not bad, bad[:5]


def test_memory_stays_bounded_per_case(fuzz_results):
    # the largest legitimate case builds a 32px generator (~90 MB of weights) and writes it out
    worst = max(fuzz_results, key=lambda r: r["rss_growth_mb"])
    assert worst["rss_growth_mb"] < 600, worst


def test_mutations_reach_past_the_first_check(fuzz_results):
    """The fuzzing is not vacuous: both outcomes occur for the pickle-level generator mutations."""
    gen = [r for r in fuzz_results if r["case"].startswith("gen_pt_")]
    assert any(r["rc"] == 0 for r in gen) and any(r["rc"] == 2 for r in gen)
    npy = [r for r in fuzz_results if r["case"].startswith("npy_")]
    assert any(r["rc"] == 0 for r in npy) and any(r["rc"] == 2 for r in npy)
