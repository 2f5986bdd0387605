"""The bundled workflows in the REAL ComfyUI frontend, as a new user meets them (opt-in tier).

    PASTICHE_FRONTEND_TEST=1 COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python \
        python -m pytest -q tests/test_comfy_frontend.py

Runs when PASTICHE_FRONTEND_TEST=1; then anything missing is a FAILURE, not a skip: COMFYUI_DIR,
the frontend package ComfyUI's requirements.txt pins (comfyui-frontend-package, installed for
COMFYUI_PYTHON, or its static/ folder in PASTICHE_FRONTEND_ROOT), selenium (for the Python running
pytest), Chromium and its driver (PASTICHE_CHROMIUM, default /usr/bin/chromium;
PASTICHE_CHROMEDRIVER, default /usr/bin/chromedriver; Selenium Manager is never used, so nothing
downloads a browser). Models: as tests/test_comfy_real.py (PASTICHE_TEST_MODELS or the demo
fixture folder).

For every workflows/*.json: a fresh page loads it with the frontend's own loader
(``app.loadGraphData``); a toast, an open dialog or a browser-console error (beyond the
allow-list of offline noise below) fails the workflow. Then the prompt the frontend builds
(``app.graphToPrompt``) is queued, waited for through /history and its outputs checked (images;
for workflow 5 every training stage's files). A screenshot of the loaded canvas and a
results.json go to PASTICHE_FRONTEND_ARTIFACTS (default tests/artifacts/, gitignored).
Each workflow reports all its problems at once, so one run shows the whole picture.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import uuid
from pathlib import Path

import pytest

import real_comfy

ROOT = real_comfy.ROOT
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
ENABLED = os.environ.get("PASTICHE_FRONTEND_TEST", "") not in ("", "0")
pytestmark = pytest.mark.skipif(not ENABLED, reason="set PASTICHE_FRONTEND_TEST=1 (and COMFYUI_DIR) to run")
ARTIFACTS = Path(os.environ.get("PASTICHE_FRONTEND_ARTIFACTS", ROOT / "tests" / "artifacts"))

# Browser-console errors that are the offline test machine, not the pack: the frontend asks the
# internet (registry, release notes, telemetry, fonts) and optional ComfyUI packages that the
# test venv may lack (workflow templates, embedded node docs). Matched against the message.
CONSOLE_ALLOW = [
    r"net::ERR_NAME_NOT_RESOLVED", r"net::ERR_INTERNET_DISCONNECTED", r"net::ERR_CONNECTION_REFUSED",
    r"net::ERR_PROXY_CONNECTION_FAILED", r"net::ERR_ADDRESS_UNREACHABLE",
    r"api\.comfy\.org", r"registry\.comfy\.org", r"comfy\.org/", r"fonts\.(googleapis|gstatic)\.com",
    r"/templates/", r"/docs/", r"/api/releases", r"/api/i18n",
]


def _require(cond, what):
    if not cond:
        pytest.fail(f"PASTICHE_FRONTEND_TEST is set but {what}")


@pytest.fixture(scope="module")
def frontend_root():
    comfy = os.environ.get("COMFYUI_DIR")
    _require(comfy and Path(comfy, "main.py").is_file(), "COMFYUI_DIR is not a ComfyUI source tree")
    pin = re.search(r"^comfyui-frontend-package==(\S+)", Path(comfy, "requirements.txt").read_text(), re.M)
    _require(pin, "ComfyUI's requirements.txt pins no comfyui-frontend-package")
    root = os.environ.get("PASTICHE_FRONTEND_ROOT")
    if root is None:
        code = ("import importlib.metadata as m, pathlib, comfyui_frontend_package as f; "
                "print(m.version('comfyui-frontend-package')); print(pathlib.Path(f.__file__).parent / 'static')")
        r = subprocess.run([real_comfy.comfy_python(), "-c", code], capture_output=True, text=True)
        _require(r.returncode == 0, f"comfyui-frontend-package is not installed for {real_comfy.comfy_python()} "
                                    f"(pip install comfyui-frontend-package=={pin.group(1)}): {r.stderr[-300:]}")
        version, root = r.stdout.split()
        _require(version == pin.group(1), f"comfyui-frontend-package {version} is installed, ComfyUI pins {pin.group(1)}")
    _require(Path(root, "index.html").is_file(), f"{root} is not a frontend static/ folder")
    return Path(root)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, frontend_root):
    base = real_comfy.make_base(tmp_path_factory.mktemp("comfy_frontend"), training=True)
    # a returning user: the first-run template browser would cover the canvas in every screenshot
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    with real_comfy.server(base, os.environ["COMFYUI_DIR"], front_end_root=frontend_root,
                           extra_args=["--cpu"], fail=pytest.fail) as url:
        yield {"url": url, "base": base, "object_info": real_comfy.http(url + "/object_info", timeout=60)}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("PASTICHE_FRONTEND_TEST is set but selenium is not installed (pip install selenium)")
    chromium = os.environ.get("PASTICHE_CHROMIUM", "/usr/bin/chromium")
    driver_path = os.environ.get("PASTICHE_CHROMEDRIVER", "/usr/bin/chromedriver")
    _require(Path(chromium).is_file(), f"no Chromium at {chromium} (apt-get install chromium)")
    _require(Path(driver_path).is_file(), f"no chromedriver at {driver_path} (apt-get install chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager (which would download one) is never started
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def results():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = {}
    yield out
    (ARTIFACTS / "results.json").write_text(json.dumps(out, indent=1))


_PAGE_STATE = """
const vis = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
return {
  toasts: [...document.querySelectorAll('.p-toast-message')].filter(vis).map(e => e.innerText.trim()),
  dialogs: [...document.querySelectorAll('.p-dialog')].filter(vis).map(e => e.innerText.trim().slice(0, 600)),
};
"""


def _console_errors(driver):
    errs = []
    for entry in driver.get_log("browser"):
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        if not any(re.search(p, msg) for p in CONSOLE_ALLOW):
            errs.append(msg[:500])
    return errs


def _open_app(driver, url, node_types):
    # the frontend restores the last open workflows from browser storage: each workflow gets a
    # first-visit page, or the previous one's toasts would be replayed (and ours masked)
    driver.get(url + "/api/system_stats")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get(url)
    deadline = time.time() + 120
    missing = node_types
    while time.time() < deadline:
        missing = driver.execute_script(
            "const a = window.app, L = window.LiteGraph;"
            "if (!a || !a.graph || !a.canvas || !L) return null;"
            "return arguments[0].filter(t => !(t in L.registered_node_types));", sorted(node_types))
        if missing == []:
            return []
        time.sleep(0.5)
    return missing if missing is not None else ["<the app never started>"]


def _check_outputs(base, name, wf, entry):
    """What is wrong with a finished prompt's outputs (empty: nothing)."""
    from PIL import Image

    from test_comfy_real import EXPECTED, STAGE_FILES

    problems = []
    if entry["status"].get("status_str") != "success":
        msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
        return [f"prompt failed: {json.dumps(msgs)[-1500:]}"]
    images = real_comfy.output_images(base, entry)
    sizes = sorted(Image.open(p).size for p in images if p.is_file())
    if len(sizes) != len(images) or not images:
        problems.append(f"saved images missing: {images}")
    if name in EXPECTED and sizes != EXPECTED[name]:
        problems.append(f"saved image sizes {sizes}, expected {EXPECTED[name]}")
    if name.startswith("5_"):
        out = base / "models" / "dualstylegan" / "my_style"
        for stage, files in STAGE_FILES.items():
            problems += [f"stage {stage} did not write {f}" for f in files if not (out / f).is_file()]
    return problems


