"""The pack inside a real, headless, CPU-only ComfyUI (skipped unless COMFYUI_DIR is set).

    COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] \
    [PASTICHE_TEST_MODELS=/path/to/models/dualstylegan] python -m pytest -q tests/test_comfy_real.py

COMFYUI_PYTHON: the Python that has ComfyUI's requirements and this pack's requirements.txt
(default: this one). PASTICHE_TEST_MODELS: an official-layout folder to use (its entries are linked into the temp
models/dualstylegan/, so training writes only into the temp dir); by default one is written from
the demo weights (tests/comfy_stub/make_model_folder.py, ~1.2 GB in a temp dir). The training
inputs (stylegan2-ffhq-config-f.pt, vgg19-dcbb9e9d.pth, model_ir_se50.pth: test fixtures, not
real weights) are taken from that folder when it has them (make_model_folder.py --training or
--training-only), else written into the temp dir (~0.6 GB, ~20 s).
The test starts ComfyUI on 127.0.0.1 with its own --base-directory, checks /object_info and the
log, converts every bundled workflow to the API format, runs it and checks the saved images.
The training workflow runs all six stages with a few steps each (minutes on a CPU) and must write
every stage's files; a sampler run is stopped with /interrupt and resumed.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

import real_comfy

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI source tree to run")
PACK_NODES = {"PasticheLoadDualStyleGAN", "PasticheAlignFace", "PasticheEncodeExemplarStyle",
              "PasticheMixStyleLayers", "PasticheDualStyleGANGenerate", "PasticheFineTuneStage",
              "PastichePasteFaceBack", "PasticheSampleRandomStyle", "PasticheInterpolateStyles",
              "PasticheStyleWeightGrid", "PasticheImageGrid", "PasticheStylePreviewGrid"}


_helper = real_comfy.helper
_http = real_comfy.http


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One CPU ComfyUI for the module: the demo-weight model folder with the training inputs."""
    base = real_comfy.make_base(tmp_path_factory.mktemp("comfy_real"), training=True)
    with real_comfy.server(base, COMFYUI_DIR, extra_args=("--cpu",), fail=pytest.fail) as url:
        yield {"url": url, "base": base, "log": base / "server.log",
               "object_info": _http(url + "/object_info", timeout=60)}


def test_object_info_lists_every_node(server):
    info = server["object_info"]
    assert PACK_NODES <= set(info)
    assert {info[n]["python_module"] for n in PACK_NODES} == {"custom_nodes.comfyui-pastiche"}
    log = server["log"].read_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if "pastiche" in line)
    assert "cartoon" in info["PasticheLoadDualStyleGAN"]["input"]["required"]["style"][1]["options"]
    # the server serialises an explicit control_after_generate = False (the frontend's ?? keeps it)
    seeds = {n: info[n]["input"]["required"]["seed"][1].get("control_after_generate")
             for n in PACK_NODES if "seed" in info[n]["input"]["required"]}
    assert seeds == {"PasticheFineTuneStage": False, "PasticheDualStyleGANGenerate": False,
                     "PasticheSampleRandomStyle": True}
    assert info["PasticheFineTuneStage"]["output_node"] is True


