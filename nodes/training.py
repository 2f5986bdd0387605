"""FineTuneStage: one stage of the official DualStyleGAN training pipeline as a node.

A thin adapter over :func:`pastiche_core.training.runner.run_stage`: it turns the graph's inputs
into the runner's arguments (folders, options, device, progress and stop callbacks) and the
result back into graph outputs. No model maths here.

Files: the stage reads and writes ``models/dualstylegan/<save_name>/`` (the run's output
folder); further inputs are looked up in the input model's style folder and in
``models/dualstylegan/`` itself (``stylegan2-ffhq-config-f.pt``, ``encoder.pt``,
``vgg19-dcbb9e9d.pth``, ``vgg16-397923af.pth``, ``model_ir_se50.pth``), exactly as
``python -m pastiche_core train`` does with ``--out``/``--checkpoints``/``--style``. Nothing is
lost: a stage whose folder already has its training state runs only with ``resume`` (continue)
or ``overwrite`` (start afresh), one run at a time holds the folder (the runner's lock), and
``data_folder`` must lie inside ComfyUI's input folder (workflows come from anywhere; they may
not point training at other files).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from comfy_api.latest import io

from .common import (CATEGORY, PasticheNodeError, check_image, image_to_uint8, model_roots, node_errors,
                     user_error)
from .styles import _check_model
from .types import DualStyleGANModel

log = logging.getLogger("pastiche")

#: combo label -> runner stage, in pipeline order
STAGE_LABELS: dict[str, str] = {
    "1 finetune-stylegan (StyleGAN on exemplars)": "finetune-stylegan",
    "2 destylize (exemplar style codes)": "destylize",
    "3 pretrain (DualStyleGAN on face photos)": "pretrain",
    "4 finetune (DualStyleGAN on exemplars)": "finetune",
    "5 refine-exstyle (refine style codes)": "refine-exstyle",
    "6 sampler (random-style sampler)": "sampler",
}
STAGES = list(STAGE_LABELS)
DEFAULT_STAGE = STAGES[3]
GAN_STAGES = ("finetune-stylegan", "pretrain", "finetune")
TRAIN_IMAGES = "train_images"   # <out>/train_images: the exemplars written from the IMAGE input
FACE_IMAGES = "face_images"     # <out>/face_images: pretrain's face photos
LOSS_CHOICES = ("default", "lpips", "vgg", "pixel")  # "default": lpips, or a resumed run's own loss
PREVIEW_MAX = 512               # ComfyUI's default --preview-size
NO_PREVIEW = 10 ** 9            # sample_every when previews are only wanted at the end
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")



def _official(key: str, skip: tuple[str, ...] = ()) -> str:
    """'finetune-stylegan 600, destylize 300, ...': the stages' defaults of one option, from their Configs."""
    from pastiche_core.training.options import defaults

    return ", ".join(f"{stage} {defaults(stage)[key]}" for stage in STAGE_LABELS.values()
                     if key in defaults(stage) and defaults(stage)[key] is not None and stage not in skip)


ITERATIONS_TIP = (f"Training steps; 0 = the official default: {_official('iters')} (destylize and refine-exstyle: "
                  f"per batch of exemplars; pretrain: + 2 x iters/10 warm-up steps); sampler int(500000 / codes) "
                  f"epochs (steps per net). Small numbers only test the graph.")
BATCH_TIP = (f"Images (or codes) per step; 0 = the official default: {_official('batch')}. The GAN stages need at "
             f"least this many images.")
LR_TIP = (f"Learning rate; 0 = the official default: {_official('lr')}, refine-exstyle colour {_official('lr_color')} "
          f"(structure gets half of it). The sampler always uses its official schedule.")


def loss_weights() -> dict[str, str]:
    """node input -> finetune Config field, for the loss weights the node offers (in the Config's order)."""
    from pastiche_core.training.options import FinetuneConfig, user_options

    return {f.metadata["node"]: name for name, f in user_options(FinetuneConfig).items() if f.metadata["node"]}