def _refusal(body: bytes) -> str:
    """/prompt's validation answer, one line per node and error."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[-1500:]
    lines = [data.get("error", {}).get("message", "")]
    for nid, ne in sorted((data.get("node_errors") or {}).items()):
        lines += [f"node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}" for e in ne.get("errors", [])]
    return "\n    ".join(lines)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_in_the_frontend(path, comfy, browser, results):
    name, wf = path.stem, json.loads(path.read_text())
    node_types = sorted({n["type"] for n in wf["nodes"]})  # from the file: robust to node id renames
    res = results[name] = {"load": [], "queue": None, "outputs": [], "seconds": None}
    problems = res["load"]
    missing = _open_app(browser, comfy["url"], node_types)
    if missing:
        problems.append(f"node types not registered in the frontend: {missing}")
    # the canvas marks these [DEPR]; noted, not failed: their replacements may be newer than the
    # oldest ComfyUI the pack supports
    res["notes"] = [f"deprecated node type: {t}" for t in node_types if comfy["object_info"].get(t, {}).get("deprecated")]
    browser.get_log("browser")  # start-up noise is not this workflow's
    before = browser.execute_script(_PAGE_STATE)
    # what a first visit shows before any workflow is loaded is reported too: a new user sees it
    problems += [f"at start-up: toast: {t}" for t in before["toasts"]]
    problems += [f"at start-up: dialog: {d}" for d in before["dialogs"]]
    browser.execute_script("document.querySelectorAll('.p-toast-message').forEach(e => e.remove());")
    err = browser.execute_async_script(
        "const [wf, done] = arguments;"
        "window.app.loadGraphData(wf).then(() => done(null), e => done(String(e && e.stack || e)));", wf)
    if err:
        problems.append(f"loadGraphData threw: {err}")
    time.sleep(2)  # toasts and dialogs open asynchronously after the load resolves
    state = browser.execute_script(_PAGE_STATE)
    problems += [f"toast: {t}" for t in state["toasts"]]
    problems += [f"dialog: {d}" for d in state["dialogs"] if d not in before["dialogs"]]
    problems += [f"console: {c}" for c in _console_errors(browser)]
    # a file whose widget values the frontend reads differently from how it wrote them (a missing
    # control_after_generate slot shifts every later value) loads without a word: the frontend's
    # own serialization of the loaded graph must give back the file's values
    saved = browser.execute_script(
        "return window.app.graph.serialize().nodes.map(n => [n.id, n.type, n.widgets_values ?? null]);")
    in_file = {n["id"]: n.get("widgets_values") for n in wf["nodes"]}
    for nid, ntype, values in saved:
        if ntype in ("MarkdownNote", "Note"):
            continue
        if nid in in_file and in_file[nid] is not None and values != in_file[nid]:
            problems.append(f"node {nid} ({ntype}) widget values change on load: file {in_file[nid]} -> {values}")
    # the whole graph in view (as the frontend's "fit view"), toasts left showing as evidence
    browser.execute_script("""
        const c = window.app.canvas, ns = window.app.graph.nodes;
        if (ns.length) {
          const x0 = Math.min(...ns.map(n => n.pos[0])), y0 = Math.min(...ns.map(n => n.pos[1] - 30));
          const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1]));
          c.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom: 0.85});
        }
        c.setDirty(true, true); c.draw(true, true);""")
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    prompt = browser.execute_async_script(
        "const done = arguments[0];"
        "window.app.graphToPrompt().then(p => done(JSON.stringify(p)), e => done(JSON.stringify({error: String(e)})));")
    prompt = json.loads(prompt)
    if "error" in prompt:
        res["queue"] = f"graphToPrompt threw: {prompt['error']}"
    else:
        body = {"prompt": prompt["output"], "client_id": str(uuid.uuid4()),
                "extra_data": {"extra_pnginfo": {"workflow": prompt["workflow"]}}}
        t0 = time.time()
        try:
            pid = real_comfy.http(comfy["url"] + "/prompt", body)["prompt_id"]
        except urllib.error.HTTPError as e:
            res["queue"] = f"/prompt refused it ({e.code}): {_refusal(e.read())}"
        else:
            entry = real_comfy.wait(comfy["url"], pid, 3600 if name.startswith("5_") else 900, pytest.fail)
            res["seconds"] = round(time.time() - t0)
            res["queue"] = entry["status"].get("status_str")
            res["outputs"] = _check_outputs(comfy["base"], name, wf, entry)
    if res["queue"] == "success" and not res["outputs"]:
        for p in real_comfy.output_images(comfy["base"], entry):
            shutil.copy(p, ARTIFACTS / f"{name}__{p.name}")
    report = problems + ([] if res["queue"] == "success" else [f"queue: {res['queue']}"]) + res["outputs"]
    assert not report, f"{name}:\n  " + "\n  ".join(report)
