"""Nothing lost (issue 11, items 2 and 5): the one atomic writer, kill -9 at a random moment,
two processes on one folder, outputs that would replace inputs, a fresh training run over a
finished one, .pt/.safetensors pairs that cannot disagree, and training data that is streamed
from disk and confined to its folder.

No timing asserts: timeouts below only guard against hangs.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core import atomic, cli
from pastiche_core.errors import InputError
from pastiche_core.training import checkpointing as C

ROOT = Path(__file__).resolve().parents[1]
TRAIN_COMMAND = ("pastiche_core.commands.train", "train a stage of the official pipeline")


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if atomic.temp_owner(p.name))


def run_cli(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setitem(cli.COMMANDS, "train", TRAIN_COMMAND)
    code = cli.main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def child(script: str, **kw) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    return int(proc.stdout)


# --------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------
def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    atomic.atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half of the new")
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        atomic.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    # a pair where the second file fails: neither is replaced
    with pytest.raises(OSError):
        atomic.write_group([(tmp_path / "a", lambda t: t.write_bytes(b"new")), (target, broken)])
    assert not (tmp_path / "a").exists() and target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_permissions_follow_the_umask_like_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic.atomic_write(tmp_path / "new.bin", lambda tmp: tmp.write_bytes(b"x"))
        with open(tmp_path / "plain.bin", "wb") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    mode = (tmp_path / "new.bin").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    # a replaced file keeps its mode, as with a plain open()
    os.chmod(tmp_path / "new.bin", 0o640)
    atomic.atomic_write(tmp_path / "new.bin", lambda tmp: tmp.write_bytes(b"y"))
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640


def test_long_names_work_and_too_long_ones_fail_up_front(tmp_path, monkeypatch, capsys):
    from pastiche_core.faces.io import save_image

    name = "a" * 250 + ".png"
    assert len(name) == 254
    rgb = np.zeros((16, 16, 3), np.uint8)
    save_image(tmp_path / name, rgb)
    assert (tmp_path / name).is_file() and temps(tmp_path) == []
    atomic.check_output(tmp_path / name)
    C.save_state(tmp_path / ("s" * 251 + ".pt"), C.make_state("toy", 1, 1))
    # 256 bytes: refused before any work, naming the reason
    code, _, err = run_cli(monkeypatch, capsys, "align", tmp_path / name, "--out", tmp_path / ("b" * 252 + ".png"))
    assert code == 2 and "too long" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capsys, "align", tmp_path / name, "--out", tmp_path / "no" / "x.png")
    assert code == 2 and "does not exist" in err


def test_fsync_of_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "state.pt"
    C.atomic_torch_save({"a": torch.zeros(2)}, target)
    assert len(synced) >= 2
    if os.path.exists("/proc/self/fd"):
        names = [Path(p).name for p in synced]
        assert any(atomic.temp_owner(n) for n in names)   # the file's contents, before the rename
        assert str(tmp_path) in synced                    # and the folder entry, after it


# --------------------------------------------------------------------------------------------
# kill -9 from outside at a random moment
# --------------------------------------------------------------------------------------------
WRITER = """
    import torch
    from pastiche_core.training import checkpointing as C
    path = sys.argv[1]
    for step in range(1, 10 ** 6):
        # ~4 MB of state whose every value says which step wrote it
        state = C.make_state("toy", step, 10 ** 6, extra={"w": torch.full((1 << 20,), float(step))})
        C.save_state(path, state)
        print(step, flush=True)
