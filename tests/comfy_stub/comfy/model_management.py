"""Stand-in for ``comfy.model_management``: CPU only, records what the pack asks of it.

torch is imported lazily so that importing the pack against the stub shows whether the pack
itself pulls torch in at import time.
"""
from __future__ import annotations

from comfy.cli_args import args  # noqa: F401  (the real module exposes it too)


class InterruptProcessingException(Exception):
    pass


interrupt_processing = False
loaded_models: list = []     # every patcher passed to load_models_gpu, in order (test hook)
load_calls = 0


def get_torch_device():
    import torch
    return torch.device("cpu")


def unet_offload_device():
    import torch
    return torch.device("cpu")


def intermediate_device():
    import torch
    return torch.device("cpu")


def cpu_mode() -> bool:
    return True


def unet_dtype(device=None, model_params=0, supported_dtypes=None, weight_dtype=None):
    import torch
    return torch.float32


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    global load_calls
    load_calls += 1
    for m in models:
        m.model.to(m.load_device)
        if m not in loaded_models:
            loaded_models.append(m)


def load_model_gpu(model):
    return load_models_gpu([model])


def soft_empty_cache(force=False):
    pass


def processing_interrupted() -> bool:
    return interrupt_processing


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


def __getattr__(name):
    # ComfyUI: OOM_EXCEPTION = torch.cuda.OutOfMemoryError. Resolved on first use so that
    # importing the stub (and the pack) still does not import torch.
    if name == "OOM_EXCEPTION":
        import torch
        return torch.cuda.OutOfMemoryError
    raise AttributeError(name)
