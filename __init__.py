"""Pastiche — DualStyleGAN portrait style transfer for ComfyUI (custom-node pack entry).

ComfyUI imports this file; it only registers the ``models/dualstylegan`` folder and exposes
``comfy_entrypoint`` (V3 node API). Models load when a graph runs, never at import.
"""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _ensure_core() -> None:
    """Make the bundled ``pastiche_core`` importable by its own name without putting this folder
    on ``sys.path`` (its ``nodes/`` would shadow ComfyUI's ``nodes`` module)."""
    if "pastiche_core" in sys.modules:
        return
    pkg = os.path.join(_HERE, "pastiche_core")
    spec = importlib.util.spec_from_file_location("pastiche_core", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pastiche_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("pastiche_core", None)
        raise


def _inside_comfyui() -> bool:
    """True when ComfyUI's modules are importable (ComfyUI itself, or the test host stand-in).
    Elsewhere (pytest collecting this folder as a package, a plain ``import``) nothing is registered."""
    return importlib.util.find_spec("folder_paths") is not None


if _inside_comfyui():
    if importlib.util.find_spec("comfy_api") is None or importlib.util.find_spec("comfy_api.latest") is None:
        raise ImportError("Pastiche needs a ComfyUI with the V3 node API (comfy_api.latest, ComfyUI 0.3.48 or "
                          "newer): update ComfyUI")
    _ensure_core()
    from .nodes import NODES, comfy_entrypoint, register_model_folder  # noqa: E402

    register_model_folder()
    __all__ = ["NODES", "comfy_entrypoint"]
else:
    NODES = []
    __all__ = []