"""


def test_kill_9_at_a_random_moment_keeps_the_last_good_checkpoint(tmp_path):
    rng = random.Random(11)
    path = tmp_path / "train_state" / "toy.pt"
    for trial in range(5):
        proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                                 + textwrap.dedent(WRITER), str(path)], stdout=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()  # one complete checkpoint exists from here on
            assert first.strip().isdigit(), "the writer did not start"
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            rest = proc.communicate(timeout=120)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        reported = int(([first] + rest.split())[-1])
        state = C.load_state(path, "toy")  # loads: never a torn file
        step = state["step"]
        assert step in (reported, reported + 1), (trial, step, reported)  # the last completed write
        assert torch.equal(state["extra"]["w"], torch.full((1 << 20,), float(step)))
        assert temps(path.parent) == []  # the dead writer's temporary file was removed by the load


# --------------------------------------------------------------------------------------------
# a second process on the same folder
# --------------------------------------------------------------------------------------------
def test_a_live_writers_temp_is_never_removed_by_another_process(tmp_path):
    path = tmp_path / "train_state" / "toy.pt"
    C.save_state(path, C.make_state("toy", 1, 5))
    writer = child("""
        from pastiche_core.atomic import Staged
        from pastiche_core.training import checkpointing as C
        import torch, io
        s = Staged(sys.argv[1])
        buf = io.BytesIO()
        torch.save(C.make_state("toy", 2, 5), buf)
        s.tmp.write_bytes(buf.getvalue()[:1000])   # in flight: half written
        print(s.tmp, flush=True)
        sys.stdin.readline()                       # ... while the other process loads and cleans up
        s.tmp.write_bytes(buf.getvalue())
        s.sync(); s.commit()
        print("done", flush=True)
    """.replace("sys.argv[1]", repr(str(path))))
    try:
        tmp = Path(writer.stdout.readline().strip())
        assert tmp.parent == path.parent and tmp.is_file()
        # leftovers of a dead writer on this host go; a live one's and another host's stay
        dead = path.parent / f".pst-{dead_pid()}-{atomic.HOST}-abc123.tmp"
        other_host = path.parent / f".pst-{dead_pid()}-{'0' * 8 if atomic.HOST != '0' * 8 else '1' * 8}-abc.tmp"
        legacy = path.parent / f".toy.pt.tmp-{dead_pid()}"
        for p in (dead, other_host, legacy):
            p.write_bytes(b"x")
        assert C.load_state(path, "toy")["step"] == 1
        atomic.remove_dead_temps(path.parent)
        assert tmp.is_file() and other_host.is_file() and not dead.exists() and not legacy.exists()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
    finally:
        writer.communicate(timeout=120)
    assert C.load_state(path, "toy")["step"] == 2  # the first process's checkpoint was not lost


def test_one_training_run_per_output_folder(tmp_path, monkeypatch, capsys):
    from pastiche_core.training.lock import LOCK_NAME, run_lock

    out = tmp_path / "out"
    holder = child(f"""
        from pastiche_core.training.lock import run_lock
        with run_lock({str(out)!r}, "sampler"):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, stdout, err = run_cli(monkeypatch, capsys, "train", "sampler", "--checkpoints", tmp_path, "--out", out)
        assert code == 2 and stdout == ""
        line = err.strip()
        assert "\n" not in line and line.startswith("error: another training run is using the output folder")
        assert f"pid {holder.pid}" in line and "stage sampler" in line
        with pytest.raises(InputError, match="another training run"):
            with run_lock(out, "finetune"):
                pass
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.communicate(timeout=120)
    # released (also by a kill -9: the kernel drops a dead holder's lock): the next run gets in
    code, _, err = run_cli(monkeypatch, capsys, "train", "sampler", "--checkpoints", tmp_path, "--out", out)
    assert code == 2 and "another training run" not in err and "exstyle_code" in err
    with run_lock(out, "sampler"):  # one stage after another in the same folder is fine
        pass
    with run_lock(out, "refine-exstyle"):
        with pytest.raises(InputError, match="another training run"):  # even from the same process
            with run_lock(out, "sampler"):
                pass
    assert not out.exists()  # runs that wrote nothing leave no folder (nor lock file) behind
    out.mkdir()
    with run_lock(out, "sampler"):
        assert (out / LOCK_NAME).is_file()
    assert (out / LOCK_NAME).is_file()  # an existing folder keeps it (removing it would race)


