"""Write a models/dualstylegan/ folder in the official layout from the built-in demo weights
(256 px, deterministic): ``encoder.pt``, ``encoder_wplus.pt``, ``<style>/generator.pt``,
``<style>/exstyle_code.npy``, ``<style>/sampler.pt``. Used by the real-ComfyUI test.

    python tests/comfy_stub/make_model_folder.py DIR [--style cartoon] [--bank-size 32]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_folder(root: str | Path, style: str = "cartoon", bank_size: int = 32, wplus: bool = False) -> Path:
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
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--style", default="cartoon")
    p.add_argument("--bank-size", type=int, default=32)
    p.add_argument("--wplus", action="store_true", help="also write encoder_wplus.pt")
    a = p.parse_args(argv)
    write_folder(a.root, a.style, a.bank_size, a.wplus)
    print(f"wrote demo-weight checkpoint folder {a.root} (style {a.style})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
