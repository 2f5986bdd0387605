"""The whole inference path as one call: photo -> (align) -> encode -> style -> mix -> generate
-> (paste back). See :func:`stylize` and :class:`StylePipeline`.

The checkpoint folder is laid out like the official ``checkpoint/`` release, so the official
files drop in unchanged::

    DIR/encoder.pt             pSp z+ encoder (default)
    DIR/encoder_wplus.pt       pSp w+ encoder (--wplus)
    DIR/<style>/generator.pt   DualStyleGAN for that style
    DIR/<style>/refined_exstyle_code.npy   (else exstyle_code.npy) style bank
    DIR/<style>/sampler.pt     optional: random styles

Each ``.pt``/``.npy`` may be replaced by our ``.safetensors`` of the same stem. When the folder
holds none of these files, the pipeline runs on built-in **demo weights** (deterministic random
weights at 256 px) and says so loudly: the output then shows the pipeline working, not a
real stylisation.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoints import first_existing
from .errors import CheckpointError, InputError
from .models import DEFAULT_INTERP_WEIGHTS, DualStyleGAN, layer_weights

DEMO_LABEL = "DEMO WEIGHTS"
OFFICIAL_TRUNCATION = 0.75  # style_transfer.py default
OFFICIAL_STYLE_ID = 53  # style_transfer.py default --style_id

Progress = Callable[[str, float], None]


class DemoWeightsWarning(UserWarning):
    """Raised (as a warning) when the pipeline falls back to the built-in demo weights."""


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------
@dataclass
class CheckpointPaths:
    root: Path
    style: str
    generator: Path | None
    encoder: Path | None
    encoder_wplus: Path | None
    bank: Path | None
    sampler: Path | None

    @classmethod
    def find(cls, root: str | Path, style: str) -> "CheckpointPaths":
        root = Path(root)
        sdir = root / style
        return cls(root=root, style=style,
                   generator=first_existing(sdir, ["generator"], [".safetensors", ".pt"]),
                   encoder=first_existing(root, ["encoder"], [".safetensors", ".pt"]),
                   encoder_wplus=first_existing(root, ["encoder_wplus"], [".safetensors", ".pt"]),
                   bank=first_existing(sdir, ["refined_exstyle_code", "exstyle_code"], [".safetensors", ".npy"]),
                   sampler=first_existing(sdir, ["sampler"], [".safetensors", ".pt"]))

    @property
    def empty(self) -> bool:
        return not any([self.generator, self.encoder, self.encoder_wplus, self.bank, self.sampler])

    def require(self, what: str) -> Path:
        path = getattr(self, what)
        if path is None:
            where = {"generator": (self.root / self.style, "generator.pt"),
                     "encoder": (self.root, "encoder.pt"),
                     "encoder_wplus": (self.root, "encoder_wplus.pt"),
                     "bank": (self.root / self.style, "exstyle_code.npy (or refined_exstyle_code.npy)"),
                     "sampler": (self.root / self.style, "sampler.pt")}[what]
            styles = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
            hint = f" (style folders here: {', '.join(styles)})" if styles and what != "encoder" else ""
            raise CheckpointError(f"missing {where[1]}: put the official file in '{where[0]}'{hint}")
        return path


# --------------------------------------------------------------------------------------------
# Demo weights
# --------------------------------------------------------------------------------------------
DEMO_SIZE = 256
DEMO_STYLES = ("demo_style_0", "demo_style_1", "demo_style_2", "demo_style_3")


@functools.lru_cache(maxsize=4)
def _demo_state(key: str, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, torch.Tensor]:
    """Fixture-recipe tensors for a model's keys; cached because drawing ~10^8 normals takes seconds."""
    from .reference.fixture_weights import fixture_state_dict

    return {k: torch.from_numpy(v) for k, v in fixture_state_dict(dict(shapes)).items()}


