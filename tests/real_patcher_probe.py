"""Run by tests/test_comfy_memory.py with ComfyUI's Python, one process per launch-flag set (ComfyUI
reads its flags once, at import):

    python tests/real_patcher_probe.py COMFYUI_DIR [COMFYUI FLAGS...]

Imports the REAL comfy.model_management / comfy.model_patcher from COMFYUI_DIR with those flags,
and this pack's nodes.models; prints one JSON object: the dtype our loader picks for a CPU and a
(simulated) CUDA device, and the devices of every parameter and buffer of a small DualStyleGAN
after each of ModelPatcher's partial-load and partial-unload paths, for ComfyUI's stock
ModelPatcher (the control: it must show the split, or the probe could not see one) and ours.

A CPU-only machine has one real device, so the "GPU" is torch's ``meta`` device: a module that
ModelPatcher moved is on meta, one it left behind is on the CPU, and a split model is plainly
visible (and its forward fails, as it would across cpu/cuda).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def main():
    comfy_dir, flags = sys.argv[1], sys.argv[2:]
    sys.argv = ["main.py", *flags]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher

    spec = importlib.util.spec_from_file_location("pastiche_pack", PACK / "__init__.py",
                                                  submodule_search_locations=[str(PACK)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["pastiche_pack"] = pack
    spec.loader.exec_module(pack)
    models = importlib.import_module("pastiche_pack.nodes.models")
    from pastiche_core.models import DualStyleGAN

    out = {"flags": flags, "dtype": {}, "comfy_unet_dtype": {}, "partial": {}}
    n_params = 300_000_000
    for dev in ("cpu", "cuda"):
        d = torch.device(dev)
        out["dtype"][dev] = str(models.auto_dtype(d, n_params))
        out["dtype"][f"{dev}_loader"] = str(models._pick_dtype("auto", d, n_params))
        out["comfy_unet_dtype"][dev] = str(mm.unet_dtype(device=d, model_params=n_params))

    meta, cpu = torch.device("meta"), torch.device("cpu")

    def devices(model):
        return sorted({str(t.device) for t in list(model.parameters()) + list(model.buffers())})

    def small():
        torch.manual_seed(0)
        return DualStyleGAN(32, style_dim=64, n_mlp=8, channel_multiplier=1).eval()

    def runs(model):
        # a forward on whatever device the first parameter is on: fails when the model is split
        dev = next(model.parameters()).device
        try:
            with torch.no_grad():
                model(torch.randn(1, 64, device=dev), torch.randn(1, 8, 64, device=dev), exstyle_space="z")
            return True
        except Exception as exc:  # noqa: BLE001  (any failure is the finding)
            return f"{type(exc).__name__}: {str(exc)[:160]}"

    classes = {"stock": comfy.model_patcher.ModelPatcher, "pastiche": models.whole_model_patcher_class()}
    for label, cls in classes.items():
        res = out["partial"][label] = {}
        model = small()
        p = cls(model, load_device=meta, offload_device=cpu)
        size = p.model_size()
        res["model_size"] = size
        p.load(meta, lowvram_model_memory=size // 3)
        res["load_lowvram"] = devices(model)
        res["load_lowvram_runs"] = runs(model)

        model = small()
        p = cls(model, load_device=meta, offload_device=cpu)
        p.patch_model(load_weights=False)
        p.partially_load(meta, extra_memory=size // 3)
        res["partially_load"] = devices(model)

        # unloading moves data back, which meta tensors have not: here the CPU is the "GPU" and
        # meta the offload device (a module offloaded is on meta, one kept is on the CPU)
        model = small()
        p = cls(model, load_device=cpu, offload_device=meta)
        p.load(cpu, full_load=True)
        res["full_load"] = devices(model)
        freed = p.partially_unload(meta, memory_to_free=size // 3)
        res["partially_unload"] = devices(model)
        res["partially_unload_freed"] = freed

        # the memory manager's own paths: load_models_gpu on a "GPU" with little free memory ...
        real_free, real_state = mm.get_free_memory, mm.vram_state
        free = {"bytes": 0}
        mm.get_free_memory = lambda dev=None, torch_free_too=False: (
            (free["bytes"], free["bytes"]) if torch_free_too else free["bytes"])
        try:
            for state in ("LOW_VRAM", "NO_VRAM"):
                model = small()
                p = cls(model, load_device=meta, offload_device=cpu)
                free["bytes"] = int(mm.minimum_inference_memory() + size // 3)
                mm.vram_state = getattr(mm.VRAMState, state)
                mm.lowvram_available = True
                mm.load_models_gpu([p])
                res[f"load_models_gpu_{state}"] = devices(model)
                mm.current_loaded_models.clear()
            # ... and free_memory asking a loaded model for part of its memory back
            model = small()
            p = cls(model, load_device=cpu, offload_device=meta)
            loaded = mm.LoadedModel(p)
            loaded.model_load(0)
            mm.current_loaded_models.insert(0, loaded)
            free["bytes"] = 0
            mm.free_memory(size // 3, cpu)
            res["free_memory"] = devices(model)
        finally:
            mm.get_free_memory, mm.vram_state = real_free, real_state
            mm.current_loaded_models.clear()
    print("PROBE_RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
