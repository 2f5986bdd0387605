"""DualStyleGANGenerate (faces + style + weights -> stylised faces) and ImageGrid."""
from __future__ import annotations

from comfy_api.latest import io

from .common import (CATEGORY, PasticheNodeError, Progress, check_image, image_to_model_input,
                     model_output_to_image, node_errors, user_error)
from .styles import _check_model
from .types import DualStyleGANModel, DualStyleGANStyle, DualStyleGANWeights, LayerWeights, StyleCodes

CHUNK = 4


def broadcast_sizes(**sizes: int) -> int:
    """Every size must be 1 or the largest; returns the largest (the output batch)."""
    m = max(sizes.values())
    bad = {k: v for k, v in sizes.items() if v not in (1, m)}
    if bad:
        desc = ", ".join(f"{v} {k}" for k, v in sizes.items())
        raise PasticheNodeError(f"cannot pair {desc}: each must be 1 or the same number (one face with many styles, "
                                f"many faces with one style, or as many of each)")
    return m


def _chunks(m: int, flags: list[bool], size: int) -> list[list[int]]:
    out, cur = [], []
    for i in range(m):
        if cur and (len(cur) == size or flags[i] != flags[cur[0]]):
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


class DualStyleGANGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheDualStyleGANGenerate", display_name="DualStyleGAN Generate", category=f"{CATEGORY}",
            description=("Stylises aligned face crops: each face is encoded (pSp), combined with an extrinsic style "
                         "through the per-layer weights, and rendered by DualStyleGAN (the official "
                         "style_transfer.py path). Batches pair up: one face with N styles or weight sets, N faces "
                         "with one style, or N of each."),
            inputs=[
                DualStyleGANModel.Input("model", tooltip="From Load DualStyleGAN."),
                io.Image.Input("faces", tooltip="Aligned face crops (square; from Align Face, or already-aligned "
                                                 "photos such as the official test images)."),
                DualStyleGANStyle.Input("style", tooltip="From Encode Exemplar Style, Sample Random Style or Interpolate Styles."),
                DualStyleGANWeights.Input("weights", optional=True,
                                          tooltip="From Mix Style Layers or Style Weight Grid. Not connected: the "
                                                  "official default (structure 0.75, colour 1)."),
                io.Boolean.Input("wplus", default=False,
                                 tooltip="Encode the faces with the w+ encoder (encoder_wplus.pt; official --wplus): "
                                         "keeps identity better, stylises less."),
                io.Float.Input("truncation", default=0.75, min=0.0, max=1.0, step=0.05,
                               tooltip="Pulls the face code toward the average (official default 0.75; 1 = none)."),
                io.Combo.Input("noise", options=["stored", "random"], default="stored",
                               tooltip="Generator noise: the checkpoint's stored maps (reproducible, official) or "
                                       "random maps from the seed."),
                # No "control after generate": the frontend would otherwise add one (it does for every INT
                # named seed) and randomise the seed after each run, so ComfyUI would re-render every
                # image on every queue although noise = stored (the default) never reads the seed.
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="With noise = random: output i uses seed + i (change it by hand for other "
                                     "noise). Not used with noise = stored."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="Stylised faces [N, S, S, 3] (S = 1024 for the "
                                                                    "official models).")],
        )

    @classmethod
    @node_errors("DualStyleGAN Generate")
    def execute(cls, model, faces, style, weights=None, wplus: bool = False, truncation: float = 0.75,
                noise: str = "stored", seed: int = 0) -> io.NodeOutput:
        import torch
        from pastiche_core.errors import PasticheError

        model = _check_model(model)
        if not isinstance(style, StyleCodes):
            raise PasticheNodeError("style must come from Encode Exemplar Style, Sample Random Style or Interpolate Styles")
        if weights is None:
            from .styles import _weights

            weights = LayerWeights([_weights(0.75, 1.0)], [False], ["default"])
        if not isinstance(weights, LayerWeights):
            raise PasticheNodeError("weights must come from Mix Style Layers or Style Weight Grid")
        faces = check_image(faces, "faces")
        b, h, w = faces.shape[:3]
        if h != w:
            raise PasticheNodeError(f"faces must be square aligned crops, got {w}x{h}: put an Align Face node first")
        if h < 64:
            raise PasticheNodeError(f"faces are only {w}x{h} pixels; the encoder needs crops of at least 64x64")
        n_latent = model.n_latent
        if style.latent.shape[1] != n_latent:
            raise PasticheNodeError(f"the style codes have {style.latent.shape[1]} rows but this model needs "
                                    f"{n_latent}: the style was made with another model")
        m = broadcast_sizes(faces=b, styles=len(style), weight_sets=len(weights))
        pick = lambda n, i: 0 if n == 1 else i  # noqa: E731
        space = "w+" if wplus else "z+"
        flags = [weights.preserve_color[pick(len(weights), i)] for i in range(m)]
        gen_chunks = _chunks(m, flags, CHUNK)
        enc_chunks = [list(range(i, min(i + CHUNK, b))) for i in range(0, b, CHUNK)]
        progress = Progress(len(enc_chunks) + len(gen_chunks))
        try:
            codes = []
            for idx in enc_chunks:
                codes.append(model.encode(image_to_model_input(faces[idx]), space).float().cpu())
                progress.step()
            instyle = torch.cat(codes)
            wtab = torch.tensor(weights.sets, dtype=torch.float32)
            out = []
            for idx in gen_chunks:
                ins = instyle[[pick(b, i) for i in idx]]
                ex = style.latent[[pick(len(style), i) for i in idx]]
                wt = wtab[[pick(len(weights), i) for i in idx]]
                image, _, _ = model.generate(ins, ex, wplus=bool(wplus), preserve_color=flags[idx[0]],
                                             weights=wt.to(model.load_device, model.dtype),
                                             truncation=float(truncation),
                                             # image i: the noise of a one-image call with seed + i
                                             seed=[(int(seed) + i) % (2 ** 63) for i in idx]
                                             if noise == "random" else None)
                out.append(model_output_to_image(image))
                progress.step()
        except PasticheError as exc:
            raise user_error(exc, "DualStyleGAN Generate") from None
        images = torch.cat(out)
        if model.demo:  # never let a demo-weight image pass for a real stylisation
            images = stamp_demo(images)
        return io.NodeOutput(images)