# --------------------------------------------------------------------------------------------
# outputs never replace inputs
# --------------------------------------------------------------------------------------------
def test_align_refuses_to_write_over_its_photo(tmp_path, monkeypatch, capsys):
    from PIL import Image

    photo = tmp_path / "x.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(photo)
    before = photo.read_bytes()
    os.link(photo, tmp_path / "hard.jpg")
    os.symlink(photo, tmp_path / "soft.jpg")
    for out in (photo, tmp_path / "hard.jpg", tmp_path / "soft.jpg", tmp_path / "." / "x.jpg"):
        code, stdout, err = run_cli(monkeypatch, capsys, "align", photo, "--out", out, "--detector", "no-such")
        assert code == 2 and stdout == "", out
        line = err.strip()
        assert "\n" not in line and "is the input" in line and "choose another --out" in line, line
    (tmp_path / "x_1.jpg").symlink_to(photo)
    code, _, err = run_cli(monkeypatch, capsys, "align", photo, "--out", tmp_path / "x.jpg", "--face", "all")
    assert code == 2 and "is the input" in err
    assert photo.read_bytes() == before and sorted(temps(tmp_path)) == []


def test_stylize_and_convert_refuse_their_inputs(tmp_path, monkeypatch, capsys):
    from pastiche_core.checkpoints import convert
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.fromarray(np.full((64, 64, 3), 50, np.uint8)).save(photo)
    ex = tmp_path / "ex.png"
    ex.write_bytes(photo.read_bytes())
    for args in (["--out", photo], ["--exemplar", ex, "--out", ex]):
        code, _, err = run_cli(monkeypatch, capsys, "stylize", photo, "--checkpoints", tmp_path / "none", *args)
        assert code == 2 and "is the input" in err, err
    gen = tmp_path / "g.pt"
    gen.write_bytes(b"whatever")
    os.link(gen, tmp_path / "g2.pt")
    for dst in (gen, tmp_path / "g2.pt"):
        with pytest.raises(InputError, match="is the input"):
            convert(gen, dst)
    assert gen.read_bytes() == b"whatever"


