"""LoadDualStyleGAN and the model bundle registered with ComfyUI's memory manager."""
from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from pathlib import Path

from comfy_api.latest import io

from .common import CATEGORY, MODEL_FOLDER, PasticheNodeError, model_roots, node_errors, user_error
from .types import DualStyleGANModel

log = logging.getLogger("pastiche")

DEMO_STYLE = "demo (random weights)"
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
_GEN_FILES = ("generator.pt", "generator.safetensors")
FINAL_GENERATOR = "final"
#: numbered training snapshots (train --snapshot-every): generator-001400.pt, never generator-pretrain*.pt
_SNAPSHOT = re.compile(r"^generator-\d{6}\.(pt|safetensors)$")


def find_styles() -> dict[str, Path]:
    """Style name -> its root (the folder holding encoder.pt), over every registered
    ``dualstylegan`` folder; the first root wins for a name found twice."""
    styles: dict[str, Path] = {}
    for root in model_roots():
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.is_dir() and e.name not in styles and any(os.path.isfile(os.path.join(e.path, f)) for f in _GEN_FILES):
                styles[e.name] = Path(root)
    return styles


def style_snapshots(style_folder: Path) -> list[str]:
    """The numbered generator snapshots in one style folder, oldest first."""
    try:
        return sorted(e.name for e in os.scandir(style_folder) if e.is_file() and _SNAPSHOT.match(e.name))
    except OSError:
        return []


def generator_options() -> list[str]:
    """'final' (the style's generator.pt), then every snapshot name found in any style folder."""
    names = {n for style, root in find_styles().items() for n in style_snapshots(root / style)}
    return [FINAL_GENERATOR, *sorted(names)]


def snapshot_file(style: str, generator: str) -> Path | None:
    """The file of ``generator`` (a snapshot name) in ``style``'s folder; None for 'final'."""
    if generator in ("", FINAL_GENERATOR):
        return None
    if not _SNAPSHOT.match(generator):
        raise PasticheNodeError(f"generator '{generator}' is not a training snapshot name (generator-NNNNNN.pt, "
                                f"six digits) or 'final'")
    if style == DEMO_STYLE:
        raise PasticheNodeError("the demo style has no training snapshots: set generator to 'final'")
    root = find_styles().get(style)
    folder = root / style if root is not None else None
    if folder is None or not (folder / generator).is_file():
        have = style_snapshots(folder) if folder is not None else []
        raise PasticheNodeError(f"style '{style}' has no snapshot '{generator}'"
                                + (f" (it has: {', '.join(have)})" if have else " (it has none: train with "
                                   "--snapshot-every N, or the Fine-Tune Stage, to make some)"))
    return folder / generator


def official_styles() -> tuple[str, ...]:
    from pastiche_core.download import OFFICIAL_STYLES  # no network, no huggingface_hub at import

    return OFFICIAL_STYLES


def style_options() -> list[str]:
    """Local style folders, then the official styles not downloaded yet, then the demo. The
    official ones keep their plain names (no "(not downloaded)" mark in the value): a workflow
    that stores "anime" stays valid once anime has been downloaded."""
    local = list(find_styles())
    return local + [s for s in official_styles() if s not in local] + [DEMO_STYLE]


def _download_folder(style: str) -> Path | None:
    """Where a style's files go: the root that already has the style, else the first
    registered dualstylegan folder (models/dualstylegan)."""
    root = find_styles().get(style)
    if root is not None:
        return Path(root)
    roots = model_roots()
    return Path(roots[0]) if roots else None


def ensure_style_files(style: str, download_missing: bool) -> None:
    """An official style whose files are missing: fetched when ``download_missing``, else a node
    error naming the folder and the option. Other styles are left to the loader's own errors."""
    if style == DEMO_STYLE or style not in official_styles():
        return
    from pastiche_core.download import REPO_ID, download_style, hub_page, missing_files

    folder = _download_folder(style)
    if folder is None:
        raise PasticheNodeError(f"no '{MODEL_FOLDER}' model folder is registered to put style '{style}' in")
    missing = missing_files(style, folder)
    if not missing or (not download_missing and style in find_styles()):
        return  # a style folder that is there but incomplete: the loader names the missing file
    if not download_missing:
        raise PasticheNodeError(f"style '{style}' is not downloaded: {', '.join(missing)} missing in '{folder}'. Turn "
                                f"on 'download_missing' to fetch the official files from Hugging Face ({REPO_ID}), "
                                f"or download them from {hub_page()} into that folder")
    import comfy.model_management as mm
    import comfy.utils
    from pastiche_core.errors import PasticheError

    bar = comfy.utils.ProgressBar(1000)

    def progress(name: str, done: int, total: int) -> None:
        bar.update_absolute(int(1000 * done / max(total, 1)), 1000)
        mm.throw_exception_if_processing_interrupted()  # Stop: the .part stays and the next run resumes

    log.info("Pastiche: downloading the official '%s' files into %s", style, folder)
    try:
        download_style(style, folder, progress=progress, log=lambda msg: log.info("Pastiche: %s", msg))
    except PasticheError as exc:
        raise PasticheNodeError(f"cannot download style '{style}': {exc}") from None