def stamp_demo(images: "torch.Tensor") -> "torch.Tensor":
    """IMAGE batch with the "DEMO WEIGHTS" caption of :func:`pastiche_core.pipeline.draw_demo_caption`."""
    import numpy as np
    import torch
    from pastiche_core.pipeline import draw_demo_caption

    stamped = [draw_demo_caption((img.cpu().numpy() * 255).round().astype(np.uint8)) for img in images]
    return torch.from_numpy(np.stack(stamped)).float().div(255).to(images.device)


class ImageGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheImageGrid", display_name="Image Grid", category=f"{CATEGORY}/utils",
            description="Tiles an IMAGE batch into one image, row by row (e.g. a structure x colour weight grid).",
            inputs=[
                io.Image.Input("images", tooltip="Images of one size."),
                io.Int.Input("columns", default=3, min=1, max=64, tooltip="Images per row."),
                io.Int.Input("padding", default=4, min=0, max=64, tooltip="Gap between images, in pixels."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Grey level of the gaps (0 black, 1 white)."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The grid, a batch of one.")],
        )

    @classmethod
    @node_errors("Image Grid")
    def execute(cls, images, columns: int = 3, padding: int = 4, background: float = 1.0) -> io.NodeOutput:
        import torch

        images = check_image(images, "images")
        n, h, w, c = images.shape
        cols = max(1, min(int(columns), n))
        rows = -(-n // cols)
        p = int(padding)
        grid = torch.full((rows * h + (rows - 1) * p, cols * w + (cols - 1) * p, c), float(background))
        for i in range(n):
            r, k = divmod(i, cols)
            grid[r * (h + p): r * (h + p) + h, k * (w + p): k * (w + p) + w] = images[i]
        return io.NodeOutput(grid[None])
