"""The pack inside a real, headless, CPU-only ComfyUI (skipped unless COMFYUI_DIR is set).

    COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] \
    [PASTICHE_TEST_MODELS=/path/to/models/dualstylegan] python -m pytest -q tests/test_comfy_real.py

COMFYUI_PYTHON: the Python that has ComfyUI's requirements and this pack's requirements.txt
(default: this one). PASTICHE_TEST_MODELS: an official-layout folder to use; by default one is
written from the demo weights (tests/comfy_stub/make_model_folder.py, ~1.2 GB in a temp dir).
The test starts ComfyUI on 127.0.0.1 with its own --base-directory, checks /object_info and the
log, converts every bundled workflow to the API format, runs it and checks the saved images;
the training workflow must fail with the "training is not available" message.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI source tree to run")
PACK_NODES = {"LoadDualStyleGAN", "AlignFace", "EncodeExemplarStyle", "MixStyleLayers", "DualStyleGANGenerate",
              "FineTuneStage", "PasteFaceBack", "SampleRandomStyle",
              "PasticheInterpolateStyles", "PasticheStyleWeightGrid", "PasticheImageGrid"}


def _helper(name):
    spec = importlib.util.spec_from_file_location(f"pastiche_{name}", STUB / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _http(url, data=None, timeout=30):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_real")
    for d in ("custom_nodes", "input", "output", "temp", "user", "models", "frontend"):
        (base / d).mkdir()
    (base / "frontend" / "index.html").write_text("<!doctype html><title>headless</title>")
    os.symlink(ROOT, base / "custom_nodes" / "comfyui-pastiche")
    for f in (ROOT / "workflows" / "inputs").glob("*.jpg"):
        shutil.copy(f, base / "input")
    models = os.environ.get("PASTICHE_TEST_MODELS")
    if models:
        os.symlink(Path(models).resolve(), base / "models" / "dualstylegan")
    else:
        _helper("make_model_folder").write_folder(base / "models" / "dualstylegan", "cartoon")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    py = os.environ.get("COMFYUI_PYTHON", sys.executable)
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([py, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--front-end-root", str(base / "frontend"),
                             "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
                             "--disable-api-nodes", "--log-stdout"],
                            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail("ComfyUI exited during startup:\n" + (base / "server.log").read_text()[-3000:])
            try:
                _http(url + "/system_stats", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("ComfyUI did not start in 300 s")
        yield {"url": url, "base": base, "log": base / "server.log", "object_info": _http(url + "/object_info", timeout=60)}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_object_info_lists_every_node(server):
    info = server["object_info"]
    assert PACK_NODES <= set(info)
    assert {info[n]["python_module"] for n in PACK_NODES} == {"custom_nodes.comfyui-pastiche"}
    log = server["log"].read_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if "pastiche" in line)
    assert "cartoon" in info["LoadDualStyleGAN"]["input"]["required"]["style"][1]["options"]


def _run(server, path, timeout=1800):
    check = _helper("workflow_check")
    wf = json.loads(Path(path).read_text())
    assert check.check_workflow(wf, server["object_info"]) == []
    prompt = check.ui_to_api(wf, server["object_info"])
    pid = _http(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = _http(f"{server['url']}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            if hist[pid]["status"].get("status_str") in ("success", "error"):
                return hist[pid]
        time.sleep(1)
    pytest.fail(f"{path} did not finish in {timeout} s")


def _images(server, entry):
    from PIL import Image

    out = []
    for node_out in entry["outputs"].values():
        for im in node_out.get("images", []):
            if im.get("type") == "output":
                p = server["base"] / "output" / im.get("subfolder", "") / im["filename"]
                out.append(Image.open(p).size)
    return sorted(out)


EXPECTED = {  # saved image sizes (W, H) with the 256 px demo-weight models
    "1_portrait_bank_style": [(384, 256)],
    "2_style_from_exemplar": [(384, 256)],
    "3_weight_grid": [(3 * 256 + 2 * 4, 3 * 256 + 2 * 4)],
    "4_random_styles": [(4 * 256 + 3 * 4, 256)] * 2,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workflow_runs(server, name):
    entry = _run(server, ROOT / "workflows" / f"{name}.json")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    assert _images(server, entry) == EXPECTED[name]


def test_training_workflow_fails_clearly(server):
    entry = _run(server, ROOT / "workflows" / "5_training_finetune.json")
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "FineTuneStage"
    assert "Training is not available in this version" in errors[0]["exception_message"]
