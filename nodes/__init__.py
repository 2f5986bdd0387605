"""Pastiche ComfyUI nodes: thin adapters from ComfyUI types to :mod:`pastiche_core` calls.

Importing this package is cheap (no torch, no models); everything heavy is imported inside
``execute``. ``comfy_entrypoint`` is the V3 extension entry ComfyUI looks for.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .common import MODEL_FOLDER, register_model_folder
from .faces import AlignFace, PasteFaceBack
from .generate import DualStyleGANGenerate, ImageGrid
from .models import LoadDualStyleGAN
from .styles import (EncodeExemplarStyle, InterpolateStyles, MixStyleLayers, SampleRandomStyle, StylePreviewGrid,
                     StyleWeightGrid)
from .training import FineTuneStage

NODES: list[type[io.ComfyNode]] = [
    LoadDualStyleGAN, AlignFace, EncodeExemplarStyle, MixStyleLayers, DualStyleGANGenerate, FineTuneStage,
    PasteFaceBack, SampleRandomStyle, InterpolateStyles, StyleWeightGrid, ImageGrid, StylePreviewGrid,
]


class PasticheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PasticheExtension:
    return PasticheExtension()


__all__ = ["MODEL_FOLDER", "NODES", "PasticheExtension", "comfy_entrypoint", "register_model_folder"]