def _weight_inputs() -> list:
    """The finetune loss-weight inputs, their defaults and tooltips from FinetuneConfig."""
    from pastiche_core.training.options import FinetuneConfig, default, user_options

    options = user_options(FinetuneConfig)
    out = []
    for node_name, name in loss_weights().items():
        value = default(FinetuneConfig, name)
        text = options[name].metadata["help"].removeprefix("finetune: ")
        out.append(io.Float.Input(node_name, default=value, min=0.0, max=100.0, step=0.001 if value < 0.1 else 0.01,
                                  tooltip=f"finetune only: {text} (official {value:g})."))
    return out


def _wrap(exc: BaseException, stage: str) -> BaseException:
    return user_error(exc, f"Fine-Tune Stage ({stage})")


def check_save_name(save_name) -> str:
    """A folder name under models/dualstylegan/: non-empty, one path component."""
    name = str(save_name or "").strip()
    if not name:
        raise PasticheNodeError("save_name is empty: give the name of the style folder to write "
                                "(models/dualstylegan/<save_name>/)")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in seps) or name in (".", "..") or ":" in name or name.startswith("."):
        raise PasticheNodeError(f"save_name {save_name!r} must be a plain folder name (no '/', '\\', ':', and not "
                                f"'.' or '..' or starting with '.'): it names models/dualstylegan/<save_name>/")
    return name


def input_subfolder(text: str) -> Path:
    """``data_folder`` -> a folder inside ComfyUI's input directory. A workflow can come from
    anyone, so it may only point the training at what the server's input folder holds: a
    relative path is taken under it; an absolute one (even one inside), a ``..`` part, ``~``
    or a drive letter is refused. (A link the server's owner placed inside is followed.)"""
    import folder_paths

    root = Path(folder_paths.get_input_directory())
    raw = str(text).strip()
    parts = raw.replace("\\", "/").split("/")
    if os.path.isabs(raw) or raw.startswith(("/", "\\", "~")) or ".." in parts or ":" in raw or "\x00" in raw:
        raise PasticheNodeError(f"data_folder {text!r} must be a folder inside ComfyUI's input folder, given "
                                f"relative to it (e.g. my_style/train; no absolute path, '..', '~' or drive): "
                                f"{root}")
    return root / os.path.normpath(raw)


def write_images(images, folder: Path) -> list[Path]:
    """IMAGE batch -> ``folder/image_000.png`` ... (old image files there are removed first), so the
    same batch always gives the same files (the banks of destylize key their codes by file name)."""
    from PIL import Image
    from pastiche_core.atomic import atomic_write

    arrays = image_to_uint8(check_image(images, "images"))
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES:
            p.unlink()
    paths = []
    for i, rgb in enumerate(arrays):
        p = folder / f"image_{i:03d}.png"
        atomic_write(p, lambda tmp, rgb=rgb: Image.fromarray(rgb).save(tmp, format="PNG", compress_level=4))
        paths.append(p)
    return paths


def _tile(x):
    """Preview batch [B, 3, H, W] in [-1, 1] -> one PIL image, the samples side by side."""
    import numpy as np
    from PIL import Image

    x = x[:4].detach().float().cpu().clamp(-1, 1)
    arr = ((x + 1) * 127.5).round().to(dtype=__import__("torch").uint8).permute(0, 2, 3, 1).numpy()
    return Image.fromarray(np.ascontiguousarray(np.concatenate(list(arr), axis=1)))


