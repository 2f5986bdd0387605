"""Stand-in for ``comfy.model_patcher.ModelPatcher`` (constructor signature and the attributes
the pack reads)."""
from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
