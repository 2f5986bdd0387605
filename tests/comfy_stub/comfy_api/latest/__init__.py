"""Stand-in for ``comfy_api.latest``: ``io`` (V3 schema API subset) and ``ComfyExtension``."""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import io  # noqa: F401


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        ...