class DualStyleGANBundle:
    """A :class:`pastiche_core.pipeline.StylePipeline` whose models are handed to ComfyUI's memory
    manager: each model is wrapped in a ``ModelPatcher`` and loaded with ``load_models_gpu`` right
    before use, so ComfyUI moves it to its device, accounts for it and offloads it when needed."""

    def __init__(self, pipeline, style: str, root: Path | None, load_device, offload_device, dtype):
        self.pipeline, self.style, self.root = pipeline, style, root
        self.load_device, self.offload_device, self.dtype = load_device, offload_device, dtype
        self._patchers: dict[str, object] = {}
        self._lock = threading.Lock()

    demo = property(lambda self: self.pipeline.demo)

    @property
    def n_latent(self) -> int:
        """Latent rows of the loaded generator (18 at 1024 px, 14 at 256 px)."""
        return int(self.pipeline.n_latent)

    def __repr__(self) -> str:
        return f"DualStyleGANBundle(style={self.style!r}, demo={self.demo}, device={self.load_device}, dtype={self.dtype})"

    def _managed(self, key: str, build):
        import comfy.model_management as mm

        with self._lock:
            self.pipeline.device = self.offload_device  # new models are built off the compute device
            try:
                model = build()
            finally:
                self.pipeline.device = self.load_device
            patcher = self._patchers.get(key)
            if patcher is None or patcher.model is not model:
                patcher = whole_model_patcher_class()(model, load_device=self.load_device,
                                                      offload_device=self.offload_device)
                self._patchers[key] = patcher
            mm.load_models_gpu([patcher])
            return model

    @property
    def patchers(self) -> dict:
        return dict(self._patchers)

    def generator(self):
        return self._managed("generator", lambda: self.pipeline.generator)

    def encoder(self, space: str = "z+"):
        return self._managed(f"encoder{space}", lambda: self.pipeline.encoder(space))

    @property
    def bank(self):
        return self.pipeline.bank

    def sampler(self):
        return self._managed("sampler", lambda: self.pipeline.sampler)

    def has_sampler(self) -> bool:
        return self.demo or self.pipeline.paths.sampler is not None

    # -- library calls with the models loaded by ComfyUI --------------------------------------
    def encode(self, x, space: str = "z+"):
        self.encoder(space)
        return self.pipeline.encode(x, space)

    def exemplar_code(self, rgb):
        self.encoder("z+")
        return self.pipeline.exemplar_code(rgb)

    def generate(self, *args, **kwargs):
        self.generator()
        return self.pipeline.generate(*args, **kwargs)


_WHOLE_PATCHERS: dict = {}


def whole_model_patcher_class():
    """A ``ModelPatcher`` subclass that loads our models whole or not at all.

    ComfyUI's partial loading (``--lowvram``, ``--novram``, a small or busy GPU) moves a model
    module by module and only modules that own parameters; our FIR kernels and noise maps live
    in buffer-only submodules that it never moves, and a half-moved generator mixes devices in
    its forward. Our models are small (a few hundred MB), so loading them whole is the right
    trade: every load is a full load (which ends in ``model.to(device)``, buffers included), and
    a request to free part of one frees nothing, so ComfyUI falls back to detaching it whole.
    Built on first use so the class derives from the host's ModelPatcher (real or stub)."""
    import comfy.model_patcher

    base = comfy.model_patcher.ModelPatcher
    cls = _WHOLE_PATCHERS.get(base)
    if cls is None:
        class WholeModelPatcher(base):
            def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
                return super().load(device_to, lowvram_model_memory=lowvram_model_memory,
                                    force_patch_weights=force_patch_weights, full_load=True)

            def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
                # 0 freed: LoadedModel.model_unload then detaches the whole model instead
                return 0

        WholeModelPatcher.__qualname__ = WholeModelPatcher.__name__
        cls = _WHOLE_PATCHERS[base] = WholeModelPatcher
    return cls


