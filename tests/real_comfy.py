"""Starting a real ComfyUI (COMFYUI_DIR) for the opt-in tiers that need more than the stub:
tests/test_comfy_frontend.py (the real frontend in Chromium), tests/test_comfy_memory.py (the
real ModelPatcher and launch flags) and tests/test_comfy_real.py (workflows and training through the API).

Every server gets its own --base-directory with this pack linked into custom_nodes/, the bundled
workflow inputs in input/ and a models/dualstylegan/ folder: the one PASTICHE_TEST_MODELS names
(linked), else the demo-weight folder tests/comfy_stub/make_model_folder.py writes.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"


def helper(name):
    spec = importlib.util.spec_from_file_location(f"pastiche_{name}", STUB / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def comfy_python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


def http(url, data=None, timeout=30):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def make_base(base: Path, models_folder: Path | None = None, training: bool = False) -> Path:
    """Lay out a ComfyUI base directory. ``models_folder``: a dualstylegan folder made once and
    shared by several servers (linked entry by entry, so what a run writes stays in ``base``)."""
    for d in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / d).mkdir(parents=True, exist_ok=True)
    os.symlink(ROOT, base / "custom_nodes" / "comfyui-pastiche")
    for f in (ROOT / "workflows" / "inputs").iterdir():
        if f.is_file():
            shutil.copy(f, base / "input")
    folder = base / "models" / "dualstylegan"
    src = models_folder or os.environ.get("PASTICHE_TEST_MODELS")
    maker = helper("make_model_folder")
    if src:
        folder.mkdir()
        for entry in Path(src).resolve().iterdir():
            os.symlink(entry, folder / entry.name)
        if training and not all((folder / n).is_file() for n in maker.TRAINING_FILES):
            maker.write_training_files(folder)
    else:
        maker.write_folder(folder, "cartoon", training=training)
    return base


@contextlib.contextmanager
def server(base: Path, comfyui_dir: str, front_end_root: Path | None = None, extra_args=(), fail=None):
    """A ComfyUI on 127.0.0.1 serving ``base``; yields its URL. ``fail``: pytest.fail."""
    if front_end_root is None:
        front_end_root = base / "frontend-stub"
        front_end_root.mkdir(exist_ok=True)
        (front_end_root / "index.html").write_text("<!doctype html><title>headless</title>")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = base / "server.log"
    log = open(log_path, "w")
    # --cpu unless the caller passes its own device flags; in-memory database: nothing persists
    proc = subprocess.Popen([comfy_python(), "main.py", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--front-end-root", str(front_end_root),
                             "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
                             "--disable-api-nodes", "--log-stdout", *extra_args],
                            cwd=comfyui_dir, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                fail("ComfyUI exited during startup:\n" + log_path.read_text()[-3000:])
            try:
                http(url + "/system_stats", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            fail("ComfyUI did not start in 300 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait(url, pid, timeout, fail):
    """The /history entry of prompt ``pid`` once it succeeded or failed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = http(f"{url}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            if hist[pid]["status"].get("status_str") in ("success", "error"):
                return hist[pid]
        time.sleep(0.5)
    fail(f"prompt {pid} did not finish in {timeout} s")


def output_images(base: Path, entry) -> list[Path]:
    out = []
    for node_out in entry["outputs"].values():
        for im in node_out.get("images", []):
            if im.get("type") == "output":
                out.append(base / "output" / im.get("subfolder", "") / im["filename"])
    return out
