"""The loader's dtype rule and whole-model patcher against the host stand-in (tests/comfy_stub), so
CI covers them without ComfyUI (tests/test_comfy_memory.py runs the same against the real one).

A launch flag is played by setting it on the stub's ``comfy.cli_args.args``; a GPU by a
``cuda`` device object (never touched) and the stub's should_use_fp16/bf16 answering for it.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
STUB_MODULES = ("folder_paths", "comfy", "comfy_api")
NAME = "pastiche_pack_dtype_test"
ALLOWED = {torch.float32, torch.float16, torch.bfloat16}
FLAGS = ("fp32_unet", "fp64_unet", "force_fp32", "bf16_unet", "fp16_unet", "force_fp16",
         "fp8_e4m3fn_unet", "fp8_e5m2_unet", "fp8_e8m0fnu_unet")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    sys.path.insert(0, str(STUB))
    try:
        import folder_paths

        folder_paths.set_base(str(tmp_path_factory.mktemp("comfy_base")))
        spec = importlib.util.spec_from_file_location(NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
        import comfy.cli_args
        import comfy.model_management

        yield importlib.import_module(f"{NAME}.nodes.models"), comfy.cli_args.args, comfy.model_management
    finally:
        sys.path.remove(str(STUB))
        for k in list(sys.modules):
            if k.split(".")[0] in STUB_MODULES or k.startswith(NAME):
                del sys.modules[k]


# What a GPU can compute in, as ComfyUI's should_use_* report it: (fp16 fast, bf16 fast, fp16 ok, bf16 ok)
GPUS = {"ampere": (True, True, True, True), "turing": (True, False, True, False),
        "pascal": (False, False, True, False), "old": (False, False, False, False)}


def _play(monkeypatch, host, gpu, flags):
    models, args, mm = host
    for f in FLAGS:
        monkeypatch.setattr(args, f, f in flags)
    fast16, fastbf, ok16, okbf = GPUS[gpu]

    def answer(half, fast, ok):
        def should_use(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
            if device is not None and device.type == "cpu":
                return False
            if half == "fp16" and args.force_fp16:  # as ComfyUI: fp16 usable on anything but the CPU
                return True
            return ok if (manual_cast and not prioritize_performance) else fast
        return should_use

    monkeypatch.setattr(mm, "should_use_fp16", answer("fp16", fast16, ok16))
    monkeypatch.setattr(mm, "should_use_bf16", answer("bf16", fastbf, okbf))
    return models


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("flags", [(), ("fp8_e4m3fn_unet",), ("fp8_e5m2_unet",), ("bf16_unet",), ("fp16_unet",),
                                   ("force_fp16", "fp16_unet"), ("fp32_unet",), ("force_fp32",)])
def test_auto_dtype_is_a_gan_dtype(host, monkeypatch, gpu, flags):
    models = _play(monkeypatch, host, gpu, flags)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.auto_dtype(cpu, 300_000_000) == torch.float32
    assert models._pick_dtype("auto", cpu, 300_000_000) == torch.float32
    got = models.auto_dtype(cuda, 300_000_000)
    assert got in ALLOWED
    fast16, fastbf, ok16, okbf = GPUS[gpu]
    if "fp32_unet" in flags or "force_fp32" in flags:
        assert got == torch.float32
    elif "bf16_unet" in flags:
        assert got == (torch.bfloat16 if okbf else torch.float16 if ok16 else torch.float32)
    elif "fp16_unet" in flags:
        assert got == (torch.float16 if ok16 or "force_fp16" in flags else torch.bfloat16 if okbf else torch.float32)
    else:  # default and the fp8 flags: the half type this device runs fast, else float32
        assert got == (torch.float16 if fast16 else torch.bfloat16 if fastbf else torch.float32)


def test_explicit_precision_is_kept(host, monkeypatch):
    models = _play(monkeypatch, host, "old", ("fp8_e4m3fn_unet",))
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        assert models._pick_dtype(name, torch.device("cuda"), 1) == dtype
        assert models.precision_of(dtype) == name


def test_whole_model_patcher_forces_full_loads(host):
    """The rule the real ModelPatcher is held to in tests/test_comfy_memory.py, on a recording base."""
    models, _, _ = host
    import comfy.model_patcher

    calls = []

    class Recording(comfy.model_patcher.ModelPatcher):
        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            calls.append((lowvram_model_memory, full_load))

    real = comfy.model_patcher.ModelPatcher
    comfy.model_patcher.ModelPatcher = Recording
    try:
        cls = models.whole_model_patcher_class()
        p = cls(torch.nn.Linear(2, 2), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
        p.load(torch.device("cpu"), lowvram_model_memory=1)
        assert calls == [(1, True)]
        assert p.partially_unload(torch.device("cpu"), memory_to_free=10) == 0
        assert isinstance(p, Recording) and models.whole_model_patcher_class() is cls
    finally:
        comfy.model_patcher.ModelPatcher = real