# --------------------------------------------------------------------------------------------
# a fresh train over a finished one
# --------------------------------------------------------------------------------------------
def test_train_over_an_existing_state_needs_resume_or_force(tmp_path, monkeypatch, capsys):
    from pastiche_core.styles import StyleBank

    ck, out = tmp_path / "ck", tmp_path / "out"
    ck.mkdir()
    StyleBank([f"s{i}.png" for i in range(4)], torch.randn(4, 14, 512, generator=torch.Generator().manual_seed(0)),
              space="z+").save_npy(ck / "exstyle_code.npy")
    args = ["train", "sampler", "--checkpoints", ck, "--out", out, "--iters", 2, "--batch", 2, "--quiet"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    finished = {p: p.read_bytes() for p in (out / "sampler.pt", out / "train_state" / "sampler.pt")}
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--seed", 5)
    assert code == 2 and stdout == ""
    line = err.strip()
    assert "\n" not in line and "already has a training state of stage sampler" in line
    assert "--resume" in line and "--force" in line
    assert all(p.read_bytes() == b for p, b in finished.items())  # the finished run is untouched
    code, _, err = run_cli(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--seed", 5, "--force")
    assert code == 0, err and str(out / "sampler.pt") in stdout
    assert (out / "train_state" / "sampler.pt").read_bytes() != finished[out / "train_state" / "sampler.pt"]
    # an explicit input that is one of the stage's outputs is refused before any work
    code, _, err = run_cli(monkeypatch, capsys, "train", "refine-exstyle", "--checkpoints", ck, "--out", out,
                           "--data", tmp_path, "--bank", out / "refined_exstyle_code.npy", "--force")
    assert code == 2 and "is the input" in err
    assert temps(out) == [] and temps(out / "train_state") == []


# --------------------------------------------------------------------------------------------
# .pt + .safetensors pairs
# --------------------------------------------------------------------------------------------
def test_a_stale_safetensors_cannot_win(tmp_path, monkeypatch):
    from pastiche_core.checkpoints import first_existing, save_generator_official, save_generator_safetensors

    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    st, pt = tmp_path / "generator.safetensors", tmp_path / "generator.pt"
    save_generator_safetensors(st, "stylegan2", a, {"size": 4}, twin=pt)
    assert first_existing(tmp_path, ["generator"], (".safetensors", ".pt")) == st
    assert atomic.twin_is_stale(st) is None
    # another tool replaces the .pt alone: the .safetensors no longer describes it
    save_generator_official(pt, b)
    with pytest.warns(UserWarning, match="older than 'generator.pt'"):
        assert first_existing(tmp_path, ["generator"], (".safetensors", ".pt")) == pt
    # same size, other contents: the hash decides (a copied folder, with new mtimes, still matches)
    save_generator_safetensors(st, "stylegan2", a, {"size": 4}, twin=pt)
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    for p in (st, pt):
        shutil.copyfile(p, copy / p.name)
    os.utime(copy / pt.name, ns=(1, 1))
    assert first_existing(copy, ["generator"], (".safetensors", ".pt")) == copy / st.name
    save_generator_official(pt, {"w": torch.full((3,), 2.0)})
    assert pt.stat().st_size == (copy / pt.name).stat().st_size
    with pytest.warns(UserWarning):
        assert first_existing(tmp_path, ["generator"], (".safetensors", ".pt")) == pt
    # a crash between the two renames of a pair (the .pt renamed, the .safetensors not)
    save_generator_safetensors(st, "stylegan2", a, {"size": 4}, twin=pt)
    real, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "power cut")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(OSError):
        save_generator_safetensors(st, "stylegan2", b, {"size": 4}, twin=pt)
    monkeypatch.undo()
    assert torch.equal(torch.load(pt, weights_only=True)["g_ema"]["w"], b["w"])
    with pytest.warns(UserWarning):
        assert first_existing(tmp_path, ["generator"], (".safetensors", ".pt")) == pt
    assert temps(tmp_path) == []


def test_bank_pairs_and_the_training_bank_lookup(tmp_path):
    from pastiche_core.styles import StyleBank
    from pastiche_core.training.inputs import EXSTYLE_FOR_REFINE
    from pastiche_core.training.stages import find_bank

    g = torch.Generator().manual_seed(0)
    one = StyleBank(["a.png", "b.png"], torch.randn(2, 18, 512, generator=g), space="z+")
    two = StyleBank(["a.png", "b.png"], torch.randn(2, 18, 512, generator=g), space="z+")
    one.save_pair(tmp_path / "exstyle_code.npy", tmp_path / "exstyle_code.safetensors")
    bank, found = find_bank(EXSTYLE_FOR_REFINE, [tmp_path])
    assert found.suffix == ".safetensors" and torch.equal(bank.codes, one.codes)
    meta = json.loads(__import__("safetensors").safe_open(str(found), "pt").metadata()[atomic.TWIN_KEY])
    assert meta["name"] == "exstyle_code.npy"
    two.save_npy(tmp_path / "exstyle_code.npy")  # e.g. the official refine script rewrote the .npy
    with pytest.warns(UserWarning, match="older than"):
        bank, found = find_bank(EXSTYLE_FOR_REFINE, [tmp_path])
    assert found.suffix == ".npy" and torch.equal(bank.codes, two.codes)


# --------------------------------------------------------------------------------------------
# training data: streamed, and confined to its folder
# --------------------------------------------------------------------------------------------
def _image_folder(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((40, 48, 3), i * 5 % 255, np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder


def test_training_images_are_streamed(tmp_path, monkeypatch):
    from pastiche_core.faces import io as fio
    from pastiche_core.training.gan import ImageSet

    decoded = []
    real = fio.load_image
    monkeypatch.setattr(fio, "load_image", lambda p, *a, **k: decoded.append(Path(p).name) or real(p, *a, **k))
    small = ImageSet(_image_folder(tmp_path / "small", 3), 32)
    big = ImageSet(_image_folder(tmp_path / "big", 40), 32)
    assert decoded == []  # building the index decodes nothing
    for ds in (small, big):
        # the set holds the index (paths) and nothing that grows with the pixels
        assert all(isinstance(p, Path) for p in ds.paths)
        assert not [k for k, v in vars(ds).items() if isinstance(v, (torch.Tensor, np.ndarray))]
    assert len(big) == 40 and big.names[0] == "img_000.png"
    x = big.batch([5, 7], flip=[False, True])
    assert x.shape == (2, 3, 32, 32) and decoded == ["img_005.png", "img_007.png"]  # only the batch
    assert float(x[0].max()) == pytest.approx(25 / 127.5 - 1, abs=1e-6)
    big.select(["img_007.png", "img_001.png"])
    assert big.names == ["img_007.png", "img_001.png"]
    (tmp_path / "small" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="zz.png"):  # a broken file is still found before training
        ImageSet(tmp_path / "small", 32)


def test_bank_names_are_confined_to_the_data_folder(tmp_path):
    from pastiche_core.training.common import find_style_images

    data = _image_folder(tmp_path / "data", 2)
    secret = _image_folder(tmp_path / "secret", 1)
    (data / "linked").symlink_to(secret)
    assert find_style_images(data, ["img_000.png", "img_001.png"])[1] == data / "img_001.png"
    for bad in ("../secret/img_000.png", str(secret / "img_000.png"), "linked/img_000.png", "a/../../x.png"):
        with pytest.raises(InputError, match="outside --data"):
            find_style_images(data, ["img_000.png", bad])


# --------------------------------------------------------------------------------------------
# the node: overwrite, and data_folder inside ComfyUI's input folder
# --------------------------------------------------------------------------------------------
from test_nodes import demo, err, host, nodes, training_mod  # noqa: E402,F401 (fixtures of the node tests)


def test_node_data_folder_is_confined_to_the_input_folder(nodes, demo, host):
    import folder_paths

    tm = training_mod()
    ft = nodes["PasticheFineTuneStage"]
    inp = Path(folder_paths.get_input_directory())
    _image_folder(inp / "mine" / "train", 2)
    outside = _image_folder(inp.parent / "elsewhere", 2)
    for bad in (str(outside), "../elsewhere", "mine/../../elsewhere", "~/x", "C:\\data"):
        with pytest.raises(err(host), match="inside ComfyUI's input folder"):
            ft.execute(model=demo, stage=tm.STAGES[1], data_folder=bad, save_name="confined")
    # a relative folder inside is taken (the stage then stops at its first missing file)
    with pytest.raises(err(host), match=r"^Fine-Tune Stage \(destylize\): missing finetune-000600\.pt"):
        ft.execute(model=demo, stage=tm.STAGES[1], data_folder="mine/train", save_name="confined")


def test_node_refuses_a_fresh_run_over_a_state_unless_overwrite(nodes, demo, host):
    import folder_paths
    from pastiche_core.styles import StyleBank

    tm = training_mod()
    ft = nodes["PasticheFineTuneStage"]
    out = Path(folder_paths.get_folder_paths("dualstylegan")[0]) / "kept"
    out.mkdir(parents=True, exist_ok=True)
    StyleBank([f"s{i}.png" for i in range(4)], torch.randn(4, 14, 512), space="z+").save_npy(out / "exstyle_code.npy")
    ft.execute(model=demo, stage=tm.STAGES[5], iterations=1, batch_size=2, save_name="kept")
    before = (out / "sampler.pt").read_bytes()
    with pytest.raises(err(host), match="already has a training state.*resume.*overwrite"):
        ft.execute(model=demo, stage=tm.STAGES[5], iterations=1, batch_size=2, seed=3, save_name="kept")
    assert (out / "sampler.pt").read_bytes() == before
    info = ft.execute(model=demo, stage=tm.STAGES[5], iterations=1, batch_size=2, seed=3, save_name="kept",
                      overwrite=True)[2]
    assert "steps: 2/2" in info and (out / "sampler.pt").read_bytes() != before
    schema = ft.GET_NODE_INFO_V1()["input"]
    # appended after the inputs saved workflows already have, so their widget values keep their places
    names = list(schema["optional"])
    assert names.index("overwrite") == len(names) - 2 and names[-1] == "loss"
    assert schema["optional"]["overwrite"][0] == "BOOLEAN"
