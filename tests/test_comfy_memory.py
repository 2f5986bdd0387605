"""Our models under ComfyUI's REAL memory manager and launch flags (opt-in: needs COMFYUI_DIR).

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python python -m pytest -q tests/test_comfy_memory.py

test_partial_load_and_dtype_under_flag: tests/real_patcher_probe.py imports ComfyUI with each
launch flag and drives the real ModelPatcher's partial paths (load with a small
lowvram_model_memory, partially_load, partially_unload, load_models_gpu under LOW_VRAM/NO_VRAM,
free_memory) on a small DualStyleGAN; every parameter and buffer must end on one device, and the
auto dtype must be float32, float16 or bfloat16 (float32 on the CPU). ComfyUI's stock
ModelPatcher is run too, as the control that shows the probe sees a split.

test_workflow_1_under_launch_flag: workflow 1 in a real ComfyUI started with each flag, its image
compared with the default run's within the dtype's tolerance. Only a GPU makes the flags differ,
so it runs where CUDA is present; on a CPU-only machine PASTICHE_FLAG_MATRIX_CPU=1 runs the
matrix with --cpu added (it then shows each flag launches and gives the default image).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

import real_comfy

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI source tree to run")
PROBE = Path(__file__).resolve().parent / "real_patcher_probe.py"
ALLOWED = {"torch.float32", "torch.float16", "torch.bfloat16"}
# --lowvram/--novram are not here: they only set the VRAM state, which the probe sets itself around
# load_models_gpu in every run (ComfyUI refuses them with --cpu, and needs CUDA without it)
FLAGS = ["", "--fp8_e4m3fn-unet", "--bf16-unet", "--force-fp16", "--fp16-unet", "--fp32-unet"]


def _cuda() -> bool:
    code = "import torch; print(torch.cuda.is_available())"
    return subprocess.run([real_comfy.comfy_python(), "-c", code], capture_output=True, text=True).stdout.strip() == "True"


@pytest.fixture(scope="module")
def has_cuda():
    return _cuda()


@pytest.mark.parametrize("flag", FLAGS, ids=[f or "default" for f in FLAGS])
def test_partial_load_and_dtype_under_flag(flag, has_cuda):
    # without CUDA, ComfyUI can only be imported with --cpu; the probe's "GPU" is then the meta device
    flags = [f for f in (flag, "" if has_cuda else "--cpu") if f]
    r = subprocess.run([real_comfy.comfy_python(), str(PROBE), COMFYUI_DIR, *flags],
                       capture_output=True, text=True, timeout=600)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("PROBE_RESULT ")), None)
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(line.split(" ", 1)[1])

    assert set(out["dtype"].values()) <= ALLOWED, out["dtype"]
    assert out["dtype"]["cpu"] == out["dtype"]["cpu_loader"] == "torch.float32"
    if flag == "--fp8_e4m3fn-unet":
        # why we do not take unet_dtype: under this flag it answers float8, which conv layers cannot run
        assert out["comfy_unet_dtype"]["cuda"] == "torch.float8_e4m3fn"
    if flag == "--fp32-unet":
        assert out["dtype"]["cuda"] == "torch.float32"
    if flag == "--force-fp16":
        # --force-fp16 declares every non-CPU device fp16-capable, even under --cpu
        assert out["dtype"]["cuda"] == "torch.float16"

    stock, ours = out["partial"]["stock"], out["partial"]["pastiche"]
    # the control: ComfyUI's own ModelPatcher splits our model, and the probe sees it
    assert stock["load_lowvram"] == ["cpu", "meta"] and stock["load_lowvram_runs"] is not True
    assert stock["partially_unload"] == ["cpu", "meta"]
    for path in ("load_lowvram", "partially_load", "load_models_gpu_LOW_VRAM", "load_models_gpu_NO_VRAM"):
        assert ours[path] == ["meta"], (path, ours[path])  # loaded whole
    assert ours["load_lowvram_runs"] is True
    assert ours["partially_unload"] == ["cpu"] and ours["partially_unload_freed"] == 0  # kept whole ...
    assert ours["free_memory"] == ["meta"]  # ... and ComfyUI then offloads it whole


# ----------------------------------------------------------------------------------------------
# workflow 1 under each launch flag
# ----------------------------------------------------------------------------------------------
MATRIX = ["--novram", "--lowvram", "--fp8_e4m3fn-unet", "--bf16-unet", "--force-fp16"]
VRAM_FLAGS = ("--novram", "--lowvram")
MIN_PSNR = {"float32": 45.0, "float16": 35.0, "bfloat16": 28.0}  # 8-bit PNGs of a 256 px face


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, has_cuda):
    if not has_cuda and os.environ.get("PASTICHE_FLAG_MATRIX_CPU", "") in ("", "0"):
        pytest.skip("the launch-flag matrix needs a CUDA device (PASTICHE_FLAG_MATRIX_CPU=1 runs it with --cpu)")
    models = tmp_path_factory.mktemp("matrix_models") / "dualstylegan"
    real_comfy.helper("make_model_folder").write_folder(models, "cartoon")
    runs = {}

    def run(flag):
        if flag not in runs:
            base = real_comfy.make_base(tmp_path_factory.mktemp("matrix"), models_folder=models)
            args = [f for f in (flag, "" if has_cuda else "--cpu") if f]
            if not has_cuda and flag in VRAM_FLAGS:
                pytest.skip(f"ComfyUI refuses --cpu with {flag} and cannot start without CUDA; its partial "
                            "loading is covered by test_partial_load_and_dtype_under_flag")
            with real_comfy.server(base, COMFYUI_DIR, extra_args=args, fail=pytest.fail) as url:
                info = real_comfy.http(url + "/object_info", timeout=60)
                check = real_comfy.helper("workflow_check")
                wf = json.loads((real_comfy.ROOT / "workflows" / "1_portrait_bank_style.json").read_text())
                prompt = check.ui_to_api(wf, info)
                pid = real_comfy.http(url + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]
                entry = real_comfy.wait(url, pid, 900, pytest.fail)
            log = (base / "server.log").read_text()
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:] + log[-2000:]
            from PIL import Image

            images = real_comfy.output_images(base, entry)
            assert len(images) == 1
            dtypes = re.findall(r"Pastiche: style '\w+' runs on \S+ in (\w+)", log)
            runs[flag] = (np.asarray(Image.open(images[0]).convert("RGB"), dtype=np.float64), dtypes[-1], log)
        return runs[flag]

    return run


@pytest.mark.parametrize("flag", MATRIX)
def test_workflow_1_under_launch_flag(flag, matrix):
    ref, ref_dtype, _ = matrix("")
    img, dtype, log = matrix(flag)
    assert dtype in ("float32", "float16", "bfloat16")
    assert img.shape == ref.shape
    mse = ((img - ref) ** 2).mean()
    psnr = 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))
    bar = min(MIN_PSNR[dtype], MIN_PSNR[ref_dtype])
    print(f"\n{flag}: {dtype} (default run: {ref_dtype}), PSNR to the default run {psnr:.1f} dB (bar {bar})")
    assert psnr >= bar, (flag, dtype, psnr)
