"""The whole training pipeline at 256 px through the CLI, as a user runs it: finetune-stylegan ->
destylize -> pretrain -> finetune, each writing into one style folder and finding the previous
stage's files there, then ``stylize`` with the trained style.

Full-width official models at the demo size (256) with fixture weights
(``tests/comfy_stub/make_model_folder.py --training``: TEST FIXTURES, not real weights), one
step per stage and batch 1: a 256 px GAN step costs 10-30 s on this CPU, so "the loss goes
down" is asserted at 64 px in test_training_gan.py / test_training_destylize.py; here every
stage runs at 256, writes the official files, and the result loads in the inference path.
Also: the face check and a full disk are clear messages.
"""
from __future__ import annotations

import errno
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core import cli

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "workflows" / "inputs"
TRAIN_COMMAND = ("pastiche_core.commands.train", "train a stage of the official pipeline")

pytestmark = pytest.mark.usefixtures("single_thread")


def _make_folder():
    spec = importlib.util.spec_from_file_location("pastiche_make_model_folder",
                                                  ROOT / "tests" / "comfy_stub" / "make_model_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setitem(cli.COMMANDS, "train", TRAIN_COMMAND)
    code = cli.main(["train", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("chain")
    root = _make_folder().write_folder(base / "models", training=True)
    style, faces = base / "style", base / "faces"
    style.mkdir()
    faces.mkdir()
    shutil.copy(INPUTS / "pastiche_exemplar_cartoon.jpg", style / "cartoon_a.jpg")
    shutil.copy(INPUTS / "pastiche_face_aligned.jpg", style / "cartoon_b.jpg")
    shutil.copy(INPUTS / "pastiche_face_aligned.jpg", faces / "face_a.jpg")
    shutil.copy(INPUTS / "pastiche_photo.jpg", faces / "face_b.jpg")
    return root, style, faces


def test_train_a_style_end_to_end_at_256(folders, monkeypatch, capsys, tmp_path):
    root, style, faces = folders
    out = root / "my_style"
    common = ["--checkpoints", root, "--out", out, "--batch", 1, "--iters", 1, "--loss-models", root]
    code, stdout, err = train(monkeypatch, capsys, "finetune-stylegan", "--data", style, *common)
    assert code == 0, err
    assert stdout.split() == [str(out / "finetune-000001.pt"), str(out / "finetune-000001.safetensors")]
    code, stdout, err = train(monkeypatch, capsys, "destylize", "--data", style, *common)
    assert code == 0, err
    assert str(out / "exstyle_code.npy") in stdout.split() and "finetune-000001.pt" in err  # found g' in --out
    code, stdout, err = train(monkeypatch, capsys, "pretrain", "--data", faces, *common)
    assert code == 0, err
    assert str(out / "generator-pretrain.pt") in stdout.split()
    code, stdout, err = train(monkeypatch, capsys, "finetune", "--data", style, *common, "--snapshot-every", 1)
    assert code == 0, err
    assert str(out / "generator.pt") in stdout.split()
    assert (out / "generator-000001.pt").is_file() and (out / "samples-000001.png").is_file()

    from pastiche_core.checkpoints import load_dualstylegan
    from pastiche_core.styles import StyleBank

    g = load_dualstylegan(out / "generator.pt")
    bank = StyleBank.load(out / "exstyle_code.npy")
    assert g.size == 256 and bank.names == ["cartoon_a.jpg", "cartoon_b.jpg"]
    result = tmp_path / "styled.png"
    code = cli.main(["stylize", str(INPUTS / "pastiche_face_aligned.jpg"), "--checkpoints", str(root), "--style",
                     "my_style", "--style-id", "1", "--out", str(result)])
    _, err = capsys.readouterr()
    assert code == 0, err
    from PIL import Image

    assert Image.open(result).size == (256, 256)
    # the numbered snapshot of the last step is the trained model: it stylises to the same image
    snap = tmp_path / "styled_snapshot.png"
    code = cli.main(["stylize", str(INPUTS / "pastiche_face_aligned.jpg"), "--checkpoints", str(root), "--style",
                     "my_style", "--style-id", "1", "--generator", str(out / "generator-000001.pt"),
                     "--out", str(snap)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(snap)), np.asarray(Image.open(result)))


def test_face_check_warns_before_training(folders, monkeypatch, capsys, tmp_path):
    root, style, _ = folders
    data = tmp_path / "mixed"
    data.mkdir()
    shutil.copy(INPUTS / "pastiche_face_aligned.jpg", data / "face.jpg")
    from PIL import Image

    Image.new("RGB", (256, 256), (40, 120, 200)).save(data / "sky.png")
    # the face check runs before the stage's own checks: a batch larger than the folder then stops
    # the run before any model is loaded
    code, _, err = train(monkeypatch, capsys, "finetune-stylegan", "--checkpoints", root, "--out", tmp_path / "o",
                         "--data", data, "--batch", 4, "--iters", 1)
    assert code == 2 and "fewer style images than the batch" in err
    assert "warning: no face found in 1 of the 2 style images" in err and "sky.png" in err
    code, _, err = train(monkeypatch, capsys, "finetune-stylegan", "--checkpoints", root, "--out", tmp_path / "o",
                         "--data", data, "--batch", 4, "--iters", 1, "--no-face-check")
    assert code == 2 and "no face found" not in err


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    from pastiche_core.errors import CheckpointError
    from pastiche_core.training import checkpointing as C

    path = tmp_path / "state.pt"
    C.atomic_torch_save({"a": torch.zeros(2)}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(C.os, "fsync", full)
    with pytest.raises(CheckpointError, match="disk is full.*previous one is intact.*--resume"):
        C.atomic_torch_save({"a": torch.ones(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))  # the last good state
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]                   # no temp file left
