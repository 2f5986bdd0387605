"""Styles chosen by sight: ``styles --preview`` and :mod:`pastiche_core.preview`.

The page layout and labels are checked with a stand-in generator (16 GAN renders per page are
minutes on this 2-core CPU); the command runs end to end on the demo weights with a partial page.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pastiche_core.errors import InputError
from pastiche_core.preview import COLUMNS, PAGE_SIZE, TILE, page_indices, render_page
from pastiche_core.styles import StyleBank

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "workflows" / "inputs" / "pastiche_face_aligned.jpg"


def bank_of(n: int, rows: int = 14) -> StyleBank:
    g = torch.Generator().manual_seed(n)
    return StyleBank([f"style_{i:02d}.jpg" for i in range(n)], torch.randn(n, rows, 512, generator=g))


class FlatModels:
    """encode/generate like a StylePipeline, but each style renders as a flat grey whose level
    is its code's first value: fast, and every tile is told apart by its colour."""

    demo = False

    def __init__(self, bank):
        self.bank, self.calls = bank, []

    def encode(self, x, space="z+"):
        assert space == "z+" and x.shape == (1, 3, 256, 256)
        return torch.zeros(1, self.bank.n_latent, 512)

    def generate(self, instyle, latent, weights=None):
        self.calls.append(len(latent))
        level = latent[:, 0, 0].tanh().clamp(-0.9, 0.9)
        return level.view(-1, 1, 1, 1).expand(-1, 3, 128, 128).clone(), latent, latent


def tiles(grid: np.ndarray):
    rows, cols = grid.shape[0] // TILE, grid.shape[1] // TILE
    return [grid[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] for r in range(rows) for c in range(cols)]


def test_full_page_is_a_labelled_4x4_grid():
    bank = bank_of(37)
    models = FlatModels(bank)
    page = render_page(models, np.zeros((256, 256, 3), np.uint8), 0, batch=4)
    assert page.image.shape == (4 * TILE, 4 * TILE, 3) and page.image.dtype == np.uint8
    assert models.calls == [4, 4, 4, 4]  # in batches through the generator
    assert [i for i, _ in page.entries] == list(range(16)) and page.pages == 3
    for k, t in enumerate(tiles(page.image)):
        body, band = t[: TILE // 2], t[-18:]
        assert (body == body[0, 0]).all()  # the rendered style, untouched above the label
        assert (band == 0).mean() > 0.5 and (band > 200).any()  # white text on a black band
        assert not np.array_equal(band, tiles(page.image)[(k + 1) % 16][-18:])  # each label is its own
    assert page.listing().splitlines()[3] == "3: style_03.jpg"


def test_page_one_and_the_last_partial_page():
    bank = bank_of(37)
    p1 = render_page(FlatModels(bank), np.zeros((256, 256, 3), np.uint8), 1)
    assert [i for i, _ in p1.entries] == list(range(16, 32))
    assert p1.entries[0][1] == "style_16.jpg" and p1.image.shape[:2] == (4 * TILE, 4 * TILE)
    last = render_page(FlatModels(bank), np.zeros((256, 256, 3), np.uint8), 2)
    assert [i for i, _ in last.entries] == [32, 33, 34, 35, 36]
    assert last.image.shape[:2] == (2 * TILE, COLUMNS * TILE)  # rows as needed, the rest left black
    assert (tiles(last.image)[7] == 0).all()


def test_page_out_of_range_names_the_page_count():
    assert page_indices(16, 0) == range(0, 16) and PAGE_SIZE == 16
    with pytest.raises(InputError, match=r"page 3 does not exist: the bank has 37 styles on 3 pages of 16 \(pages 0-2\)"):
        page_indices(37, 3)
    with pytest.raises(InputError, match="1 page of 16"):
        render_page(FlatModels(bank_of(4)), np.zeros((256, 256, 3), np.uint8), 1)


def run_cli(*args, cwd):
    # PYTHONPATH: this checkout's pastiche_core, whatever an editable install points at
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pastiche_core", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


def test_cli_preview_on_demo_weights(tmp_path):
    bank = bank_of(21)
    bank.save_npy(tmp_path / "bank.npy")
    out = tmp_path / "grid.png"
    common = ["styles", "--checkpoints", tmp_path / "none", "--bank", tmp_path / "bank.npy", "--preview", FACE]
    r = run_cli(*common, "--out", out, "--page", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "DEMO WEIGHTS" in r.stderr
    lines = r.stdout.splitlines()
    assert "page 1 (pages 0-1), styles 16-20 [DEMO WEIGHTS]" in lines[0]
    assert lines[1:] == [f"{i}\tstyle_{i:02d}.jpg" for i in range(16, 21)]
    img = Image.open(out)
    assert img.size == (4 * TILE, 2 * TILE)  # 256 px demo tiles, 4 a row, a partial last page
    assert img.text["pastiche:weights"].startswith("DEMO") and img.text["pastiche:page"] == "1"
    assert img.text["pastiche:styles"].splitlines()[0] == "16: style_16.jpg"
    grid = np.asarray(img.convert("RGB"))
    for t in tiles(grid)[:5]:
        band = t[-18:]
        assert (band == 0).mean() > 0.5 and (band > 200).any()  # the label, white on black
        assert t[TILE // 4: TILE // 2].std() > 5  # a rendered face, not a blank tile
    assert (tiles(grid)[5:] == np.zeros_like(tiles(grid)[0])).all()

    r = run_cli(*common, "--out", tmp_path / "past.png", "--page", "2", cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "past.png").exists()
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert err == ["error: page 2 does not exist: the bank has 21 styles on 2 pages of 16 (pages 0-1)"]


def test_cli_preview_needs_out_and_a_square_face(tmp_path):
    r = run_cli("styles", "--checkpoints", tmp_path, "--preview", FACE, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "error: --preview needs --out GRID.png"
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 200)).save(wide)
    r = run_cli("styles", "--checkpoints", tmp_path, "--preview", wide, "--out", tmp_path / "g.png", cwd=tmp_path)
    assert r.returncode == 2 and "not an aligned square face crop; pass --align-face" in r.stderr


def test_a_photo_is_aligned_first_with_align_face():
    from pastiche_core.faces.detect import available_detectors
    from pastiche_core.preview import load_face

    if available_detectors().get("dlib"):
        pytest.skip(f"dlib detector unavailable: {available_detectors()['dlib']}")
    photo = ROOT / "workflows" / "inputs" / "pastiche_photo.jpg"
    with pytest.raises(InputError, match="pass --align-face"):
        load_face(photo)
    face = load_face(photo, align_face=True)
    assert face.shape == (256, 256, 3) and face.dtype == np.uint8
