"""The one resumable loop (training/loop.py) every stage runs in.

A state written before the loop was shared by every stage (the committed
``fixtures/training/refine_state_v1.pt``, a refine-exstyle run stopped in the middle of its
second exemplar, made by the code of the commit before training/loop.py) still resumes, and
bit for bit: the refined codes equal those of an uninterrupted run of today's code.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pastiche_core.models import DualStyleGAN
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.styles import StyleBank
from pastiche_core.training.checkpointing import load_state, state_path

FIXTURES = Path(__file__).parent / "fixtures" / "training"
OLD_REFINE_STATE = FIXTURES / "refine_state_v1.pt"
NAMES = ["a.png", "b.png"]

pytestmark = pytest.mark.usefixtures("single_thread")


def refine_setup(root: Path) -> dict:
    """A 32 px DualStyleGAN with fixture-recipe weights, two codes and their target images
    (all made from fixed seeds, so the fixture state's run can be made again)."""
    gen = DualStyleGAN(32, res_index=6)  # 7 structure rows, as the official models
    shapes = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    gen.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()})
    gen.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ex = torch.randn(len(NAMES), gen.n_latent, 512, generator=g)
    ins = torch.randn(len(NAMES), gen.n_latent, 512, generator=g)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        target = gen(ins, gen.map_exstyle(ex + 0.7 * torch.randn(ex.shape, generator=g)), interp_weights=[1.0] * 8)
    for name, img in zip(NAMES, target):
        arr = ((img.clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(data / name, format="PNG")
    return {"generator": gen, "exstyle": StyleBank(NAMES, ex), "instyle": StyleBank(NAMES, ins), "data": data}


def refine_config():
    from pastiche_core.training.refine_stage import RefineConfig

    return RefineConfig(iters=3, batch=1, size=32, loss="pixel", lr_color=0.1, lr_structure=0.005, save_every=100)


def run_refine(s: dict, out: Path, **kw):
    from pastiche_core.training.refine_stage import refine_exstyle_codes

    return refine_exstyle_codes(s["generator"], s["exstyle"], s["instyle"], s["data"], out, refine_config(), **kw)


def test_a_state_written_before_the_shared_loop_resumes_bit_for_bit(tmp_path):
    s = refine_setup(tmp_path)
    reference = run_refine(s, tmp_path / "ref")
    out = tmp_path / "old"
    state_path(out, "refine-exstyle").parent.mkdir(parents=True)
    shutil.copyfile(OLD_REFINE_STATE, state_path(out, "refine-exstyle"))
    old = load_state(state_path(out, "refine-exstyle"))
    assert old["step"] == 4 and old["extra"]["ranks"] is not None  # stopped inside the second exemplar
    resumed = run_refine(s, out, resume=True)
    assert resumed.finished and resumed.steps_done == 6
    assert resumed.losses == reference.losses
    assert torch.equal(StyleBank.load(out / "refined_exstyle_code.npy").codes,
                       StyleBank.load(tmp_path / "ref" / "refined_exstyle_code.npy").codes)
