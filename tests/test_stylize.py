"""The main job end to end on the built-in demo weights: library call, exemplar styles, CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pastiche_core import cli
from pastiche_core.errors import CheckpointError, InputError
from pastiche_core.pipeline import DEMO_STYLES, DemoWeightsWarning, StylePipeline, stylize

IMAGES = Path(__file__).parent / "fixtures" / "images"
PHOTO = IMAGES / "content_081680_256.jpg"
EXEMPLAR = IMAGES / "exemplar_cartoon_256.jpg"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with pytest.warns(DemoWeightsWarning, match="DEMO WEIGHTS"):
        return StylePipeline.from_folder(tmp_path_factory.mktemp("empty"), "cartoon")


def test_demo_pipeline_runs_end_to_end(demo):
    res = stylize(PHOTO, pipeline=demo, style_id=1)
    assert res.demo and res.style_name == DEMO_STYLES[1]
    assert res.image.shape == (256, 256, 3) and res.image.dtype == np.uint8
    assert res.instyle.shape == (1, 14, 512) and torch.isfinite(res.instyle).all()
    # the caption marks the image; the face crop itself is left clean
    assert not np.array_equal(res.image, res.face)


@pytest.fixture(scope="module")
def photo_code(demo):
    from pastiche_core.pipeline import to_model_input

    return demo.encode(to_model_input(np.asarray(Image.open(PHOTO).convert("RGB"))))


def test_same_call_is_reproducible_and_seed_changes_noise(demo, photo_code):
    style = demo.bank[0]
    a, b = demo.generate(photo_code, style)[0], demo.generate(photo_code, style)[0]
    assert torch.equal(a, b)
    c, d = demo.generate(photo_code, style, seed=1)[0], demo.generate(photo_code, style, seed=1)[0]
    assert torch.equal(c, d) and not torch.equal(a, c)


def test_exemplar_becomes_a_style(demo, photo_code):
    rgb = np.asarray(Image.open(EXEMPLAR).convert("RGB"))
    code = demo.exemplar_code(rgb)
    assert code.shape == (1, 14, 512) and torch.isfinite(code).all()
    res = stylize(PHOTO, pipeline=demo, exemplar=EXEMPLAR)
    assert res.style_name == EXEMPLAR.name
    assert torch.allclose(res.exstyle_latent, code)
    assert torch.allclose(res.instyle, photo_code)
    for i in range(len(demo.bank)):
        bank_img = demo.generate(photo_code, demo.bank[i])[0]
        assert (bank_img - res.raw).abs().mean() > 1e-3, f"exemplar output equals bank style {i}"


def test_controls_change_the_output(demo, photo_code):
    style = demo.bank[0]
    base = demo.generate(photo_code, style)[0]
    for kwargs in [dict(preserve_color=True), dict(weights=[0.0] * 7 + [1.0] * 11),
                   dict(weights=[0.75] * 7 + [0.0] * 11), dict(truncation=1.0)]:
        assert not torch.equal(demo.generate(photo_code, style, **kwargs)[0], base), kwargs
    # all weights 0: the intrinsic path only, whatever the style
    zero_a = demo.generate(photo_code, demo.bank[0], weights=[0.0] * 18)[0]
    zero_b = demo.generate(photo_code, demo.bank[3], weights=[0.0] * 18)[0]
    assert torch.equal(zero_a, zero_b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(style_id=99), "out of range"),
    (dict(style_id="nope"), "nope"),
    (dict(weights=[1.0] * 5), "per-layer weights"),
    (dict(weights=[1.0] * 18, structure=0.5), "not both"),
    (dict(truncation=1.5), "truncation"),
    (dict(paste_back=True), "align_face"),
])
def test_bad_options(demo, kwargs, match):
    with pytest.raises(InputError, match=match):
        stylize(PHOTO, pipeline=demo, **kwargs)


def test_unaligned_photo_needs_align_face(demo, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (120, 90, 80)).save(wide)
    with pytest.raises(InputError, match=r"300x200, not an aligned square face crop; pass --align-face"):
        stylize(wide, pipeline=demo)


def test_missing_file_in_partial_checkpoint_folder(tmp_path):
    (tmp_path / "cartoon").mkdir()
    (tmp_path / "cartoon" / "exstyle_code.npy").write_bytes(b"x")
    pipe = StylePipeline.from_folder(tmp_path, "cartoon")
    with pytest.raises(CheckpointError, match=r"missing generator\.pt: put the official file in '.*cartoon'"):
        pipe.generator


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_stylize_demo(tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, stderr = run_cli(["stylize", PHOTO, "--checkpoints", tmp_path / "none", "--style-id", "2",
                                    "--structure", "0.5", "--seed", "3", "--out", out, "--quiet"], capsys)
    assert code == 0, stderr
    assert "DEMO WEIGHTS" in stderr and "DEMO WEIGHTS" in stdout
    with Image.open(out) as img:
        assert img.size == (256, 256)
        assert "DEMO WEIGHTS" in img.info.get("pastiche:weights", "")


@pytest.mark.parametrize("args,match", [
    (["stylize", "missing.jpg"], "missing.jpg"),
    (["stylize", PHOTO, "--style-id", "77"], "out of range"),
    (["stylize", PHOTO, "--weights", "1", "2"], "per-layer weights"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, match):
    out = tmp_path / "o.png"
    code, _, stderr = run_cli(args + ["--checkpoints", tmp_path, "--out", out, "--quiet"], capsys)
    assert code == 2
    lines = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize("exc, words", [
    (OSError(28, "No space left on device", "/data/out.png"), "error: No space left on device: '/data/out.png'"),
    (OSError(36, "File name too long", "/" + "a" * 5000), "error: File name too long: '/aaa"),
    (MemoryError(), "error: out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: not enough memory: you tried to allocate "
                  "9 GB"), "error: out of memory ([enforce fail"),
    (RuntimeError("The size of tensor a (3) must match\n" + "y" * 3000), "error: unexpected RuntimeError: The size"),
    (ValueError("bad"), "error: unexpected ValueError: bad (set PASTICHE_DEBUG=1"),
])
def test_cli_maps_every_exception_to_one_line(capsys, monkeypatch, exc, words):
    import pastiche_core.commands.styles as styles_cmd

    def boom(args):
        raise exc

    monkeypatch.delenv("PASTICHE_DEBUG", raising=False)
    monkeypatch.setattr(styles_cmd, "run", boom)
    code, _, stderr = run_cli(["styles"], capsys)
    assert code == 2 and "Traceback" not in stderr
    (line,) = stderr.splitlines()
    assert line.startswith(words) and len(line) <= len("error: ") + 300, line


def test_cli_debug_interrupt_and_usage(capsys, monkeypatch):
    import pastiche_core.commands.styles as styles_cmd

    bug = RuntimeError("a bug of ours")

    def buggy(args):
        raise bug

    monkeypatch.setattr(styles_cmd, "run", buggy)
    monkeypatch.setenv("PASTICHE_DEBUG", "1")
    with pytest.raises(RuntimeError) as caught:  # the traceback, for a bug report
        cli.main(["styles"])
    assert caught.value is bug

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(styles_cmd, "run", interrupted)
    assert cli.main(["styles"]) == 130 and capsys.readouterr().err == "error: interrupted\n"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["stylize", "--no-such-option"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # no usage block: one line, as every other error
    assert line.startswith("error: ") and "--help" in line


def test_cli_bad_output_extension(tmp_path, capsys):
    code, _, stderr = run_cli(["stylize", PHOTO, "--checkpoints", tmp_path, "--out", tmp_path / "o.gif"], capsys)
    assert code == 2 and "unknown image extension" in stderr


def test_cli_styles_lists_demo_bank(tmp_path, capsys):
    code, stdout, _ = run_cli(["styles", "--checkpoints", tmp_path], capsys)
    assert code == 0 and all(name in stdout for name in DEMO_STYLES)


def test_readme_main_command_in_a_fresh_process(tmp_path):
    """The README's first command, as a user runs it (fresh interpreter, empty checkpoint folder)."""
    out = tmp_path / "stylised.png"
    proc = subprocess.run([sys.executable, "-m", "pastiche_core", "stylize", str(PHOTO), "--checkpoints",
                           str(tmp_path / "checkpoint"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "warning: DEMO WEIGHTS" in proc.stderr and out.exists()


def test_cli_generate_random_styles_demo(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, stdout, stderr = run_cli(["generate", "--checkpoints", tmp_path, "--batch", "2", "--seed", "5",
                                    "--fix-color", "--out", out], capsys)
    assert code == 0, stderr
    with Image.open(out) as img:
        assert img.size == (512, 256) and "DEMO" in img.info["pastiche:weights"]
    code, _, stderr = run_cli(["generate", "--checkpoints", tmp_path, "--batch", "1", "--out", out], capsys)
    assert code == 2 and "at least 2" in stderr


def test_faithful_exemplar_mode_refines_the_code(demo):
    from pastiche_core.pipeline import exemplar_input
    from pastiche_core.refine import refine_exstyle

    rgb = np.asarray(Image.open(EXEMPLAR).convert("RGB"))
    target = exemplar_input(rgb)
    fast = demo.exemplar_code(rgb)
    steps = []
    code, losses = refine_exstyle(demo.generator, fast, fast, target, steps=3,
                                  progress=lambda i, n, loss: steps.append((i, n)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert code.shape == fast.shape and torch.isfinite(code).all()
    assert min(losses[1:]) < losses[0], losses  # the optimisation moves toward the exemplar
    assert not torch.equal(code, fast)
    assert not any(p.requires_grad for p in demo.generator.parameters())
    # stopping early keeps the best code so far
    code0, losses0 = refine_exstyle(demo.generator, fast, fast, target, steps=4, should_stop=lambda: True)
    assert losses0 == [] and torch.equal(code0, fast)
