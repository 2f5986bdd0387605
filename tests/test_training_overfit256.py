"""Opt-in slow tier (``PASTICHE_SLOW_TRAINING=1``): each GAN stage at the full official widths
and 256 px fits one fixed batch -- its main loss goes down over a few steps.

    PASTICHE_SLOW_TRAINING=1 python -m pytest -q -s tests/test_training_overfit256.py

The CI tests show "the loss goes down" with narrow 64 px models (test_training_gan.py) and run
the 256 px chain one step per stage (test_training_chain.py); these run each stage the way
``python -m pastiche_core train`` does (``run_stage``: real files, the stage's own loop,
optimisers, losses and checkpoints) on the full-width 256 px fixture models of
``tests/comfy_stub/make_model_folder.py --training`` (TEST FIXTURES, not real weights), with
every step drawing the same batch: the run's generators are reseeded before each step, so codes,
noise, images and flips repeat and the losses change only because the weights learn.

Settings (the same for every stage): batch 1, no path-length penalty (R1 runs once, at step 0),
no style mixing, lr 2e-4 -- a tenth of the official 0.002: the fixture weights are random, not a
trained equilibrium, and at 0.002 Adam's first steps (every weight moved by ~lr) make the
full-width discriminator overshoot (its loss went 1.49 -> 1.91 -> 1.94 in a trial run).

What is asserted (``-s`` prints every step's losses and the time):

* finetune-stylegan: the discriminator's logistic loss on the fixed real/fake pair (the stage
  has no other loss; it is what fits a fixed batch) falls below 0.9x its first value;
* pretrain: the perceptual L1 to the style-mixing target (the stage's monitored loss) falls
  below 0.9x;
* finetune: perceptual L1 + contextual/style losses to the exemplar (what fits the exemplar on
  paired steps; the adversarial, identity and L2 terms pull elsewhere) falls below 0.9x.

For the last two, step 0 draws its inputs another way (the encoder's code, an unpaired step)
and is left out; ``subspace_freq`` is set so that every later step is a z / paired step.

20-60 s per step at 256 px on the project's shared 2-core CPU, 6-9 minutes in all (two runs,
identical losses: finetune-stylegan d 1.376 -> 0.546 in 108-232 s, pretrain perc 0.395 -> 0.211
in 123-125 s, finetune perc + sty 3.097 -> 2.433 in 91-154 s): far over CI's budget, hence opt-in.
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

SLOW_ENV = "PASTICHE_SLOW_TRAINING"
ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "workflows" / "inputs"
STEPS = 4
SETTINGS = {"batch": 1, "lr": 2e-4, "path_regularize": 0.0, "mixing": 0.0, "face_check": False}

pytestmark = [pytest.mark.skipif(os.environ.get(SLOW_ENV) != "1",
                                 reason=f"slow tier: set {SLOW_ENV}=1 (full-width 256 px GAN steps, 6-9 min)"),
              pytest.mark.usefixtures("single_thread")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("pastiche_make_model_folder",
                                                  ROOT / "tests" / "comfy_stub" / "make_model_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = tmp_path_factory.mktemp("overfit256")
    root = mod.write_folder(base / "models", training=True)
    style, faces = base / "style", base / "faces"
    style.mkdir()
    faces.mkdir()
    shutil.copy(INPUTS / "pastiche_exemplar_cartoon.jpg", style / "cartoon.jpg")
    shutil.copy(INPUTS / "pastiche_face_aligned.jpg", faces / "face.jpg")
    return root, style, faces


@pytest.fixture
def one_fixed_batch(monkeypatch):
    """Every step draws what the first one drew (the run's generators and data order restart)."""
    from pastiche_core.training.gan import GANStage

    step = GANStage.train_step

    def fixed(self, i, world):
        self.rng.manual_seed(int(self.cfg.seed))
        self.aug_rng.manual_seed(int(self.cfg.seed) + 1)
        if self.epochs is not None:
            self.epochs.order, self.epochs.pos = [], 0
        return step(self, i, world)
    monkeypatch.setattr(GANStage, "train_step", fixed)


def train(stage: str, folders, out: Path, data: Path, **options) -> list[dict]:
    """Run ``stage`` for :data:`STEPS` steps; every step's loss terms."""
    from pastiche_core.training.runner import run_stage

    root = folders[0]
    steps: list[dict] = []
    start = time.perf_counter()
    result = run_stage(stage, checkpoints=root, out=out, data=data, loss_models=[root],
                       options={"iters": STEPS, **SETTINGS, **options},
                       progress=lambda n, total, info: steps.append(dict(info)))
    seconds = time.perf_counter() - start
    assert result.finished and len(steps) == STEPS
    keys = [k for k in ("d", "g", "adv", "perc", "sty", "id", "l2") if k in steps[0]]
    print(f"\n{stage}: {STEPS} steps in {seconds:.0f} s")
    for n, info in enumerate(steps):
        print(f"  step {n}: " + ", ".join(f"{k} {info[k]:.4f}" for k in keys))
    for info in steps:
        assert all(math.isfinite(info[k]) for k in keys if k != "perc"), info
    return steps


def test_finetune_stylegan_fits_one_batch_at_256(folders, one_fixed_batch, tmp_path):
    _, style, _ = folders
    steps = train("finetune-stylegan", folders, tmp_path / "toon", style)
    d = [info["d"] for info in steps]
    assert d[-1] < 0.9 * d[0], d


def test_pretrain_and_finetune_fit_one_batch_at_256(folders, one_fixed_batch, tmp_path):
    from pastiche_core.styles import StyleBank

    root, style, faces = folders
    out = tmp_path / "toon"
    steps = train("pretrain", folders, out, faces, subspace_freq=1000)
    perc = [info["perc"] for info in steps[1:]]
    assert perc[-1] < 0.9 * perc[0], perc

    n = 14  # 256 px: 2 * log2(256) - 2 style rows
    rng = torch.Generator().manual_seed(3)
    for name in ("instyle_code", "exstyle_code"):
        StyleBank(["cartoon.jpg"], torch.randn(1, n, 512, generator=rng), space="z+").save_npy(out / f"{name}.npy")
    steps = train("finetune", folders, out, style, subspace_freq=1000)
    fit = [info["perc"] + info["sty"] for info in steps[1:]]
    assert fit[-1] < 0.9 * fit[0], fit