class _Reporter:
    """The runner's ``progress``/``should_stop`` callbacks on ComfyUI's ProgressBar and Stop button.

    A Stop must reach the stage through ``should_stop`` (the stage then saves its state, so the run
    can resume); ComfyUI's progress hook would instead raise the interruption from inside the
    training loop. So no bar update is sent once a Stop is pending, and an interruption raised
    by the hook is caught and turned into a stop request."""

    def __init__(self):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(1)
        self.stop = False
        self.done = self.total = 0
        self.first = None  # the first step reported (> 1 when a run resumed)
        self.preview = None
        self.last: dict = {}

    def progress(self, done: int, total: int, info: dict) -> None:
        import comfy.model_management as mm

        self.done, self.total, self.last = int(done), int(total), dict(info or {})
        if self.first is None:
            self.first = self.done
        pv = self.last.pop("preview", None)
        frame = None
        if pv is not None:
            self.preview = pv.detach().float().cpu()
            frame = ("PNG", _tile(self.preview), PREVIEW_MAX)
        if self.stop or mm.processing_interrupted():
            self.stop = True
            return
        try:
            self.bar.update_absolute(self.done, max(self.total, 1), frame)
        except mm.InterruptProcessingException:
            self.stop = True

    def should_stop(self) -> bool:
        import comfy.model_management as mm

        if mm.processing_interrupted():
            self.stop = True
        return self.stop


def _options(stage: str, iterations: int, batch_size: int, learning_rate: float, weights: dict, augment: bool,
             preview_every: int, notes: list[str]) -> dict:
    opts: dict = {}
    if iterations > 0:
        opts["iters"] = int(iterations)
    if batch_size > 0:
        opts["batch"] = int(batch_size)
    if learning_rate > 0:
        if stage == "refine-exstyle":
            opts["lr_color"], opts["lr_structure"] = float(learning_rate), float(learning_rate) / 2
        elif stage == "sampler":
            notes.append("learning_rate is not used by the sampler stage (official schedule)")
        else:
            opts["lr"] = float(learning_rate)
    if stage == "finetune":
        opts.update({k: float(v) for k, v in weights.items()})
    if stage in GAN_STAGES:
        opts["augment"] = bool(augment)
        opts["sample_every"] = int(preview_every) if preview_every > 0 else NO_PREVIEW
    elif augment:
        notes.append(f"augment only applies to the GAN stages ({', '.join(GAN_STAGES)})")
    return opts


def _preview_image(reporter: _Reporter, out: Path, stage: str):
    """IMAGE for the preview output: the stage's last g_ema samples, destylize's visualisations,
    else a small black image."""
    import torch

    from .common import model_output_to_image, uint8_to_image

    if reporter.preview is not None:
        return model_output_to_image(reporter.preview)
    if stage == "destylize":
        from pastiche_core.faces.io import load_image

        files = sorted((out / "destylization").glob("*.png"))[:4] if (out / "destylization").is_dir() else []
        # Through the one image reader, so its format list and pixel limit hold here too.
        arrays = [load_image(p, min_side=1)[0] for p in files]
        if arrays and len({a.shape for a in arrays}) == 1:
            return uint8_to_image(arrays)
    return torch.zeros(1, 64, 64, 3)


def _summary(label: str, out: Path, result, elapsed: float, notes: list[str], model_note: str,
             first: int | None) -> str:
    loss = f"{result.losses[-1]:.6g}" if result.losses else "n/a"
    resumed = f" (resumed after step {first - 1})" if first is not None and first > 1 else ""
    lines = [f"stage: {label}",
             f"folder: {out}",
             f"steps: {result.steps_done}/{result.total_steps} in {elapsed:.1f} s{resumed}",
             f"final loss: {loss}",
             "outputs: " + (", ".join(p.name for p in result.outputs) or "none"),
             f"model: {model_note}"]
    lines += [f"note: {n}" for n in [*result.notes, *notes]]
    return "\n".join(lines)