def _demo_model(build: Callable[[], torch.nn.Module], key: str) -> torch.nn.Module:
    """``build()`` on the meta device, then the (cached) recipe tensors, copied so that models
    never share storage."""
    with torch.device("meta"):
        model = build()
    shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
    state = {k: v.clone() for k, v in _demo_state(key, shapes).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def demo_generator() -> DualStyleGAN:
    """The built-in demo DualStyleGAN: 256 px, deterministic fixture-recipe weights."""
    return _demo_model(lambda: DualStyleGAN(DEMO_SIZE), "generator")


def demo_encoder(space: str = "z+"):
    """The built-in demo pSp encoder for the 256 px demo generator (14 codes)."""
    from .models.psp import PSPEncoder
    from .reference.fixture_weights import fixture_tensor

    enc = _demo_model(lambda: PSPEncoder(output_size=DEMO_SIZE, space=space), "encoder")
    enc.set_latent_avg(torch.from_numpy(fixture_tensor("latent_avg", (enc.n_styles, 512))))
    enc.encoder.to(memory_format=torch.channels_last)
    return enc


def demo_sampler():
    """The built-in demo ICP sampler for the 256 px demo generator (7 structure + 7 colour rows)."""
    from .models.sampler import N_STRUCTURE_ROWS as N_STRUCTURE, StyleSampler

    n = 2 * int(math.log2(DEMO_SIZE)) - 2
    return _demo_model(lambda: StyleSampler(n_structure=N_STRUCTURE, n_color=n - N_STRUCTURE), "sampler")


def demo_bank():
    from .reference.fixture_weights import fixture_tensor
    from .styles import StyleBank

    n = 2 * int(math.log2(DEMO_SIZE)) - 2
    codes = fixture_tensor("demo_bank", (len(DEMO_STYLES), n, 512))
    return StyleBank(list(DEMO_STYLES), codes, space="z+")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def to_model_input(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> ``[1, 3, H, W]`` float in [-1, 1] (the official ToTensor + Normalize(0.5, 0.5))."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an HxWx3 uint8 RGB image, got {rgb.dtype} {list(rgb.shape)}")
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float().div(255.0)
    return ((x - 0.5) / 0.5)[None]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` or ``[1, 3, H, W]`` in [-1, 1] -> HxWx3 uint8, as the official ``save_image``
    (clamp, ``(x + 1) * 127.5``, truncation toward zero)."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InputError(f"to_uint8 takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    x = image.detach().float().clamp(-1, 1).cpu().permute(1, 2, 0).numpy()
    return ((x + 1.0) * 127.5).astype(np.uint8)


def exemplar_input(rgb: np.ndarray) -> torch.Tensor:
    """An exemplar as destylization reads style images: Resize(256) (shorter side), CenterCrop(256)."""
    from .faces.io import resize_center_crop

    return to_model_input(resize_center_crop(rgb, 256))


def exemplar_face(exemplar: str | Path | np.ndarray, detector: str = "dlib") -> np.ndarray:
    """An exemplar as RGB uint8: square images are used as they are (the official style images
    are aligned squares); others are face-aligned first, or refused with a clear message."""
    from .faces.io import load_image

    name = "the exemplar image" if isinstance(exemplar, np.ndarray) else f"exemplar '{exemplar}'"
    rgb = exemplar if isinstance(exemplar, np.ndarray) else load_image(exemplar)[0]
    h, w = rgb.shape[:2]
    if abs(h - w) <= max(2, 0.02 * max(h, w)):
        return rgb
    from .faces.align import align_faces
    from .faces.detect import NoFaceError

    try:
        return align_faces(rgb, size=256, face="largest", detector=detector, what=name)[0].image
    except NoFaceError:
        raise InputError(f"{name} is {w}x{h}, not a square face image, and no face was found in it to align; "
                         f"use a square, face-centred exemplar (like the official style images) or a portrait") from None


def draw_demo_caption(rgb: np.ndarray) -> np.ndarray:
    """Stamp "DEMO WEIGHTS" on the image so a demo output is never mistaken for a real one."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    opaque = (255,) if img.mode == "RGBA" else ()
    draw = ImageDraw.Draw(img)
    h = max(12, img.height // 16)
    draw.rectangle([0, 0, img.width, h + 4], fill=(0, 0, 0) + opaque)
    draw.text((4, 2), f"{DEMO_LABEL} - not a real stylisation", fill=(255, 255, 0) + opaque)
    return np.asarray(img)


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------
def resolve_weights(weights: Sequence[float] | None, structure: float | None, color: float | None) -> list[float]:
    """Per-layer weights from a full list (one per latent row: 18 at 1024, 14 at 256), or from a
    structure and/or colour weight (the other keeps the official default)."""
    if weights is not None:
        if structure is not None or color is not None:
            raise InputError("give either the per-layer weights or --structure/--color, not both")
        weights = [float(w) for w in weights]
        if len(weights) not in (14, 18):
            raise InputError(f"expected 18 per-layer weights (14 for a 256 px model), got {len(weights)}")
        return weights
    s = 0.75 if structure is None else float(structure)
    c = 1.0 if color is None else float(color)
    return layer_weights(s, c, 18)


@dataclass
class StylizeResult:
    image: np.ndarray                     # HxWx3 uint8: the stylised face (or the photo with it pasted back)
    face: np.ndarray                      # HxWx3 uint8: the (first) stylised face crop
    raw: torch.Tensor                     # [1, 3, S, S] generator output, unclamped
    instyle: torch.Tensor                 # [1, n, 512] intrinsic code (z+ or w+)
    exstyle_latent: torch.Tensor          # [1, n, 512] extrinsic z+ code after the colour swap
    exstyle: torch.Tensor                 # [1, n, 512] extrinsic w+ code fed to the generator
    demo: bool = False
    style_name: str | None = None
    faces: list = field(default_factory=list)  # every stylised face crop (several with face="all")
    info: dict = field(default_factory=dict)


class StylePipeline:
    """Models for style transfer, loaded lazily and (optionally) one at a time.

    generator: DualStyleGAN; encoders: pSp in z+ (default) and w+ (``wplus``); bank: the style
    bank of the chosen style; sampler: optional. ``device``/``dtype`` come from the caller.
    """

    def __init__(self, paths: CheckpointPaths | None, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, demo: bool = False, low_memory: bool = False):
        self.paths, self.demo = paths, demo
        self.device, self.dtype = torch.device(device), dtype
        self.low_memory = low_memory
        self._generator: DualStyleGAN | None = None
        self._encoders: dict[str, torch.nn.Module] = {}
        self._bank = None
        self._sampler = None

    @classmethod
    def from_folder(cls, root: str | Path, style: str, *, allow_demo: bool = True,
                    generator: str | Path | None = None, **kwargs) -> "StylePipeline":
        """Pipeline over an official-layout checkpoint folder; demo weights if it holds no files.
        ``generator``: this generator file instead of the style's ``generator.pt`` (e.g. a numbered
        training snapshot, ``generator-001400.pt``)."""
        root = Path(root)
        paths = CheckpointPaths.find(root, style)
        if generator is not None:
            if not Path(generator).is_file():
                raise InputError(f"--generator '{generator}' is not a file (expected a DualStyleGAN generator .pt "
                                 f"or .safetensors, e.g. a training snapshot generator-001400.pt)")
            paths.generator = Path(generator)
        if paths.empty and allow_demo:
            warnings.warn(f"{DEMO_LABEL}: no checkpoints in '{root}' (style '{style}'); using built-in random demo "
                          f"weights at {DEMO_SIZE}px. The output only shows the pipeline working. Put the official "
                          f"DualStyleGAN files there (see README) for real results.", DemoWeightsWarning, stacklevel=2)
            return cls(None, demo=True, **kwargs)
        if paths.empty:
            raise CheckpointError(f"no DualStyleGAN checkpoints in '{root}' for style '{style}'")
        return cls(paths, **kwargs)

    # -- models ------------------------------------------------------------------------------
    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(device=self.device, dtype=self.dtype)

    @property
    def generator(self) -> DualStyleGAN:
        if self._generator is None:
            # Models are loaded on first use, possibly inside an inference-mode call; their weights
            # must still be ordinary tensors (the faithful exemplar mode backpropagates through them).
            with torch.inference_mode(False):
                self._load_generator()
        return self._generator

    def _load_generator(self) -> None:
        if self.demo:
            model = demo_generator()
        else:
            from .checkpoints import load_dualstylegan

            model = load_dualstylegan(self.paths.require("generator"))
        self._generator = self._place(model).use_fast_path(True, channels_last=self.device.type == "cpu")

    def encoder(self, space: str = "z+"):
        if space not in self._encoders:
            with torch.inference_mode(False):
                self._load_encoder(space)
        return self._encoders[space]

    def _load_encoder(self, space: str) -> None:
        if self.low_memory:
            self.release()
        if self.demo:
            model = demo_encoder(space)
        else:
            from .models.psp import PSPEncoder

            model = PSPEncoder.from_checkpoint(self.paths.require("encoder" if space == "z+" else "encoder_wplus"),
                                               space=space)
        self._encoders[space] = self._place(model).eval().requires_grad_(False)

    @property
    def bank(self):
        if self._bank is None:
            if self.demo:
                self._bank = demo_bank()
            else:
                from .styles import StyleBank

                self._bank = StyleBank.load(self.paths.require("bank"))
        return self._bank

    @property
    def sampler(self):
        if self._sampler is None:
            if self.demo:
                with torch.inference_mode(False):
                    self._sampler = demo_sampler().to(self.device)
            else:
                from .models.sampler import StyleSampler

                self._sampler = StyleSampler.from_checkpoint(self.paths.require("sampler"), device=self.device)
        return self._sampler

    def release(self) -> None:
        """Drop loaded encoders and generator (``low_memory``: one model on the device at a time)."""
        self._encoders.clear()
        self._generator = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def n_latent(self) -> int:
        """Latent rows of the generator (18 at 1024, 14 at 256)."""
        return self.generator.n_latent

    # -- steps -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, image: torch.Tensor, space: str = "z+") -> torch.Tensor:
        """Aligned face ``[B, 3, H, W]`` in [-1, 1] -> intrinsic code ``[B, n, 512]`` in ``space``."""
        enc = self.encoder(space)
        return enc.encode(image.to(self.device, self.dtype)).float()

    @torch.inference_mode()
    def exemplar_code(self, rgb: np.ndarray) -> torch.Tensor:
        """Fast mode: an exemplar image -> extrinsic z+ code ``[1, n, 512]`` with the z+ encoder
        (destylization stage I). The exemplar should be a face, roughly centred."""
        return self.encode(exemplar_input(rgb), "z+")

    def faithful_exemplar_code(self, rgb: np.ndarray, steps: int = 100, progress: Progress | None = None,
                               should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Faithful mode: the fast code, then refined against the generator for ``steps`` steps
        (see :func:`pastiche_core.refine.refine_exstyle`)."""
        from .refine import refine_exstyle

        target = exemplar_input(rgb)
        fast = self.encode(target, "z+")
        report = None if progress is None else (lambda i, n, loss: progress(f"refine exemplar {i}/{n} (loss {loss:.3f})", i / n))
        code, _ = refine_exstyle(self.generator, fast, fast, target, steps=steps, progress=report,
                                 should_stop=should_stop)
        return code

    def style_code(self, style_id: int | str | None = None) -> tuple[torch.Tensor, str]:
        """A bank entry by index or name; None = the official default ``--style_id 53`` (0 for
        banks with fewer entries, such as the demo bank)."""
        bank = self.bank
        if style_id is None:
            style_id = OFFICIAL_STYLE_ID if len(bank) > OFFICIAL_STYLE_ID else 0
        return bank[style_id], bank.name_of(style_id)

    @torch.inference_mode()
    def generate(self, instyle: torch.Tensor, exstyle_latent: torch.Tensor, *, wplus: bool = False,
                 preserve_color: bool = False, weights: Sequence[float] | torch.Tensor = DEFAULT_INTERP_WEIGHTS,
                 truncation: float = OFFICIAL_TRUNCATION, seed: int | Sequence[int] | None = None):
        """The official style_transfer.py call.

        instyle ``[B, n, 512]`` (z+, or w+ when ``wplus``); exstyle_latent ``[1 or B, n, 512]`` z+.
        preserve_color: z+ mode swaps the colour rows of the z+ exemplar code before mapping,
        w+ mode swaps them after (both exactly as the official script).
        seed: None uses the checkpoint's stored noise; N draws the noise maps as the official
        script does after ``torch.manual_seed(N)`` on CPU; a list of B seeds gives sample b the
        noise of a one-image call with ``seed[b]`` (a batch with the images of separate calls).
        Returns ``(image [B, 3, S, S] unclamped, exstyle_latent, exstyle)``.
        """
        g = self.generator
        given = weights.shape[-1] if isinstance(weights, torch.Tensor) else len(weights)
        if given < g.n_latent:
            raise InputError(f"expected {g.n_latent} per-layer weights for this {g.size} px model, got {given}")
        instyle = instyle.to(self.device, self.dtype)
        latent = exstyle_latent.to(self.device, self.dtype)
        if preserve_color and latent.shape[0] != instyle.shape[0]:
            latent = latent.expand(instyle.shape[0], -1, -1)  # one exemplar code, per-face colour rows
        latent = latent.clone()
        colour = len(g.structure_layers)  # the first colour row
        if preserve_color and not wplus:
            latent[:, colour:] = instyle[:, colour:]
        exstyle = g.map_exstyle(latent)
        if preserve_color and wplus:
            exstyle[:, colour:] = instyle[:, colour:]
        noise, gen = "stored", None
        if isinstance(seed, (list, tuple)):
            if len(seed) != instyle.shape[0]:
                raise InputError(f"expected one seed per image ({instyle.shape[0]}), got {len(seed)}")
            draws = [g.generator.resolve_noise("random", 1, instyle, torch.Generator().manual_seed(int(s)))
                     for s in seed]
            noise = [torch.cat(maps) for maps in zip(*draws)]
        elif seed is not None:
            noise, gen = "random", torch.Generator().manual_seed(int(seed))
        image = g(instyle, exstyle, input_space="w" if wplus else "z", truncation=truncation, truncation_latent=0,
                  interp_weights=weights, noise=noise, generator=gen)
        return image.float(), latent.float(), exstyle.float()


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


def stylize(photo: str | Path | np.ndarray, *, checkpoints: str | Path | None = None, style: str = "cartoon",
            style_id: int | str | None = None, exemplar: str | Path | np.ndarray | None = None,
            exemplar_steps: int = 0, preserve_color: bool = False, wplus: bool = False,
            weights: Sequence[float] | None = None, structure: float | None = None, color: float | None = None,
            truncation: float = OFFICIAL_TRUNCATION, align_face: bool = False, paste_back: bool = False,
            face: str | int = "largest", detector: str = "dlib", seed: int | None = None,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, low_memory: bool = False,
            pipeline: StylePipeline | None = None, progress: Progress | None = None,
            generator: str | Path | None = None) -> StylizeResult:
    """Stylise a portrait photo after a bank style or an exemplar image.

    photo: a path or an HxWx3 uint8 array; an aligned square face crop unless ``align_face``.
    checkpoints/style: the official-layout folder and style name (or pass ``pipeline``);
    ``generator``: another generator file of the style (e.g. a training snapshot).
    style_id: index or name in the style bank (default: the official 53, or 0 for small banks).
    exemplar: an image whose style replaces the bank entry: encoded in one pass (fast mode), or
    refined against the generator for ``exemplar_steps`` steps (faithful mode, see
    :mod:`pastiche_core.refine`).
    weights / structure / color: per-layer weights, or the two knobs (default 0.75 / 1).
    truncation: of the intrinsic code toward 0 (official default 0.75).
    paste_back: put the stylised face back into the photo (needs ``align_face``).
    face / detector: with ``align_face``, which faces ("largest", "all", an index, a list "0,2",
    "left-to-right[:LIST]", see :func:`pastiche_core.faces.align.select_faces`) and the
    detector backend (see :mod:`pastiche_core.faces.detect`).
    """
    if pipeline is None:
        if checkpoints is None:
            raise InputError("give a checkpoints folder (or a pipeline)")
        pipeline = StylePipeline.from_folder(checkpoints, style, device=device, dtype=dtype, low_memory=low_memory,
                                             generator=generator)
    if paste_back and not align_face:
        raise InputError("paste_back needs align_face (the stylised crop is placed with the alignment transform)")
    layer_w = resolve_weights(weights, structure, color)
    if not 0.0 <= float(truncation) <= 1.0:
        raise InputError(f"truncation must be in [0, 1], got {truncation}")

    _report(progress, "load photo", 0.0)
    alpha, aligned = None, []
    if align_face:
        _report(progress, "align face", 0.1)
        from .faces.align import align_faces, align_file

        if isinstance(photo, np.ndarray):
            rgb, source = photo, "photo array"
            aligned = align_faces(rgb, size=256, face=face, detector=detector)
        else:
            aligned, rgb, alpha, _ = align_file(photo, size=256, face=face, detector=detector)
            source = str(photo)
        # style_transfer.py --align_face: the 256 crop is pixel-replicated to 1024 and pooled
        # back to 256 by the encoder, i.e. the encoder sees the crop itself.
        content = torch.cat([to_model_input(a.image) for a in aligned])
    else:
        if isinstance(photo, np.ndarray):
            rgb, source = photo, "photo array"
        else:
            from .faces.io import load_image

            rgb, alpha, _ = load_image(photo)
            source = str(photo)
        h, w = rgb.shape[:2]
        if h != w:
            raise InputError(f"{source} is {w}x{h}, not an aligned square face crop; pass --align-face to find and "
                             f"align the face")
        if h < 64:
            raise InputError(f"{source} is only {w}x{h} pixels; the encoder needs a face crop of at least 64x64")
        content = to_model_input(rgb)

    _report(progress, "encode photo", 0.2)
    space = "w+" if wplus else "z+"
    instyle = pipeline.encode(content, space)
    style_name = None
    if exemplar is not None:
        _report(progress, "encode exemplar", 0.35)
        ex_rgb = exemplar_face(exemplar, detector)
        if exemplar_steps:
            ex_latent = pipeline.faithful_exemplar_code(ex_rgb, exemplar_steps, progress)
        else:
            ex_latent = pipeline.exemplar_code(ex_rgb)
        style_name = "exemplar" if isinstance(exemplar, np.ndarray) else Path(exemplar).name
    else:
        ex_latent, style_name = pipeline.style_code(style_id)
    if pipeline.low_memory:
        pipeline.release()

    _report(progress, "generate", 0.5)
    raw, ex_latent, exstyle = pipeline.generate(instyle, ex_latent, wplus=wplus, preserve_color=preserve_color,
                                                weights=layer_w, truncation=truncation, seed=seed)
    faces = [to_uint8(r) for r in raw]
    image = faces[0]
    if paste_back:
        _report(progress, "paste back", 0.9)
        from .faces.paste import paste_faces

        image = paste_faces(rgb, faces, aligned, alpha=alpha)
    elif len(faces) > 1:  # several faces without paste-back: side by side
        image = np.concatenate(faces, axis=1)
    if pipeline.demo:
        image = draw_demo_caption(image)
    _report(progress, "done", 1.0)
    return StylizeResult(image=image, face=faces[0], faces=faces, raw=raw.cpu(), instyle=instyle.cpu(),
                         exstyle_latent=ex_latent.cpu(), exstyle=exstyle.cpu(), demo=pipeline.demo, style_name=style_name,
                         info={"weights": layer_w, "truncation": truncation, "seed": seed, "wplus": wplus,
                               "preserve_color": preserve_color})
