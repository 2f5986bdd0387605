"""Host glue shared by the nodes: the model folder, IMAGE <-> array conversion, progress and
interruption, and error wording. Nothing here imports torch at module level."""
from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

MODEL_FOLDER = "dualstylegan"
CATEGORY = "Pastiche"


class PasticheNodeError(ValueError):
    """A user-facing node error: ComfyUI shows its message as the node's error."""

    __module__ = "pastiche"  # shown by ComfyUI as the exception type: "pastiche.PasticheNodeError"


def register_model_folder() -> None:
    """``models/dualstylegan`` (plus any ``dualstylegan:`` entry of extra_model_paths.yaml, which
    ComfyUI registers under the same name)."""
    import folder_paths

    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_roots() -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(MODEL_FOLDER)
    except KeyError:
        return []


# --------------------------------------------------------------------------------------------
# IMAGE tensors
# --------------------------------------------------------------------------------------------
def check_image(image, what: str = "image"):
    """An IMAGE socket value -> float tensor [B, H, W, 3] on CPU (RGBA drops alpha, grey repeats)."""
    import torch

    if not isinstance(image, torch.Tensor):
        raise PasticheNodeError(f"{what} must be an IMAGE (a [B, H, W, C] tensor), got {type(image).__name__}")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        hint = " (that looks like a MASK: convert it with a 'Convert Mask to Image' node)" if image.ndim in (2, 3) else ""
        raise PasticheNodeError(f"{what} must be an IMAGE batch [B, H, W, 3], got shape {list(image.shape)}{hint}")
    if image.shape[0] == 0 or image.shape[1] < 1 or image.shape[2] < 1:
        raise PasticheNodeError(f"{what} is empty: shape {list(image.shape)}")
    if not image.is_floating_point():
        image = image.float() / 255.0
    if image.shape[-1] == 4:
        image = image[..., :3]
    elif image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return image.detach().float().cpu()


def image_to_uint8(image) -> list["np.ndarray"]:
    """IMAGE [B, H, W, 3] float 0..1 -> list of HxWx3 uint8 arrays (LoadImage's inverse)."""
    import numpy as np

    arr = (image.clamp(0, 1) * 255.0).round().to(dtype=__import__("torch").uint8).numpy()
    return [np.ascontiguousarray(a) for a in arr]


def uint8_to_image(arrays) -> "torch.Tensor":
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([np.asarray(a)[..., :3] for a in arrays]).astype(np.float32) / 255.0)


def model_output_to_image(x: "torch.Tensor") -> "torch.Tensor":
    """Generator output [B, 3, S, S] in [-1, 1] -> IMAGE [B, S, S, 3] in [0, 1] on the intermediate device."""
    import comfy.model_management as mm

    return ((x.float().clamp(-1, 1) + 1.0) * 0.5).movedim(1, -1).contiguous().to(mm.intermediate_device())


def image_to_model_input(image: "torch.Tensor") -> "torch.Tensor":
    """IMAGE [B, H, W, 3] 0..1 -> [B, 3, H, W] in [-1, 1] (the official Normalize(0.5, 0.5))."""
    return (image.movedim(-1, 1) - 0.5) / 0.5


# --------------------------------------------------------------------------------------------
# Progress and interruption
# --------------------------------------------------------------------------------------------
class Progress:
    """ComfyUI ProgressBar + interrupt check in one object; ``step()`` after each unit of work."""

    def __init__(self, total: int):
        import comfy.utils

        self.total = max(int(total), 1)
        self.bar = comfy.utils.ProgressBar(self.total)
        self.check()  # a Stop pressed before this node started

    def check(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()

    def step(self, n: int = 1) -> None:
        self.bar.update(n)
        self.check()

    def callback(self, stage: str, fraction: float) -> None:
        """A pastiche_core-style ``progress(stage, fraction)`` callback."""
        self.bar.update_absolute(int(round(fraction * self.total)), self.total)
        self.check()


# --------------------------------------------------------------------------------------------
# Errors: the one place where an exception becomes what the user sees
# --------------------------------------------------------------------------------------------
def _host_exceptions() -> tuple[type, ...]:
    """ComfyUI's Stop and out-of-memory exceptions: the executor handles those itself (it
    cancels the queue, or frees models and reports OOM), so they must reach it unchanged."""
    kinds: list = []
    try:
        import comfy.model_management as mm

        kinds.append(getattr(mm, "InterruptProcessingException", None))
        kinds.append(getattr(mm, "OOM_EXCEPTION", None))
    except Exception:  # outside ComfyUI (library use, tests)
        pass
    torch = sys.modules.get("torch")
    kinds.append(getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
    # ComfyUI falls back to OOM_EXCEPTION = Exception on old torch: that would let everything through.
    return tuple(k for k in kinds if isinstance(k, type) and k not in (Exception, BaseException))


def user_error(exc: BaseException, context: str) -> BaseException:
    """What a node raises for ``exc``: a :class:`PasticheNodeError` of one short line that
    starts with ``context`` (a library error keeps its wording), or ``exc`` itself for what
    must pass through: ComfyUI's interruption and out-of-memory exceptions, KeyboardInterrupt
    and friends, and, when ``PASTICHE_DEBUG=1``, anything that is not a Pastiche error (a bug:
    ComfyUI then shows its traceback)."""
    from pastiche_core.errors import MAX_OWN_MESSAGE, PasticheError, debug_enabled, describe_exception, one_line

    if not isinstance(exc, Exception) or isinstance(exc, _host_exceptions()):
        return exc
    if isinstance(exc, PasticheNodeError):
        text = str(exc)
        return exc if len(text) <= MAX_OWN_MESSAGE and "\n" not in text else PasticheNodeError(one_line(text, MAX_OWN_MESSAGE))
    if debug_enabled() and not isinstance(exc, PasticheError):
        return exc
    return PasticheNodeError(one_line(f"{context}: {describe_exception(exc)}", MAX_OWN_MESSAGE))


_F = TypeVar("_F", bound=Callable)


def node_errors(context: str) -> Callable[[_F], _F]:
    """Decorator for a node's ``execute`` (under ``@classmethod``): any exception that escapes
    becomes :func:`user_error`'s, so the node shows one line, never a traceback."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def execute(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                mapped = user_error(exc, context)
                if mapped is exc:
                    raise
                raise mapped from None

        return execute  # type: ignore[return-value]

    return decorate