def auto_dtype(device, n_params: int = 0):
    """The weights dtype of precision 'auto': float32, float16 or bfloat16, never anything else.

    ComfyUI's ``unet_dtype`` is made for diffusion models: it returns float8 under
    ``--fp8_e4m3fn-unet`` (our plain conv layers cannot compute in it) and follows flags whose
    trade-offs were measured on UNets. The rule here: float32 on the CPU (half precision is slow
    there and reproduces nothing); ``--fp32-unet``/``--force-fp32`` give float32;
    ``--bf16-unet`` bfloat16 and ``--fp16-unet``/``--force-fp16`` float16, each only where the
    device supports it (else the other half type, else float32); the fp8 flags are ignored (the
    GAN weights are small, so they save little and would cost accuracy); by default the half type
    ComfyUI would run on this device (against float32 a float16 image keeps ~55 dB PSNR, a
    bfloat16 one ~38 dB, see tests/test_ops.py), else float32."""
    import torch
    import comfy.model_management as mm
    from comfy.cli_args import args

    if device.type == "cpu":
        return torch.float32
    if getattr(args, "fp32_unet", False) or getattr(args, "fp64_unet", False) or getattr(args, "force_fp32", False):
        return torch.float32

    def supports(dtype):
        # manual_cast + not prioritize_performance: "can this device compute in it at all"
        check = mm.should_use_fp16 if dtype == torch.float16 else mm.should_use_bf16
        return bool(check(device=device, model_params=n_params, prioritize_performance=False, manual_cast=True))

    wanted = None
    if getattr(args, "bf16_unet", False):
        wanted = [torch.bfloat16, torch.float16]
    elif getattr(args, "fp16_unet", False) or getattr(args, "force_fp16", False):
        wanted = [torch.float16, torch.bfloat16]
    if wanted is not None:
        return next((dt for dt in wanted if supports(dt)), torch.float32)
    if mm.should_use_fp16(device=device, model_params=n_params):
        return torch.float16
    if mm.should_use_bf16(device=device, model_params=n_params):
        return torch.bfloat16
    return torch.float32


def _pick_dtype(precision: str, device, n_params: int):
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return auto_dtype(device, n_params)


_CACHE: dict[tuple, DualStyleGANBundle] = {}


def _files_stamp(root: Path, style: str, generator: Path | None = None) -> tuple:
    """(name, size, mtime) of the files a bundle loads: a retrained style is a new cache key."""
    from pastiche_core.pipeline import CheckpointPaths

    paths = CheckpointPaths.find(root, style)
    if generator is not None:
        paths.generator = generator
    out = []
    for p in (paths.generator, paths.encoder, paths.encoder_wplus, paths.bank, paths.sampler):
        if p is not None:
            try:
                st = os.stat(p)
                out.append((p.name, st.st_size, st.st_mtime_ns))
            except OSError:
                pass
    return tuple(out)


def precision_of(dtype) -> str:
    """The LoadDualStyleGAN precision that gives ``dtype`` (to reload a style like another one)."""
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "auto")


def load_bundle(style: str, precision: str = "auto", *, root: Path | None = None,
                reload: bool = False, generator: Path | None = None) -> DualStyleGANBundle:
    """The bundle of ``style``: found in the registered model folders, or in ``root`` when given
    (e.g. the folder a Fine-Tune Stage just wrote). ``reload``: never reuse a cached bundle.
    ``generator``: this generator file (a training snapshot) instead of the style's generator.pt."""
    import comfy.model_management as mm
    from pastiche_core.errors import PasticheError
    from pastiche_core.pipeline import DemoWeightsWarning, StylePipeline

    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    dtype = _pick_dtype(precision, load_device, 300_000_000)
    if style == DEMO_STYLE:
        root, stylename = None, "demo"
    elif root is not None:
        root, stylename = Path(root), style
    else:
        styles = find_styles()
        if style not in styles:
            where = ", ".join(model_roots()) or f"models/{MODEL_FOLDER}"
            raise PasticheNodeError(f"style folder '{style}' not found in {where}; put the official "
                                    f"'{style}/generator.pt' there (see the Pastiche README) or pick another style")
        root, stylename = styles[style], style
    stamp = _files_stamp(root, stylename, generator) if root is not None else ()
    key = (str(root), stylename, str(load_device), str(dtype), stamp)
    if key in _CACHE and not reload:
        return _CACHE[key]
    try:
        if root is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DemoWeightsWarning)
                pipe = StylePipeline(None, demo=True, device=offload_device, dtype=dtype)
            log.warning("Pastiche: using built-in DEMO weights (random, 256 px): outputs only show the graph working")
        else:
            pipe = StylePipeline.from_folder(root, stylename, allow_demo=False, device=offload_device, dtype=dtype,
                                             generator=generator)
            pipe.paths.require("generator")
            pipe.paths.require("encoder")
            pipe.paths.require("bank")
        bundle = DualStyleGANBundle(pipe, stylename, root, load_device, offload_device, dtype)
        # the dtype depends on launch flags and the device: say which, for bug reports (and tests)
        log.info("Pastiche: style '%s' runs on %s in %s (precision %s)", stylename, load_device,
                 str(dtype).replace("torch.", ""), precision)
        # load the parts every graph needs now, so a wrong file fails here, in the loader
        bundle.generator()
        bundle.encoder("z+")
        bundle.bank  # noqa: B018
    except PasticheError as exc:
        raise user_error(exc, f"cannot load DualStyleGAN style '{style}'") from None
    _CACHE.clear()  # keep one bundle: ComfyUI's cache holds the node output anyway
    _CACHE[key] = bundle
    return bundle


