"""FineTuneStage: the DualStyleGAN progressive fine-tuning stages as a node.

The training backend (``pastiche_core.training``) is a separate issue. Until it exists this
node takes its inputs from the graph, validates them, and stops with a clear error; it never
pretends to train.
"""
from __future__ import annotations

from comfy_api.latest import io

from .common import CATEGORY, PasticheNodeError, Progress, check_image
from .styles import _check_model
from .types import DualStyleGANModel

STAGES = ["I: color transfer (pretrain)", "II: structure transfer (toonify)", "III: style transfer (exemplars)"]
NOT_AVAILABLE = ("Training is not available in this version of Pastiche: the fine-tuning backend "
                 "(pastiche_core.training) is not installed yet. Use the official released checkpoints with "
                 "Load DualStyleGAN, or train with the official DualStyleGAN scripts and drop the resulting "
                 "generator.pt into models/dualstylegan/<style>/.")


def training_backend():
    """The training entry point, or None when this version has none."""
    try:
        from pastiche_core import training  # noqa: PLC0415
    except ImportError:
        return None
    return getattr(training, "run_stage", None)


class FineTuneStage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FineTuneStage", display_name="Fine-Tune Stage (training)", category=f"{CATEGORY}/training",
            description=("One stage of DualStyleGAN's progressive fine-tuning (I colour, II structure, III style) on "
                         "a batch of exemplar images; chain three for the full schedule. Reports progress and can be "
                         "interrupted. NOTE: training is not available in this version; the node says so."),
            inputs=[
                DualStyleGANModel.Input("model", tooltip="The model to fine-tune (from Load DualStyleGAN or a "
                                                         "previous Fine-Tune Stage)."),
                io.Image.Input("exemplars", tooltip="Aligned artistic portraits of the target style (a batch)."),
                io.Combo.Input("stage", options=STAGES, default=STAGES[2], tooltip="Which fine-tuning stage to run."),
                io.Int.Input("iterations", default=1200, min=1, max=100000, tooltip="Training iterations."),
                io.Int.Input("batch_size", default=4, min=1, max=64, tooltip="Images per iteration."),
                io.Float.Input("learning_rate", default=0.002, min=0.00001, max=0.1, step=0.0001,
                               tooltip="Adam learning rate (official default 0.002)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Random seed for sampling and noise."),
                io.String.Input("save_name", default="my_style",
                                tooltip="Style folder name to write under models/dualstylegan/ when done."),
            ],
            outputs=[DualStyleGANModel.Output(display_name="model", tooltip="The fine-tuned model.")],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, exemplars, stage: str = STAGES[2], iterations: int = 1200, batch_size: int = 4,
                learning_rate: float = 0.002, seed: int = 0, save_name: str = "my_style") -> io.NodeOutput:
        model = _check_model(model)
        exemplars = check_image(exemplars, "exemplars")
        if stage not in STAGES:
            raise PasticheNodeError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        progress = Progress(int(iterations))
        backend = training_backend()
        if backend is None:
            raise PasticheNodeError(NOT_AVAILABLE)
        result = backend(model=model, exemplars=exemplars, stage=STAGES.index(stage) + 1,
                         iterations=int(iterations), batch_size=int(batch_size), learning_rate=float(learning_rate),
                         seed=int(seed), save_name=save_name, progress=progress.callback)
        return io.NodeOutput(result)