class FineTuneStage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheFineTuneStage", display_name="Fine-Tune Stage", category=f"{CATEGORY}/training",
            description=("Runs one stage of DualStyleGAN's official training pipeline; chain six in order for a new "
                         "style: 1 finetune-stylegan, 2 destylize, 3 pretrain, 4 finetune, 5 refine-exstyle, "
                         "6 sampler, all with the same save_name. Writes into models/dualstylegan/<save_name>/ "
                         "(inputs such as stylegan2-ffhq-config-f.pt, encoder.pt, vgg19-dcbb9e9d.pth, "
                         "vgg16-397923af.pth and model_ir_se50.pth are found there, in the input model's style "
                         "folder or in models/dualstylegan/). Shows progress with previews; Stop saves the state, rerun with "
                         "resume on to continue. Outputs the trained style as a model once it has a generator."),
            inputs=[
                DualStyleGANModel.Input("model", tooltip="From Load DualStyleGAN or a previous Fine-Tune Stage: gives "
                                                         "the models folder and the style whose files are used as "
                                                         "inputs when the save_name folder lacks them."),
                io.Combo.Input("stage", options=STAGES, default=DEFAULT_STAGE,
                               tooltip="Which stage to run (numbered in pipeline order). pretrain trains on real face "
                                       "photos, the sampler on the style codes only; the others on the exemplars."),
                io.Image.Input("images", optional=True,
                               tooltip="Training images as an IMAGE batch: aligned exemplars of the style (real face "
                                       "photos for pretrain). Written as PNGs into <save_name>/train_images/ "
                                       "(face_images/ for pretrain). Not needed by the sampler stage."),
                io.Int.Input("iterations", default=0, min=0, max=10_000_000, tooltip=ITERATIONS_TIP),
                io.Int.Input("batch_size", default=0, min=0, max=4096, tooltip=BATCH_TIP),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=10.0, step=0.0001, round=0.00001,
                               tooltip=LR_TIP),
                *_weight_inputs(),
                io.Boolean.Input("augment", default=False,
                                 tooltip="GAN stages only: adaptive discriminator augmentation (official --augment; "
                                         "the official README uses it for finetune-stylegan on small style sets)."),
                # Declared off: the frontend gives every INT named seed a randomising control unless told
                # otherwise, which would add a widget value (shifting the stored ones) and change the
                # seed after each run, so resume would never find a matching run.
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Random seed of the run (codes, noise, data order). Keep it fixed to resume."),
                io.String.Input("save_name", default="my_style",
                                tooltip="Style folder to write: models/dualstylegan/<save_name>/. Use the same name "
                                        "for every stage of one style. A plain name, no '/' or '..'."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue a stopped run of this stage from <save_name>/train_state/ (same "
                                         "settings and images). Off: start the stage afresh."),
                io.Int.Input("preview_every", default=0, min=0, max=1_000_000,
                             tooltip="GAN stages: show g_ema samples in the progress preview every N steps; 0 = only "
                                     "at the end (for the preview output)."),
                io.String.Input("data_folder", default="", optional=True,
                                tooltip="Instead of images: a folder of training images inside ComfyUI's input "
                                        "folder, as a path relative to it (e.g. my_style/train); paths outside "
                                        "it (absolute, '..', '~') are refused. For finetune-stylegan and pretrain "
                                        "it may also be an lmdb folder made by the official prepare_data.py."),
                # last, so that widget values stored in older workflows keep their places
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Start this stage afresh even though <save_name> already has its training "
                                         "state (a stopped or finished run): the state and the stage's outputs are "
                                         "replaced. Off (and resume off): such a run is refused, nothing is lost."),
                io.Combo.Input("loss", options=list(LOSS_CHOICES), default=LOSS_CHOICES[0], optional=True,
                               tooltip="destylize / refine-exstyle only: the image loss. default = lpips for a new "
                                       "run (the official LPIPS; needs vgg16-397923af.pth in models/dualstylegan/), "
                                       "and on resume the loss the run was started with. vgg = a VGG19 distance "
                                       "without LPIPS's learned heads; pixel = L1, no network file."),
            ],
            outputs=[
                DualStyleGANModel.Output(display_name="model",
                                         tooltip="The style in <save_name> once it has a generator (after finetune), "
                                                 "freshly loaded; before that, the input model unchanged."),
                io.Image.Output(display_name="preview",
                                tooltip="Samples of the trained generator (GAN stages), destylize's visualisations, or "
                                        "a small black image."),
                io.String.Output(display_name="info", tooltip="Summary: stage, steps, final loss, files written."),
            ],
            not_idempotent=True,
            # a sink: its work is the files it writes, so ComfyUI runs it even with no output connected
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, save_name: str | None = None, data_folder: str | None = None) -> bool | str:
        """Queue-time checks of the two text inputs (a linked value arrives as None: checked when the
        node runs). Only these are named: inputs named here skip ComfyUI's own min/max/option checks."""
        try:
            if save_name is not None:
                check_save_name(save_name)
            if data_folder is not None and data_folder.strip() and not input_subfolder(data_folder).is_dir():
                return f"data_folder '{data_folder}' is not a folder ({input_subfolder(data_folder)})"
        except PasticheNodeError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, save_name: str = "my_style", data_folder: str = "", **_):
        """What ComfyUI's cache cannot see in the inputs: the files of data_folder and the
        training inputs in models/dualstylegan/ (every file a stage reads, from the stages'
        ``inputs()``; name, size, mtime). Never anything under the save_name folder, which this
        node (and the stages chained with it) write: a stage must not run again on the next
        queue because its own outputs changed."""
        from pastiche_core.training.stages import TRAINING_STAGES

        name = str(save_name or "").strip()
        outs = [Path(r) / name for r in model_roots()] if name else []
        shared = dict.fromkeys(n for s in TRAINING_STAGES.values() for inp in s.inputs() for n in inp.names())
        files = [Path(r) / f for r in model_roots() for f in shared]
        folder = (data_folder or "").strip()
        if folder:
            try:
                path = input_subfolder(folder)
            except PasticheNodeError:  # refused when the node runs; nothing to fingerprint
                path = None
            if path is not None and path.is_dir():
                # an official lmdb dataset (prepare_data.py) is its data.mdb
                files += sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES or p.name == "data.mdb")
        stamp = []
        for p in files:
            if any(o == p or o in p.parents for o in outs):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            stamp.append((str(p), st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    @classmethod
    @node_errors("Fine-Tune Stage (training)")
    def execute(cls, model, stage: str = DEFAULT_STAGE, images=None, iterations: int = 0, batch_size: int = 0,
                learning_rate: float = 0.0, augment: bool = False, seed: int = 0, save_name: str = "my_style",
                resume: bool = False, preview_every: int = 0, data_folder: str = "", overwrite: bool = False,
                loss: str = "default", **weights) -> io.NodeOutput:
        import comfy.model_management as mm
        import torch
        from pastiche_core.errors import PasticheError

        model = _check_model(model)
        if stage not in STAGE_LABELS:
            raise PasticheNodeError(f"unknown stage {stage!r}; choose one of: {'; '.join(STAGES)}")
        key = STAGE_LABELS[stage]
        if loss not in LOSS_CHOICES:
            raise PasticheNodeError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSS_CHOICES)}")
        name = check_save_name(save_name)
        mm.throw_exception_if_processing_interrupted()  # Stop pressed before this node started
        root = model.root
        if root is None:  # the demo model: write into the first models/dualstylegan folder
            roots = model_roots()
            if not roots:
                raise PasticheNodeError("no models/dualstylegan folder is registered to write the training into")
            root = Path(roots[0])
        out = Path(root) / name
        if out.is_dir() and not (out / "train_state").is_dir() and any(
                (out / f).is_file() for f in ("generator.pt", "generator.safetensors")):
            raise PasticheNodeError(f"save_name '{name}' is an existing style folder ({out}) that was not made by "
                                    f"training: pick a new save_name so its files are not overwritten")
        from pastiche_core.training.checkpointing import state_path

        state = state_path(out, key)
        if state.is_file() and not resume and not overwrite:  # before any work, images included
            raise PasticheNodeError(f"Fine-Tune Stage ({key}): '{name}' already has a training state of this stage "
                                    f"({state}). Turn resume on to continue it, or overwrite on to start afresh and "
                                    f"replace it and the stage's outputs (or pick a new save_name)")
        notes: list[str] = []

        # training data: an IMAGE batch written as PNGs, or a folder
        data = None
        folder_text = (data_folder or "").strip()
        if images is not None and folder_text:
            raise PasticheNodeError("connect images or set data_folder, not both")
        if key == "sampler":
            if images is not None or folder_text:
                notes.append("the sampler stage learns from the style codes; images/data_folder are not used")
        elif images is not None:
            sub = FACE_IMAGES if key == "pretrain" else TRAIN_IMAGES
            written = write_images(images, out / sub)
            data = out / sub
            notes.append(f"{len(written)} training images written to {data}")
        elif folder_text:
            path = input_subfolder(folder_text)
            if not path.is_dir():
                raise PasticheNodeError(f"data_folder '{folder_text}' is not a folder ({path})")
            data = path
        else:
            what = "real face photos (the official FFHQ training set)" if key == "pretrain" else \
                "the style's exemplar images"
            raise PasticheNodeError(f"stage '{key}' needs training images: connect images ({what}) or set "
                                    f"data_folder")

        names = loss_weights()
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise PasticheNodeError(f"unknown input(s) {', '.join(unknown)}; loss weights: {', '.join(names)}")
        weights = {names[k]: v for k, v in weights.items()}  # unset ones: the Config's defaults
        options = _options(key, int(iterations), int(batch_size), float(learning_rate), weights, bool(augment),
                           int(preview_every), notes)
        if key in ("destylize", "refine-exstyle") and loss != "default":
            options["loss"] = loss
        device = mm.get_torch_device()
        if getattr(device, "type", "cpu") != "cpu" and hasattr(mm, "unload_all_models"):
            mm.unload_all_models()  # training needs the accelerator's memory for itself
        reporter = _Reporter()
        from pastiche_core.training.runner import run_stage

        log.info("Pastiche: training %s into %s on %s%s", key, out, device, " (resume)" if resume else "")
        t0 = time.perf_counter()
        try:
            # ComfyUI runs nodes under torch.inference_mode(): training needs autograd back
            with torch.inference_mode(False), torch.enable_grad():
                result = run_stage(key, checkpoints=root, out=out, data=data,
                                   style=None if model.demo else model.style, options=options,
                                   seed=int(seed) % (2 ** 63), resume=bool(resume), device=str(device),
                                   progress=reporter.progress, should_stop=reporter.should_stop,
                                   overwrite=bool(overwrite))
        except PasticheError as exc:
            raise _wrap(exc, key) from None
        finally:
            if hasattr(mm, "soft_empty_cache"):
                mm.soft_empty_cache()
        elapsed = time.perf_counter() - t0
        if result.stopped:
            log.info("Pastiche: %s stopped at step %d/%d; rerun with resume on to continue", key,
                     result.steps_done, result.total_steps)
            mm.throw_exception_if_processing_interrupted()
            raise mm.InterruptProcessingException()

        # the model output: the trained style once its folder has a generator
        out_model, model_note = model, f"unchanged (input model '{model.style}')"
        if any((out / f).is_file() for f in ("generator.pt", "generator.safetensors")):
            from .models import load_bundle, precision_of

            try:
                out_model = load_bundle(name, precision_of(model.dtype), root=Path(root), reload=True)
                model_note = f"'{name}' loaded from {out}"
            except PasticheNodeError as exc:
                model_note = f"unchanged (input model '{model.style}'): the trained style cannot be loaded yet: {exc}"
                log.warning("Pastiche: %s", model_note)
        info = _summary(stage, out, result, elapsed, notes, model_note, reporter.first)
        log.info("Pastiche training:\n%s", info)
        return io.NodeOutput(out_model, _preview_image(reporter, out, key), info)
