"""Style codes and layer weights: EncodeExemplarStyle, SampleRandomStyle, InterpolateStyles,
MixStyleLayers, StyleWeightGrid."""
from __future__ import annotations

import os
import re

from comfy_api.latest import io

from .common import CATEGORY, PasticheNodeError, Progress, check_image, image_to_uint8, node_errors, user_error
from .models import DualStyleGANBundle, find_styles
from .types import DualStyleGANModel, DualStyleGANStyle, DualStyleGANWeights, LayerWeights, StyleCodes

BY_INDEX = "(by index)"
_BANK_NAMES: dict[tuple, list[str]] = {}
_BANK_STEMS = ("refined_exstyle_code", "exstyle_code")


def _bank_names(path: str) -> list[str]:
    key = (path, os.path.getmtime(path))
    if key not in _BANK_NAMES:
        from pastiche_core.styles import StyleBank

        try:
            _BANK_NAMES[key] = list(StyleBank.load(path).names)
        except Exception:  # a broken bank shows up as an error in the loader, not here
            _BANK_NAMES[key] = []
    return _BANK_NAMES[key]


def bank_options() -> list[str]:
    """``(by index)`` + ``<style>/<entry name>`` for every bank in models/dualstylegan (and the demo)."""
    from pastiche_core.atomic import twin_is_stale
    from pastiche_core.pipeline import DEMO_STYLES

    opts = [BY_INDEX]
    for style, root in find_styles().items():
        for stem in _BANK_STEMS:
            hit = [os.path.join(root, style, stem + ext) for ext in (".safetensors", ".npy")]
            hit = [p for p in hit if os.path.isfile(p)]
            if len(hit) == 2 and twin_is_stale(hit[0]) is not None:
                hit = hit[1:]  # the .npy changed since the .safetensors was written with it: the .npy wins
            if hit:
                opts += [f"{style}/{n}" for n in _bank_names(hit[0])]
                break
    opts += [f"demo/{n}" for n in DEMO_STYLES]
    return opts


def _check_model(model) -> DualStyleGANBundle:
    if not isinstance(model, DualStyleGANBundle):
        raise PasticheNodeError("model must come from a Load DualStyleGAN node")
    return model