def test_mistakes_fail_at_queue_time(server):
    """validate_inputs: a bad save_name is reported when the prompt is queued, and ComfyUI's own
    range checks still apply to the inputs it does not name."""
    check = _helper("workflow_check")
    wf = json.loads((ROOT / "workflows" / "5_training_finetune.json").read_text())
    prompt = check.ui_to_api(wf, server["object_info"])
    stage = next(k for k, n in prompt.items() if n["class_type"] == "PasticheFineTuneStage")
    prompt[stage]["inputs"].update(save_name="../escape", iterations=-1)
    req = urllib.request.Request(server["url"] + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    errors = json.loads(exc.value.read())["node_errors"][stage]["errors"]
    kinds = {e["type"] for e in errors}
    assert {"custom_validation_failed", "value_smaller_than_min"} <= kinds, errors
    assert any("save_name" in e["details"] and "plain folder name" in e["details"] for e in errors)


def _run(server, path, timeout=1800):
    check = _helper("workflow_check")
    wf = json.loads(Path(path).read_text())
    assert check.check_workflow(wf, server["object_info"]) == []
    prompt = check.ui_to_api(wf, server["object_info"])
    pid = _http(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]
    return _wait(server, pid, timeout)


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
    "6_face_detailer": [(512, 256)] * 3,  # the photo with both faces stylised, then each face's mask
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workflow_runs(server, name):
    entry = _run(server, ROOT / "workflows" / f"{name}.json")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    assert _images(server, entry) == EXPECTED[name]


STAGE_FILES = {  # what each stage of workflow 5 must leave in models/dualstylegan/my_style/
    "finetune-stylegan": ["finetune-000001.pt", "finetune-000001.safetensors"],
    "destylize": ["exstyle_code.npy", "instyle_code.npy", "destylization/image_000.png"],
    "pretrain": ["generator-pretrain.pt", "generator-pretrain-000001.pt"],
    "finetune": ["generator.pt", "generator.safetensors", "generator-000001.pt"],
    "refine-exstyle": ["refined_exstyle_code.npy"],
    "sampler": ["sampler.pt"],
}


def test_training_workflow_runs(server):
    t0 = time.time()
    entry = _run(server, ROOT / "workflows" / "5_training_finetune.json", timeout=3600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    assert _images(server, entry) == [(256, 256)]  # the trained style rendering a face (256 px fixtures)
    out = server["base"] / "models" / "dualstylegan" / "my_style"
    for stage, files in STAGE_FILES.items():
        for f in files:
            assert (out / f).is_file(), f"{stage} did not write {f}"
        assert (out / "train_state" / f"{stage}.pt").is_file(), stage
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ["image_000.png"]
    assert sorted(p.name for p in (out / "face_images").iterdir()) == ["image_000.png", "image_001.png"]
    log = server["log"].read_text()
    for stage in STAGE_FILES:
        assert f"Pastiche: training {stage} into" in log
    assert "'my_style' loaded from" in log  # stages 4-6 hand on the freshly trained style
    print(f"\nworkflow 5 (six training stages) ran in {time.time() - t0:.0f} s")


def _submit(server, prompt):
    return _http(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]


def _wait(server, pid, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = _http(f"{server['url']}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            if hist[pid]["status"].get("status_str") in ("success", "error"):
                return hist[pid]
        time.sleep(0.5)
    pytest.fail(f"prompt {pid} did not finish in {timeout} s")


def _post(url):
    req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


def test_training_stop_and_resume(server):
    """/interrupt (the Stop button) during a stage: the stage saves its state and the prompt is
    reported interrupted; the same prompt with resume on finishes from there."""
    info = server["object_info"]["PasticheFineTuneStage"]["input"]
    label = next(s for s in info["required"]["stage"][1]["options"] if s.startswith("6 sampler"))
    widgets = {k: v[1].get("default") for sect in ("required", "optional") for k, v in info[sect].items()
               if k not in ("model", "images")}
    widgets.update(stage=label, iterations=600, save_name="stopped_sampler", data_folder="")

    def prompt(resume):
        return {"1": {"class_type": "PasticheLoadDualStyleGAN", "inputs": {"style": "cartoon", "precision": "auto"}},
                "2": {"class_type": "PasticheFineTuneStage", "inputs": dict(widgets, model=["1", 0], resume=resume)},
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}

    out = server["base"] / "models" / "dualstylegan" / "stopped_sampler"
    marker = f"Pastiche: training sampler into {out}"
    seen = server["log"].read_text().count(marker)
    pid = _submit(server, prompt(False))
    for _ in range(1500):  # a hang guard (5 minutes), not a timing check
        if server["log"].read_text().count(marker) != seen:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the sampler stage did not start")
    time.sleep(3)  # inside the training loop (1200 steps of ~30 ms)
    assert _post(server["url"] + "/interrupt") == 200
    entry = _wait(server, pid)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_error" not in kinds, kinds
    assert (out / "train_state" / "sampler.pt").is_file() and not (out / "sampler.pt").exists()
    assert "sampler stopped at step" in server["log"].read_text()
    entry = _wait(server, _submit(server, prompt(True)))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    assert (out / "sampler.pt").is_file()
    log = server["log"].read_text()
    assert "steps: 1200/1200" in log and "(resumed after step" in log