def _not_downloaded_note() -> str:
    local = find_styles()
    todo = [s for s in official_styles() if s not in local]
    if not todo:
        return "Every official style is downloaded."
    return (f"Official styles not downloaded yet: {', '.join(todo)} (turn on download_missing to fetch the one "
            f"you pick).")


class LoadDualStyleGAN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheLoadDualStyleGAN", display_name="Load DualStyleGAN", category=f"{CATEGORY}/loaders",
            description=("Loads one DualStyleGAN style from models/dualstylegan/: the folder is laid out like the "
                         "official checkpoint/ release (encoder.pt, encoder_wplus.pt, <style>/generator.pt, "
                         "<style>/refined_exstyle_code.npy or exstyle_code.npy, <style>/sampler.pt), or our "
                         ".safetensors files of the same names. Outputs the generator, encoders, style bank and "
                         "sampler as one model, managed by ComfyUI (device, offloading, precision). "
                         "'demo (random weights)' needs no files and only shows the graph working."),
            inputs=[
                io.Combo.Input("style", options=style_options(),
                               tooltip="A style folder in models/dualstylegan/ (e.g. cartoon, arcane, anime) that "
                                       "holds generator.pt; encoder.pt sits one level up, as in the official release. "
                                       + _not_downloaded_note()),
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="Weights dtype. auto: fp32 on CPU; on a GPU the half type it runs best, or "
                                       "what --fp16-unet / --force-fp16 / --bf16-unet / --fp32-unet ask for where the "
                                       "device supports it (fp8 flags are ignored: conv layers cannot run in fp8). "
                                       "fp32 reproduces the official outputs exactly."),
                # optional: API prompts saved before this input existed still validate
                io.Boolean.Input("download_missing", default=False, optional=True,
                                 tooltip="When an official style's files are not in models/dualstylegan/ yet, fetch "
                                         "them from Hugging Face (public-data/DualStyleGAN), with progress; off: a "
                                         "missing file stops the node with the folder to fill by hand."),
                io.Combo.Input("generator", options=generator_options(), default=FINAL_GENERATOR, optional=True,
                               tooltip="final: the style's generator.pt. generator-NNNNNN.pt: a numbered snapshot "
                                       "that training kept in the style folder (train --snapshot-every N), to pick "
                                       "the best iteration as the official recipe does (the paper used 1400)."),
            ],
            outputs=[DualStyleGANModel.Output(display_name="model",
                                              tooltip="Generator, encoders, style bank and sampler of this style.")],
        )

    @classmethod
    def fingerprint_inputs(cls, style: str, precision: str = "auto", download_missing: bool = False,
                           generator: str = FINAL_GENERATOR):
        """ComfyUI caches this node's output by its inputs, and a style retrained or replaced in place
        keeps its name: so the key also carries name, size and mtime of every file the loader will
        read (the same stamp that keys :data:`_CACHE`). A stat per file, no loading."""
        if style == DEMO_STYLE:
            return "demo"
        root = find_styles().get(style)
        if root is None:  # execute reports the missing folder; a later copy of it changes this value
            return f"missing:{style}"
        try:
            chosen = snapshot_file(style, generator)
        except PasticheNodeError:
            return f"missing:{style}/{generator}"
        return (str(root), style, _files_stamp(root, style, chosen))

    @classmethod
    @node_errors("Load DualStyleGAN")
    def execute(cls, style: str, precision: str = "auto", download_missing: bool = False,
                generator: str = FINAL_GENERATOR) -> io.NodeOutput:
        ensure_style_files(style, bool(download_missing))
        return io.NodeOutput(load_bundle(style, precision, generator=snapshot_file(style, generator)))