class EncodeExemplarStyle(io.ComfyNode):
    # No fingerprint_inputs: the bank is read through the model, and Load DualStyleGAN's fingerprint
    # already changes when the bank file does, which re-runs every node after it.
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheEncodeExemplarStyle", display_name="Encode Exemplar Style", category=f"{CATEGORY}/style",
            description=("The extrinsic style to apply: an entry of the model's style bank (by name or index), or, "
                         "when an exemplar image is connected, the style of that image (encoded with the z+ "
                         "encoder, the official fast path; the exemplar should be a roughly centred face)."),
            inputs=[
                DualStyleGANModel.Input("model", tooltip="From Load DualStyleGAN."),
                io.Combo.Input("style", options=bank_options(), default=BY_INDEX,
                               tooltip="A style-bank entry as <style>/<file name>, or '(by index)' to use 'index'. "
                                       "Ignored when an exemplar image is connected."),
                io.Int.Input("index", default=0, min=0, max=100000,
                             tooltip="Style-bank index (the official --style_id) when style is '(by index)'."),
                io.Image.Input("exemplar", optional=True,
                               tooltip="Optional exemplar images (a batch gives one style per image). Overrides "
                                       "the style bank."),
                io.Boolean.Input("align_exemplar", default=False,
                                 tooltip="Detect and FFHQ-align the face in each exemplar first (dlib). Leave off "
                                         "for exemplars that are already face crops."),
            ],
            outputs=[DualStyleGANStyle.Output(display_name="style", tooltip="Extrinsic style code(s), z+.")],
        )

    @classmethod
    @node_errors("Exemplar Style")
    def execute(cls, model, style: str = BY_INDEX, index: int = 0, exemplar=None,
                align_exemplar: bool = False) -> io.NodeOutput:
        import torch
        from pastiche_core.errors import PasticheError

        model = _check_model(model)
        if exemplar is not None:
            images = image_to_uint8(check_image(exemplar, "exemplar"))
            progress = Progress(len(images))
            codes, names = [], []
            for i, rgb in enumerate(images):
                h, w = rgb.shape[:2]
                if min(h, w) < 32:
                    raise PasticheNodeError(f"exemplar {i + 1} is only {w}x{h} pixels: use an exemplar image of at "
                                            f"least 256x256")
                try:
                    if align_exemplar:
                        from pastiche_core.faces.align import align_faces

                        rgb = align_faces(rgb, size=256, what=f"exemplar {i + 1}")[0].image
                    codes.append(model.exemplar_code(rgb).float().cpu())
                except PasticheError as exc:
                    raise user_error(exc, f"exemplar {i + 1}") from None
                names.append(f"exemplar {i + 1}")
                progress.step()
            return io.NodeOutput(StyleCodes(torch.cat(codes), names, "exemplar", model.style))
        bank = model.bank
        if style == BY_INDEX:
            key = int(index)
            if not 0 <= key < len(bank):
                raise PasticheNodeError(f"style index {key} is out of range: the '{model.style}' bank has "
                                        f"{len(bank)} styles (0-{len(bank) - 1})")
        else:
            prefix, _, key = style.partition("/")
            if prefix != model.style:
                raise PasticheNodeError(f"style '{style}' is from the '{prefix}' bank, but the model is "
                                        f"'{model.style}'; pick a '{model.style}/...' entry or '(by index)'")
        try:
            code, name = model.pipeline.style_code(key)
        except PasticheError as exc:
            raise user_error(exc, f"style '{style}'") from None
        return io.NodeOutput(StyleCodes(code.float().cpu().reshape(1, *code.shape[-2:]), [name], "bank", model.style))


class SampleRandomStyle(io.ComfyNode):
    # sampler.pt is read through the model too (see EncodeExemplarStyle): no fingerprint of its own.
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheSampleRandomStyle", display_name="Sample Random Style", category=f"{CATEGORY}/style",
            description=("Random extrinsic styles from the style's sampler (sampler.pt, the official generate.py "
                         "sampler). Fix structure or colour to vary only the other part."),
            inputs=[
                DualStyleGANModel.Input("model", tooltip="From Load DualStyleGAN; its style folder needs sampler.pt."),
                io.Int.Input("count", default=4, min=1, max=64, tooltip="How many styles to draw."),
                # The one seed that may randomise: new random styles on each queue is what this node is
                # for. The bundled workflow stores "fixed" so it reproduces its thumbnail.
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Random seed for the sampler noise; set the control below to 'randomize' for "
                                     "new styles on every queue."),
                io.Boolean.Input("fix_structure", default=False,
                                 tooltip="Every style gets the first style's structure (official --fix_structure)."),
                io.Boolean.Input("fix_color", default=False,
                                 tooltip="Every style gets the first style's colour (official --fix_color)."),
            ],
            outputs=[DualStyleGANStyle.Output(display_name="style", tooltip="count random style codes, z+.")],
        )

    @classmethod
    @node_errors("Sample Random Style")
    def execute(cls, model, count: int = 4, seed: int = 0, fix_structure: bool = False,
                fix_color: bool = False) -> io.NodeOutput:
        import torch
        from pastiche_core.errors import PasticheError

        model = _check_model(model)
        if not model.has_sampler():
            raise PasticheNodeError(f"style '{model.style}' has no sampler.pt in its folder: random styles need the "
                                    f"official sampler (released for some styles only); use Encode Exemplar Style instead")
        progress = Progress(1)
        try:
            sampler = model.sampler()
            n = max(int(count), 2)  # the official sampler uses batch statistics: it needs two or more
            gen = torch.Generator().manual_seed(int(seed) % (2 ** 63))
            codes = sampler.sample(n, gen, fix_structure=bool(fix_structure) or None,
                                   fix_color=bool(fix_color) or None)[: int(count)]
        except PasticheError as exc:
            raise user_error(exc, "Sample Random Style") from None
        if codes.shape[1] != model.n_latent:
            raise PasticheNodeError(f"the sampler makes {codes.shape[1]}-row codes, the generator needs {model.n_latent}")
        progress.step()
        names = [f"random {seed}:{i}" for i in range(int(count))]
        return io.NodeOutput(StyleCodes(codes.float().cpu(), names, "sampler", model.style))


