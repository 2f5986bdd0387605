"""Write a models/dualstylegan/ folder in the official layout from the built-in demo weights
(256 px, deterministic): ``encoder.pt``, ``encoder_wplus.pt``, ``<style>/generator.pt``,
``<style>/exstyle_code.npy``, ``<style>/sampler.pt``. Used by the real-ComfyUI test.

With ``--training`` it also writes the inputs of the training stages, at the same 256 px:
``stylegan2-ffhq-config-f.pt`` (``g``, ``d``, ``g_ema``, ``latent_avg``), ``vgg19-dcbb9e9d.pth``,
``model_ir_se50.pth`` and ``vgg16-397923af.pth`` (LPIPS's backbone). These are TEST FIXTURES, NOT
REAL WEIGHTS: the generator is the demo generator's intrinsic StyleGAN2, the discriminator, VGG19,
IR-SE50 and VGG16 are deterministic
fixture-recipe tensors (``pastiche_core.reference.fixture_weights``). Training runs on them and
writes real files, but nothing they produce is a useful model. (~0.5 GB more.)

    python tests/comfy_stub/make_model_folder.py DIR [--style cartoon] [--bank-size 32] [--training]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

#: the training-input files write_training_files() makes (all fixtures, see the module doc)
TRAINING_FILES = ("stylegan2-ffhq-config-f.pt", "vgg19-dcbb9e9d.pth", "model_ir_se50.pth", "vgg16-397923af.pth")
FIXTURE_NOTE = "TEST FIXTURE, NOT REAL WEIGHTS (tests/comfy_stub/make_model_folder.py)"


def write_folder(root: str | Path, style: str = "cartoon", bank_size: int = 32, wplus: bool = False,
                 training: bool = False) -> Path:
    import torch
    from pastiche_core.pipeline import DEMO_SIZE, demo_encoder, demo_generator, demo_sampler
    from pastiche_core.reference.fixture_weights import fixture_tensor
    from pastiche_core.styles import StyleBank

    root = Path(root)
    sdir = root / style
    sdir.mkdir(parents=True, exist_ok=True)
    g = demo_generator()
    torch.save({"g_ema": g.state_dict()}, sdir / "generator.pt")
    spaces = ["z+", "w+"] if wplus else ["z+"]
    for space in spaces:
        enc = demo_encoder(space)
        sd = {k: v for k, v in enc.state_dict().items()}
        opts = {"encoder_type": "GradualStyleEncoder", "input_nc": 3, "output_size": DEMO_SIZE,
                "start_from_latent_avg": True}
        if space == "w+":
            opts["output_size"] = DEMO_SIZE
        torch.save({"state_dict": sd, "opts": opts, "latent_avg": enc.latent_avg.clone()},
                   root / ("encoder.pt" if space == "z+" else "encoder_wplus.pt"))
    n = g.n_latent
    codes = torch.from_numpy(fixture_tensor("demo_bank_folder", (bank_size, n, 512)))
    StyleBank([f"fixture_{i:03d}.jpg" for i in range(bank_size)], codes, space="z+").save_npy(sdir / "exstyle_code.npy")
    torch.save(demo_sampler().official_state(), sdir / "sampler.pt")
    if training:
        write_training_files(root)
    return root


def _fixture_state(shapes: dict) -> dict:
    import torch
    from pastiche_core.reference.fixture_weights import fixture_state_dict

    return {k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()}


def write_training_files(root: str | Path) -> list[Path]:
    """The training stages' inputs at the demo size (TEST FIXTURES, not real weights; see the
    module doc) into ``root``: rosinality's FFHQ StyleGAN2 checkpoint layout, torchvision's VGG19
    and the ArcFace IR-SE50 state dict. Deterministic: the same bytes' worth of tensors every time."""
    import torch
    from pastiche_core.models.discriminator import Discriminator
    from pastiche_core.models.irse import Backbone
    from pastiche_core.pipeline import DEMO_SIZE, demo_generator
    from pastiche_core.training.losses import vgg19_feature_shapes

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # StyleGAN2 (rosinality's layout): g and g_ema = the demo DualStyleGAN's intrinsic generator
    sg2 = demo_generator().generator
    g_state = {k: v.detach().clone() for k, v in sg2.state_dict().items()}
    with torch.device("meta"):
        d = Discriminator(DEMO_SIZE)
    d_state = _fixture_state({k: tuple(v.shape) for k, v in d.state_dict().items()})
    latent_avg = sg2.mean_latent(4096, torch.Generator().manual_seed(0))[0].clone()
    out = [root / name for name in TRAINING_FILES]
    torch.save({"g": g_state, "d": d_state, "g_ema": {k: v.clone() for k, v in g_state.items()},
                "latent_avg": latent_avg}, out[0])
    # torchvision VGG19 'features.*' (the slices the losses use), He-rescaled as tests/test_training.py
    # does: the recipe's N(0, 1) would overflow float32 by relu5_1
    vgg = _fixture_state(vgg19_feature_shapes(5))
    for k, v in vgg.items():
        if k.endswith(".weight"):
            vgg[k] = v * math.sqrt(2.0 / (v.shape[1] * v.shape[2] * v.shape[3]))
    torch.save(vgg, out[1])
    # ArcFace IR-SE50 (the recipe has its own scales for these convs)
    with torch.device("meta"):
        net = Backbone(input_size=112, num_layers=50, mode="ir_se")
    torch.save(_fixture_state({k: tuple(v.shape) for k, v in net.state_dict().items()}), out[2])
    # torchvision VGG16 'features.*' (LPIPS's backbone), He-rescaled like VGG19
    from pastiche_core.training.lpips import vgg16_feature_shapes

    vgg16 = _fixture_state(vgg16_feature_shapes())
    torch.save({k: (v * math.sqrt(2.0 / (v.shape[1] * v.shape[2] * v.shape[3])) if k.endswith(".weight") else v)
                for k, v in vgg16.items()}, out[3])
    (root / "TRAINING_FIXTURES_README.txt").write_text(
        f"{', '.join(TRAINING_FILES)} in this folder are a {FIXTURE_NOTE}.\nThey let the training stages "
        "run end to end in tests; anything trained from them is meaningless.\n")
    return out


def main(argv=None) -> int:
    import importlib.util

    if importlib.util.find_spec("pastiche_core") is None:  # run from a checkout: use its pastiche_core
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--style", default="cartoon")
    p.add_argument("--bank-size", type=int, default=32)
    p.add_argument("--wplus", action="store_true", help="also write encoder_wplus.pt")
    p.add_argument("--training", action="store_true",
                   help="also write the training inputs (stylegan2-ffhq-config-f.pt, vgg19-dcbb9e9d.pth, "
                        "model_ir_se50.pth, vgg16-397923af.pth): TEST FIXTURES, not real weights (~0.5 GB)")
    p.add_argument("--training-only", action="store_true",
                   help="write only the training inputs into an existing folder")
    a = p.parse_args(argv)
    if a.training_only:
        write_training_files(a.root)
        print(f"wrote the training-input fixtures ({', '.join(TRAINING_FILES)}) into {a.root}: {FIXTURE_NOTE}")
        return 0
    write_folder(a.root, a.style, a.bank_size, a.wplus, a.training)
    print(f"wrote demo-weight checkpoint folder {a.root} (style {a.style})"
          + (f" + training inputs: {FIXTURE_NOTE}" if a.training else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
