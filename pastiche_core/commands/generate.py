"""Random artistic portraits: random faces in random styles from the style sampler
(official generate.py).

    python -m pastiche_core generate --checkpoints DIR --style cartoon --batch 8 --out faces.png
"""
from __future__ import annotations

import argparse

from .common import add_model_options, check_output, save_png, torch_device_dtype


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--batch", type=int, default=8, help="number of images (default 8, >= 2 for the sampler)")
    parser.add_argument("--truncation", type=float, default=0.5, help="truncation of the random faces (default 0.5)")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W", help="18 per-layer weights")
    parser.add_argument("--fix-content", action="store_true", help="one face for the whole batch")
    parser.add_argument("--fix-color", action="store_true", help="one colour style for the whole batch")
    parser.add_argument("--fix-structure", action="store_true", help="one structure style for the whole batch")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    parser.add_argument("--out", required=True, metavar="OUT.png", help="grid image of all results")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..errors import InputError
    from ..pipeline import StylePipeline, draw_demo_caption, resolve_weights, to_uint8

    out = check_output(args.out)
    device, dtype = torch_device_dtype(args)
    if args.batch < 2:
        raise InputError("--batch must be at least 2 (the sampler normalises over the batch, as generate.py)")
    pipe = StylePipeline.from_folder(args.checkpoints, args.style, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(args.seed if args.seed is not None else torch.seed())
    instyle = torch.randn(args.batch, 512, generator=gen)  # drawn first, as generate.py
    exstyle_z = pipe.sampler.sample(args.batch, generator=gen, fix_structure=args.fix_structure or None,
                                    fix_color=args.fix_color or None)
    if args.fix_content:
        instyle = instyle[:1].expand_as(instyle)
    weights = resolve_weights(args.weights, None, None)
    g = pipe.generator
    with torch.inference_mode():
        exstyle = g.map_exstyle(exstyle_z.to(device, dtype))
        images = g(instyle.to(device, dtype), exstyle, truncation=args.truncation, truncation_latent=0,
                   interp_weights=weights, noise="random", generator=gen).float()
    tiles = [to_uint8(img) for img in images]
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    h, w = tiles[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = t
    if pipe.demo:
        grid = draw_demo_caption(grid)
    save_png(out, grid, demo=pipe.demo)
    print(f"{out}: {len(tiles)} images ({w}x{h}) in a {rows}x{cols} grid")
    return 0