class InterpolateStyles(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheInterpolateStyles", display_name="Interpolate Styles", category=f"{CATEGORY}/style",
            description=("Blends two styles linearly in z+ (the bank's space). steps = 1 gives one style at t; "
                         "steps > 1 gives a sweep from style_a to style_b."),
            inputs=[
                DualStyleGANStyle.Input("style_a", tooltip="Style at t = 0."),
                DualStyleGANStyle.Input("style_b", tooltip="Style at t = 1."),
                io.Float.Input("t", default=0.5, min=-1.0, max=2.0, step=0.05,
                               tooltip="Blend amount when steps = 1 (0 = style_a, 1 = style_b; outside 0..1 extrapolates)."),
                io.Int.Input("steps", default=1, min=1, max=64,
                             tooltip="1: one style at t. More: that many styles evenly from style_a to style_b."),
            ],
            outputs=[DualStyleGANStyle.Output(display_name="style", tooltip="The blended style code(s).")],
        )

    @classmethod
    @node_errors("Interpolate Styles")
    def execute(cls, style_a, style_b, t: float = 0.5, steps: int = 1) -> io.NodeOutput:
        import torch
        from pastiche_core.styles import interpolate

        for s, n in ((style_a, "style_a"), (style_b, "style_b")):
            if not isinstance(s, StyleCodes):
                raise PasticheNodeError(f"{n} must be a style (from Encode Exemplar Style, Sample Random Style, ...)")
        a, b = style_a.latent, style_b.latent
        if a.shape[1:] != b.shape[1:]:
            raise PasticheNodeError(f"the styles have different shapes ({list(a.shape[1:])} vs {list(b.shape[1:])}): "
                                    "they come from models of different sizes")
        steps = int(steps)
        if steps == 1:
            if len(style_a) != len(style_b) and 1 not in (len(style_a), len(style_b)):
                raise PasticheNodeError(f"style_a has {len(style_a)} codes and style_b {len(style_b)}: give one of "
                                        "each, or the same number")
            out = interpolate(a, b, float(t))
            names = [f"mix({na}, {nb}, {float(t):g})" for na, nb in zip(style_a.names * len(out), style_b.names * len(out))][: len(out)]
        else:
            if len(style_a) != 1 or len(style_b) != 1:
                raise PasticheNodeError("a sweep (steps > 1) needs one code in style_a and one in style_b")
            ts = torch.linspace(0.0, 1.0, steps).tolist()
            out = interpolate(a, b, ts)
            names = [f"mix({style_a.names[0]}, {style_b.names[0]}, {x:.3g})" for x in ts]
        return io.NodeOutput(StyleCodes(out.float().cpu(), names, "interpolation", style_a.style or style_b.style))


# --------------------------------------------------------------------------------------------
# Layer weights
# --------------------------------------------------------------------------------------------
CUSTOM = "custom (sliders)"


def _presets() -> list[str]:
    from pastiche_core.styles import LAYER_WEIGHT_PRESETS

    return [CUSTOM] + list(LAYER_WEIGHT_PRESETS)


def parse_values(text: str, what: str) -> list[float]:
    parts = [p for p in re.split(r"[\s,;]+", text.strip().strip("[]()")) if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise PasticheNodeError(f"{what} must be numbers separated by commas, got {text!r}") from None


def check_layer_weights(text: str) -> list[float]:
    """The typed per-layer weights (empty text = none): numbers, 1 to 18 of them."""
    if not text or not text.strip():
        return []
    vals = parse_values(text, "layer_weights")
    if not 1 <= len(vals) <= 18:
        raise PasticheNodeError(f"layer_weights needs up to 18 values, got {len(vals)}")
    return vals


def check_grid(structure_values: str, color_values: str) -> tuple[list[float], list[float]]:
    ss, cs = parse_values(structure_values, "structure_values"), parse_values(color_values, "color_values")
    if not ss or not cs:
        raise PasticheNodeError("give at least one structure value and one colour value")
    if len(ss) * len(cs) > 256:
        raise PasticheNodeError(f"{len(ss)} x {len(cs)} = {len(ss) * len(cs)} cells is too many (256 at most)")
    return ss, cs


def _validation(check, *values) -> bool | str:
    """A ``validate_inputs`` answer: True, or the message ComfyUI shows at queue time. A value that
    arrives through a link is None here (ComfyUI validates before running anything): execute checks it."""
    if any(v is None for v in values):
        return True
    try:
        check(*values)
    except PasticheNodeError as exc:
        return str(exc)
    return True


def _weights(structure: float, color: float) -> tuple[float, ...]:
    from pastiche_core.models.dualstylegan import layer_weights

    return tuple(float(x) for x in layer_weights(float(structure), float(color), 18))


class MixStyleLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheMixStyleLayers", display_name="Mix Style Layers", category=f"{CATEGORY}/style",
            description=("How strongly the exemplar's style drives each of the generator's 18 layers: layers 0-6 "
                         "carry structure (face shape), 7-17 colour and texture. Set the two sliders, pick a preset "
                         "from the paper/official scripts, or type all 18 values."),
            inputs=[
                io.Combo.Input("preset", options=_presets(), default=CUSTOM,
                               tooltip="A named weight set; 'custom (sliders)' uses the two sliders below. "
                                       "default = structure 0.75, colour 1 (official default)."),
                io.Float.Input("structure_weight", default=0.75, min=0.0, max=1.0, step=0.05,
                               tooltip="Weight of the exemplar's structure on layers 0-6 (0 = the photo's face "
                                       "shape, 1 = the exemplar's)."),
                io.Float.Input("color_weight", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Weight of the exemplar's colour/texture on layers 7-17."),
                io.Boolean.Input("preserve_color", default=False,
                                 tooltip="Keep the photo's colours (official --preserve_color: the colour rows of "
                                         "the style code are taken from the photo)."),
                io.String.Input("layer_weights", default="", optional=True,
                                tooltip="Optional: all 18 per-layer weights separated by commas (fewer than 18 are "
                                        "padded with 1). Overrides the preset and the sliders."),
            ],
            outputs=[DualStyleGANWeights.Output(display_name="weights", tooltip="Per-layer weights.")],
        )

    @classmethod
    def validate_inputs(cls, layer_weights: str | None = None) -> bool | str:
        # Only the typed text is named here: inputs named in this signature skip ComfyUI's own
        # min/max/option checks, which the sliders and the preset keep this way.
        return _validation(check_layer_weights, layer_weights)

    @classmethod
    @node_errors("Mix Style Layers")
    def execute(cls, preset: str = CUSTOM, structure_weight: float = 0.75, color_weight: float = 1.0,
                preserve_color: bool = False, layer_weights: str = "") -> io.NodeOutput:
        from pastiche_core.styles import layer_weight_preset

        vals = check_layer_weights(layer_weights)
        if vals:
            w, label = tuple(vals + [1.0] * (18 - len(vals))), "custom"
        elif preset != CUSTOM:
            try:
                w, label = tuple(layer_weight_preset(preset, 18)), preset
            except Exception as exc:
                raise user_error(exc, f"preset '{preset}'") from None
        else:
            w = _weights(structure_weight, color_weight)
            label = f"s{float(structure_weight):g} c{float(color_weight):g}"
        return io.NodeOutput(LayerWeights([w], [bool(preserve_color)], [label]))


class StyleWeightGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheStyleWeightGrid", display_name="Style Weight Grid", category=f"{CATEGORY}/style",
            description=("A batch of layer weights for a structure x colour grid: one entry per pair, rows = "
                         "structure values, columns = colour values (row by row). Feed it to DualStyleGAN "
                         "Generate and the images to Image Grid with columns = number of colour values."),
            inputs=[
                io.String.Input("structure_values", default="0, 0.25, 0.5, 0.75, 1",
                                tooltip="Structure weights (layers 0-6), separated by commas: the grid's rows."),
                io.String.Input("color_values", default="0, 0.5, 1",
                                tooltip="Colour weights (layers 7-17), separated by commas: the grid's columns."),
                io.Boolean.Input("preserve_color", default=False, tooltip="Keep the photo's colours in every cell."),
            ],
            outputs=[DualStyleGANWeights.Output(display_name="weights", tooltip="rows x columns weight sets.")],
        )

    @classmethod
    def validate_inputs(cls, structure_values: str | None = None, color_values: str | None = None) -> bool | str:
        # the two text fields only: a mistyped list shows when the prompt is queued, not mid-run
        return _validation(check_grid, structure_values, color_values)

    @classmethod
    @node_errors("Style Weight Grid")
    def execute(cls, structure_values: str, color_values: str, preserve_color: bool = False) -> io.NodeOutput:
        ss, cs = check_grid(structure_values, color_values)
        sets = [_weights(s, c) for s in ss for c in cs]
        labels = [f"s{s:g} c{c:g}" for s in ss for c in cs]
        return io.NodeOutput(LayerWeights(sets, [bool(preserve_color)] * len(sets), labels))


class StylePreviewGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheStylePreviewGrid", display_name="Style Preview Grid", category=f"{CATEGORY}/style",
            description=("Renders one page of the model's style bank (16 styles a page, pages counted from 0) on an "
                         "aligned face, each tile labelled with its bank index and name, so a style can be picked by "
                         "sight; then use that index (or name) in Encode Exemplar Style."),
            inputs=[
                DualStyleGANModel.Input("model", tooltip="From Load DualStyleGAN: its style bank is previewed."),
                io.Image.Input("image", tooltip="An aligned square face crop (e.g. from Align Face); the first "
                                                "image of a batch is used."),
                io.Int.Input("page", default=0, min=0, max=10000,
                             tooltip="Which 16 styles: page 0 shows indices 0-15, page 1 shows 16-31, ..."),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="The page as one image: 4 tiles a row, each "
                                                                  "labelled 'index: name'."),
                     io.String.Output(display_name="styles", tooltip="The page's styles, one 'index: name' a line.")],
        )

    @classmethod
    @node_errors("Style Preview Grid")
    def execute(cls, model, image, page: int = 0) -> io.NodeOutput:
        from pastiche_core.errors import PasticheError
        from pastiche_core.preview import page_indices, render_page

        from .common import uint8_to_image

        model = _check_model(model)
        face = image_to_uint8(check_image(image, "image")[:1])[0]
        h, w = face.shape[:2]
        if h != w or h < 64:
            raise PasticheNodeError(f"image is {w}x{h}: the preview needs an aligned square face crop of at least "
                                    f"64x64 (put an Align Face node before it)")
        try:
            n_chunks = -(-len(page_indices(len(model.bank), int(page))) // 4)
            progress = Progress(n_chunks)
            result = render_page(model, face, int(page), batch=4, progress=lambda done, total: progress.step())
        except PasticheError as exc:
            raise PasticheNodeError(f"Style Preview Grid ('{model.style}' bank): {exc}") from None
        return io.NodeOutput(uint8_to_image([result.image]), result.listing())
