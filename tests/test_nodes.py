"""Node-level tests of the ComfyUI pack against a host stand-in (tests/comfy_stub).

ComfyUI is not on PyPI; tests/comfy_stub provides folder_paths, comfy.model_management,
comfy.model_patcher, comfy.utils and comfy_api.latest with the real signatures. The models are
the built-in demo weights (256 px), loaded once for the module.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_close_scaled, require_faces

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
INPUTS = ROOT / "workflows" / "inputs"
STUB_MODULES = ("folder_paths", "comfy", "comfy_api")


def _load_pack(name: str = "pastiche_pack_under_test"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    sys.path.insert(0, str(STUB))
    try:
        import folder_paths

        folder_paths.set_base(str(base))
        # a style folder so the loader's dropdown lists 'cartoon' (the bundled workflows use it)
        (base / "models" / "dualstylegan" / "cartoon").mkdir(parents=True)
        (base / "models" / "dualstylegan" / "cartoon" / "generator.pt").write_bytes(b"not a checkpoint")
        pack = _load_pack()
        yield pack
    finally:
        sys.path.remove(str(STUB))
        for k in list(sys.modules):
            if k.split(".")[0] in STUB_MODULES or k.startswith("pastiche_pack_under_test"):
                del sys.modules[k]


@pytest.fixture(scope="module")
def nodes(host):
    return {n.GET_SCHEMA().node_id: n for n in host.NODES}


@pytest.fixture(scope="module")
def mm(host):
    import comfy.model_management

    return comfy.model_management


@pytest.fixture(scope="module")
def demo(nodes):
    from pastiche_pack_under_test.nodes.models import DEMO_STYLE

    return nodes["PasticheLoadDualStyleGAN"].execute(style=DEMO_STYLE, precision="auto")[0]


def err(nodes_mod):
    return nodes_mod.nodes.common.PasticheNodeError


def face_image(name="pastiche_face_aligned.jpg"):
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(INPUTS / name).convert("RGB"), dtype=np.float32) / 255.0)[None]


# ------------------------------------------------------------------------------------------
# import and schemas
# ------------------------------------------------------------------------------------------
def test_pack_import_is_lazy():
    # What keeps the import fast is behavioural (no torch, no models at import); how fast it is
    # depends on the machine, so no time is asserted here.
    code = (f"import sys; sys.path.insert(0, {str(STUB)!r}); import importlib.util as u; "
            f"s = u.spec_from_file_location('p', {str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}]); "
            "m = u.module_from_spec(s); sys.modules['p'] = m; s.loader.exec_module(m); "
            "heavy = sorted(k for k in ('torch', 'numpy', 'PIL', 'dlib', 'safetensors', 'pastiche_core.pipeline') if k in sys.modules); "
            "import folder_paths; print(','.join(heavy) or '-', folder_paths.get_folder_paths('dualstylegan'), "
            "'nodes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True).stdout.split(" ", 1)
    assert out[0] == "-", f"importing the pack must not import {out[0]}"
    assert "dualstylegan" in out[1] and out[1].strip().endswith("False")  # our nodes/ never shadows ComfyUI's 'nodes'


def test_entrypoint_lists_every_node(host):
    import asyncio

    ext = asyncio.run(host.comfy_entrypoint())
    listed = asyncio.run(ext.get_node_list())
    assert listed == host.NODES and len(listed) >= 9


def test_schemas(nodes):
    required_ids = {"PasticheLoadDualStyleGAN", "PasticheAlignFace", "PasticheEncodeExemplarStyle", "PasticheMixStyleLayers",
                    "PasticheDualStyleGANGenerate", "PasticheFineTuneStage", "PastichePasteFaceBack",
                    "PasticheSampleRandomStyle", "PasticheInterpolateStyles"}
    assert required_ids <= set(nodes)
    custom = set()
    for node_id, cls in nodes.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id
        assert info["category"].startswith("Pastiche"), node_id
        assert len(info["description"]) > 40, node_id
        assert info["display_name"] and info["output"], node_id
        for sect in ("required", "optional"):
            for name, spec in (info["input"].get(sect) or {}).items():
                assert isinstance(spec[0], str) and isinstance(spec[1], dict)
                assert len(spec[1].get("tooltip", "")) > 10, f"{node_id}.{name} has no tooltip"
                if spec[0] == "COMBO":
                    assert spec[1]["options"], f"{node_id}.{name} has no options"
                    if "default" in spec[1]:
                        assert spec[1]["default"] in spec[1]["options"]
                if spec[0] in ("INT", "FLOAT") and "default" in spec[1]:
                    assert spec[1]["min"] <= spec[1]["default"] <= spec[1]["max"], f"{node_id}.{name}"
                custom |= {spec[0]} - {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "IMAGE"}
        assert all(t for t in info["output_tooltips"]), node_id
        custom |= set(info["output"]) - {"IMAGE", "STRING", "MASK"}
    assert custom == {"DUALSTYLEGAN_MODEL", "DUALSTYLEGAN_STYLE", "DUALSTYLEGAN_WEIGHTS", "PASTICHE_FACES"}


def test_loader_lists_style_folders_and_demo(nodes):
    opts = nodes["PasticheLoadDualStyleGAN"].GET_NODE_INFO_V1()["input"]["required"]["style"][1]["options"]
    assert opts[0] == "cartoon" and opts[-1].startswith("demo")


# ------------------------------------------------------------------------------------------
# workflows
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checker(host):
    spec = importlib.util.spec_from_file_location("pastiche_workflow_check", STUB / "workflow_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_type_checks(path, nodes, checker):
    info = dict(checker.CORE_NODES)
    info.update({k: v.GET_NODE_INFO_V1() for k, v in nodes.items()})
    wf = json.loads(path.read_text())
    problems = checker.check_workflow(wf, info, check_combos=set(nodes))
    assert problems == []
    for n in wf["nodes"]:
        if n["type"] == "LoadImage":
            assert (INPUTS / n["widgets_values"][0]).is_file(), n["widgets_values"][0]


def test_workflows_cover_the_issue():
    assert len(WORKFLOWS) == 6
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    assert {"PasticheAlignFace", "PastichePasteFaceBack", "PasticheSampleRandomStyle", "PasticheInterpolateStyles",
            "PasticheStyleWeightGrid", "PasticheFineTuneStage", "PasticheMixStyleLayers", "PasticheEncodeExemplarStyle"} <= used


def test_node_ids_are_unique_to_the_pack(nodes):
    """Other packs register AlignFace and friends too, and ComfyUI keeps whichever loads last:
    every id carries the Pastiche prefix, while the display names stay the familiar ones."""
    assert all(node_id.startswith("Pastiche") for node_id in nodes), sorted(nodes)
    shown = {cls.GET_NODE_INFO_V1()["display_name"] for cls in nodes.values()}
    assert {"Load DualStyleGAN", "Align Face", "Encode Exemplar Style", "Mix Style Layers", "DualStyleGAN Generate",
            "Fine-Tune Stage", "Paste Face Back", "Sample Random Style"} <= shown


def test_every_seed_declares_its_control(nodes):
    """The frontend adds a "control after generate" widget to any INT named seed/noise_seed that
    does not say otherwise; every seed says so, on only where a new value per queue is the point."""
    seeds = {}
    for node_id, cls in nodes.items():
        info = cls.GET_NODE_INFO_V1()
        for sect in ("required", "optional"):
            for name, (typ, opts) in (info["input"].get(sect) or {}).items():
                if typ == "INT" and name in ("seed", "noise_seed"):
                    assert isinstance(opts.get("control_after_generate"), bool), f"{node_id}.{name}"
                    seeds[node_id] = opts["control_after_generate"]
    assert seeds == {"PasticheFineTuneStage": False,       # resume needs the same seed
                     "PasticheDualStyleGANGenerate": False,  # noise "stored" ignores it: no re-render per queue
                     "PasticheSampleRandomStyle": True}      # new random styles per queue is the node's point


def test_frontend_widget_rule(checker):
    """The checker builds widgets with the frontend's rules (comfyui-frontend-package 1.35.9)."""
    def node(**inputs):
        return {"input": {"required": inputs}, "input_order": {"required": list(inputs)}, "output": []}

    def kinds(info):
        return [k for _, k, _ in checker.frontend_widgets(info)]

    assert kinds(node(seed=("INT", {}))) == ["INT", "CONTROL"]  # control_after_generate ?? name is seed
    assert kinds(node(noise_seed=("INT", {}))) == ["INT", "CONTROL"]
    assert kinds(node(seed=("INT", {"control_after_generate": False}))) == ["INT"]
    assert kinds(node(seed=("INT", {"control_after_generate": None}))) == ["INT", "CONTROL"]  # ?? treats null as unset
    assert kinds(node(steps=("INT", {}))) == ["INT"]
    assert kinds(node(steps=("INT", {"control_after_generate": True}))) == ["INT", "CONTROL"]
    assert kinds(node(seed=("FLOAT", {}))) == ["FLOAT"]  # the name rule is for INT only
    assert kinds(node(x=("FLOAT", {"control_after_generate": True}))) == ["FLOAT", "CONTROL"]
    assert kinds(node(x=("COMBO", {"options": ["a"], "control_after_generate": True}))) == ["COMBO", "CONTROL", "FILTER"]
    assert kinds(node(seed=("INT", {"forceInput": True}))) == []  # a socket, no widget
    assert kinds(node(x=("DUALSTYLEGAN_MODEL", {}), y=("IMAGE", {}))) == []
    assert kinds(node(x=("DUALSTYLEGAN_MODEL", {"widgetType": "STRING"}))) == ["DUALSTYLEGAN_MODEL"]
    # Comfy.UploadImage appends an "upload" widget after all inputs for the first image combo
    assert [n for n, _, _ in checker.frontend_widgets(node(image=("COMBO", {"image_upload": True, "options": []}),
                                                           n=("INT", {})))] == ["image", "n", "upload"]
    # input_order decides the order: required first, then optional
    info = {"input": {"required": {"b": ("INT", {})}, "optional": {"a": ("STRING", {})}},
            "input_order": {"required": ["b"], "optional": ["a"]}, "output": []}
    assert [n for n, _, _ in checker.frontend_widgets(info)] == ["b", "a"]


def test_checker_counts_the_implicit_seed_control(nodes, checker):
    """A stored workflow whose seed lacks the control value the frontend adds is caught, and the
    API conversion never hands a control value to the next input (issue 15: preview_every = '')."""
    info = dict(checker.CORE_NODES)
    info.update({k: v.GET_NODE_INFO_V1() for k, v in nodes.items()})
    wf = json.loads((ROOT / "workflows" / "5_training_finetune.json").read_text())
    stage = next(n for n in wf["nodes"] if n["type"] == "PasticheFineTuneStage")
    ft = json.loads(json.dumps(info["PasticheFineTuneStage"]))
    del ft["input"]["required"]["seed"][1]["control_after_generate"]  # the schema before the fix
    broken = dict(info, PasticheFineTuneStage=ft)
    assert any("widget values for" in p and f"node {stage['id']} " in p for p in checker.check_workflow(wf, broken))
    api = checker.ui_to_api(wf, info)[str(stage["id"])]["inputs"]
    assert isinstance(api["preview_every"], int) and isinstance(api["seed"], int) and api["data_folder"] == ""


def test_workflow_ids_are_uuids(checker):
    import uuid

    for path in WORKFLOWS:
        wf = json.loads(path.read_text())
        assert uuid.UUID(wf["id"]).version == 4, path.name
    assert checker.check_workflow({"id": "pastiche-1", "nodes": [], "links": []}, {})[0].startswith("workflow id")


def test_checker_catches_a_bad_link(nodes, checker):
    info = dict(checker.CORE_NODES)
    info.update({k: v.GET_NODE_INFO_V1() for k, v in nodes.items()})
    wf = json.loads(WORKFLOWS[0].read_text())
    gen = next(n for n in wf["nodes"] if n["type"] == "PasticheDualStyleGANGenerate")
    style_link = next(i["link"] for i in gen["inputs"] if i["name"] == "style")
    ln = next(ln for ln in wf["links"] if ln[0] == style_link)
    ln[2] = 0  # IMAGE output of LoadImage... wired into the style socket
    ln[1] = next(n["id"] for n in wf["nodes"] if n["type"] == "LoadImage")
    assert any("style" in p for p in checker.check_workflow(wf, info))


# ------------------------------------------------------------------------------------------
# queue-time checks and cache fingerprints
# ------------------------------------------------------------------------------------------
def test_validate_inputs_name_only_text_inputs(nodes):
    """ComfyUI skips its own min/max/option checks for every input named in validate_inputs (and
    for all of them with **kwargs): ours name only STRING inputs, explicitly."""
    import inspect

    checked = {}
    for node_id, cls in nodes.items():
        if "validate_inputs" not in cls.__dict__:
            continue
        spec = inspect.getfullargspec(cls.validate_inputs)
        assert spec.varkw is None, node_id
        info = cls.GET_NODE_INFO_V1()["input"]
        types = {k: v[0] for sect in ("required", "optional") for k, v in (info.get(sect) or {}).items()}
        named = spec.args[1:]
        assert named and all(types[a] == "STRING" for a in named), (node_id, named)
        checked[node_id] = named
    assert checked == {"PasticheAlignFace": ["face_list"],
                       "PasticheFineTuneStage": ["save_name", "data_folder"],
                       "PasticheMixStyleLayers": ["layer_weights"],
                       "PasticheStyleWeightGrid": ["structure_values", "color_values"]}


def test_validate_inputs_report_mistakes_at_queue_time(nodes, tmp_path):
    ft, mix, grid = nodes["PasticheFineTuneStage"], nodes["PasticheMixStyleLayers"], nodes["PasticheStyleWeightGrid"]
    assert ft.validate_inputs(save_name="my_style", data_folder="") is True
    assert ft.validate_inputs(save_name=None, data_folder=None) is True  # linked: checked at run time
    for bad in ("", "../x", "a/b", ".hidden"):
        assert "save_name" in ft.validate_inputs(save_name=bad, data_folder=""), bad
    assert "is not a folder" in ft.validate_inputs(save_name="s", data_folder="nope")
    assert "inside ComfyUI's input folder" in ft.validate_inputs(save_name="s", data_folder=str(tmp_path))
    import folder_paths

    (Path(folder_paths.get_input_directory()) / "train_set").mkdir(parents=True, exist_ok=True)
    assert ft.validate_inputs(save_name="s", data_folder="train_set") is True
    assert mix.validate_inputs(layer_weights="") is True and mix.validate_inputs(layer_weights="1, 0.5") is True
    assert "numbers" in mix.validate_inputs(layer_weights="1, x")
    assert "up to 18" in mix.validate_inputs(layer_weights=", ".join(["1"] * 19))
    assert grid.validate_inputs(structure_values="0, 1", color_values="1") is True
    assert "color_values" in grid.validate_inputs(structure_values="0", color_values="a")
    assert "too many" in grid.validate_inputs(structure_values=", ".join(["1"] * 17), color_values=", ".join(["1"] * 16))


def test_loader_fingerprint_follows_the_files(nodes, host):
    """A style retrained or replaced in place keeps its name: the loader's fingerprint (ComfyUI's
    IS_CHANGED) carries size and mtime of the files it reads, so the cached model is not reused."""
    import os
    import shutil

    import folder_paths
    from pastiche_pack_under_test.nodes.models import DEMO_STYLE

    load = nodes["PasticheLoadDualStyleGAN"]
    style = Path(folder_paths.get_folder_paths("dualstylegan")[0]) / "fp_style"
    style.mkdir()
    try:
        (style / "generator.pt").write_bytes(b"one")
        first = load.fingerprint_inputs(style="fp_style", precision="auto")
        assert load.fingerprint_inputs(style="fp_style", precision="auto") == first  # stable
        (style / "generator.pt").write_bytes(b"retrained")
        second = load.fingerprint_inputs(style="fp_style", precision="auto")
        assert second != first
        np.save(style / "exstyle_code.npy", np.zeros((1, 14, 512), np.float32))  # a bank appears
        assert load.fingerprint_inputs(style="fp_style", precision="auto") != second
        os.utime(style / "generator.pt", ns=(1, 1))  # same size, other mtime
        assert load.fingerprint_inputs(style="fp_style", precision="auto") != second
    finally:
        shutil.rmtree(style)
    assert load.fingerprint_inputs(style="fp_style", precision="auto") == "missing:fp_style"
    assert load.fingerprint_inputs(style=DEMO_STYLE, precision="auto") == "demo"


def test_finetune_fingerprint_never_sees_its_own_outputs(nodes, host, tmp_path):
    """Fine-Tune Stage's fingerprint follows data_folder's images and the shared training inputs,
    never the save_name folder it writes (else it would retrain on every queue)."""
    import shutil

    import folder_paths

    ft = nodes["PasticheFineTuneStage"]
    root = Path(folder_paths.get_folder_paths("dualstylegan")[0])
    data = Path(folder_paths.get_input_directory()) / "fp_exemplars"  # data folders live in input/
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"png")
    (data / "notes.txt").write_text("not an image")
    fp = ft.fingerprint_inputs(save_name="fp_run", data_folder="fp_exemplars", model=None, stage="x")
    assert [Path(p).name for p, _, _ in fp] == ["a.png"]
    (data / "b.jpg").write_bytes(b"jpg")
    assert ft.fingerprint_inputs(save_name="fp_run", data_folder="fp_exemplars") != fp
    # a folder outside input/ is refused when the node runs; it contributes nothing here
    assert ft.fingerprint_inputs(save_name="fp_run", data_folder=str(tmp_path)) == \
        ft.fingerprint_inputs(save_name="fp_run", data_folder="")
    shared = root / "stylegan2-ffhq-config-f.pt"
    shared.write_bytes(b"ffhq")
    try:
        assert str(shared) in [p for p, _, _ in ft.fingerprint_inputs(save_name="fp_run", data_folder="")]
        out = root / "fp_run"
        (out / "train_images").mkdir(parents=True)
        try:
            (out / "train_images" / "image_000.png").write_bytes(b"written by the node")
            before = ft.fingerprint_inputs(save_name="fp_run", data_folder="")
            (out / "generator.pt").write_bytes(b"trained")
            (out / "train_images" / "image_001.png").write_bytes(b"written by the node")
            after = ft.fingerprint_inputs(save_name="fp_run", data_folder="")
            assert before == after and all("fp_run" not in p for p, _, _ in after)
        finally:
            shutil.rmtree(out)
    finally:
        shared.unlink()


# ------------------------------------------------------------------------------------------
# weights (no models needed)
# ------------------------------------------------------------------------------------------
def test_mix_style_layers(nodes, host):
    mix = nodes["PasticheMixStyleLayers"]
    w = mix.execute(preset="custom (sliders)", structure_weight=0.5, color_weight=0.25)[0]
    assert w.sets[0] == (0.5,) * 7 + (0.25,) * 11 and w.preserve_color == [False]
    assert mix.execute(preset="preserve_color", preserve_color=True)[0].sets[0][7:] == (0.0,) * 11
    full = mix.execute(layer_weights="0.6, " * 17 + "1")[0].sets[0]
    assert len(full) == 18 and full[0] == 0.6 and full[-1] == 1.0
    with pytest.raises(err(host), match="numbers separated by commas"):
        mix.execute(layer_weights="0.5, lots")
    with pytest.raises(err(host), match="up to 18"):
        mix.execute(layer_weights=",".join(["1"] * 19))
    grid = nodes["PasticheStyleWeightGrid"].execute(structure_values="0, 1", color_values="0 0.5 1")[0]
    assert len(grid) == 6 and grid.labels[1] == "s0 c0.5"


# ------------------------------------------------------------------------------------------
# models (demo weights)
# ------------------------------------------------------------------------------------------
def test_loader_registers_models_with_the_memory_manager(demo, mm):
    import comfy.model_patcher

    assert demo.demo and demo.n_latent == 14
    patched = {type(p.model).__name__ for p in mm.loaded_models}
    assert {"DualStyleGAN", "PSPEncoder"} <= patched
    assert all(isinstance(p, comfy.model_patcher.ModelPatcher) for p in demo.patchers.values())
    assert str(next(demo.pipeline.generator.parameters()).device) == "cpu"


def test_loader_errors_are_node_errors(nodes, host):
    import folder_paths

    with pytest.raises(err(host), match="cannot load DualStyleGAN style 'cartoon': missing encoder.pt"):
        nodes["PasticheLoadDualStyleGAN"].execute(style="cartoon")
    encoder = Path(folder_paths.get_folder_paths("dualstylegan")[0]) / "encoder.pt"
    bank = encoder.parent / "cartoon" / "exstyle_code.npy"
    encoder.write_bytes(b"junk")
    bank.write_bytes(b"junk")
    try:
        with pytest.raises(err(host), match="cannot load DualStyleGAN style 'cartoon'.*generator.pt"):
            nodes["PasticheLoadDualStyleGAN"].execute(style="cartoon")  # generator.pt holds junk bytes
    finally:
        encoder.unlink()
        bank.unlink()
    with pytest.raises(err(host), match="not found"):
        nodes["PasticheLoadDualStyleGAN"].execute(style="no_such_style")


def test_every_node_maps_its_errors(host):
    """Each node's execute goes through the one error wrapper (nodes.common.node_errors)."""
    for node in host.NODES:
        assert getattr(node.execute.__func__, "__wrapped__", None) is not None, node.__name__


@pytest.mark.parametrize("exc, words", [
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied\n" + "x" * 2000), "unexpected RuntimeError: mat1"),
    (ValueError("too many values to unpack"), "unexpected ValueError"),
    (OSError(36, "File name too long", "/" + "a" * 5000), "File name too long: '/aaa"),
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: not enough memory"), "out of memory"),
])
def test_unexpected_errors_become_one_short_node_error(nodes, host, monkeypatch, exc, words):
    def boom(*a, **k):
        raise exc

    monkeypatch.delenv("PASTICHE_DEBUG", raising=False)
    monkeypatch.setattr(host.nodes.generate, "check_image", boom)
    with pytest.raises(err(host)) as caught:
        nodes["PasticheImageGrid"].execute(images=torch.zeros(1, 8, 8, 3))
    msg = str(caught.value)
    assert msg.startswith("Image Grid: ") and words in msg, msg
    assert "\n" not in msg and len(msg) <= len("Image Grid: ") + 300
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback


def test_host_exceptions_pass_through_unchanged(nodes, host, mm, monkeypatch):
    """Stop and ComfyUI's out-of-memory recovery need their own exceptions; a bug shows its
    traceback with PASTICHE_DEBUG=1."""
    raised = [mm.InterruptProcessingException(), torch.cuda.OutOfMemoryError("CUDA out of memory"),
              KeyboardInterrupt()]

    class HostOOM(Exception):
        pass

    monkeypatch.setattr(mm, "OOM_EXCEPTION", HostOOM, raising=False)
    raised.append(HostOOM("out of memory"))
    for exc in raised:
        def boom(*a, **k):
            raise exc

        monkeypatch.setattr(host.nodes.generate, "check_image", boom)
        with pytest.raises(type(exc)) as caught:
            nodes["PasticheImageGrid"].execute(images=torch.zeros(1, 8, 8, 3))
        assert caught.value is exc
    bug = RuntimeError("a bug")

    def buggy(*a, **k):
        raise bug

    monkeypatch.setattr(host.nodes.generate, "check_image", buggy)
    monkeypatch.setenv("PASTICHE_DEBUG", "1")
    with pytest.raises(RuntimeError) as caught:
        nodes["PasticheImageGrid"].execute(images=torch.zeros(1, 8, 8, 3))
    assert caught.value is bug
    # our own errors keep their wording, with or without PASTICHE_DEBUG
    monkeypatch.undo()
    monkeypatch.setenv("PASTICHE_DEBUG", "1")
    with pytest.raises(err(host), match="must be an IMAGE"):
        nodes["PasticheImageGrid"].execute(images="not an image")


def test_bank_style_by_index_and_name(nodes, demo, host):
    enc = nodes["PasticheEncodeExemplarStyle"]
    s = enc.execute(model=demo, style="(by index)", index=2)[0]
    assert s.latent.shape == (1, 14, 512) and s.names == ["demo_style_2"]
    s2 = enc.execute(model=demo, style="demo/demo_style_2")[0]
    assert torch.equal(s.latent, s2.latent)
    with pytest.raises(err(host), match="out of range"):
        enc.execute(model=demo, style="(by index)", index=99)
    with pytest.raises(err(host), match="from the 'cartoon' bank"):
        enc.execute(model=demo, style="cartoon/x.jpg")


def test_generate_one_face_many_styles(nodes, demo, host):
    import comfy.utils

    face = face_image()
    styles = nodes["PasticheEncodeExemplarStyle"].execute(model=demo, index=0)[0]
    styles.latent = torch.cat([styles.latent, nodes["PasticheEncodeExemplarStyle"].execute(model=demo, index=1)[0].latent])
    styles.names = ["a", "b"]
    comfy.utils.events.clear()
    # one face x two styles, paired with two weight sets: the second with every weight 0, where the
    # extrinsic style has no effect at all
    weights = nodes["PasticheStyleWeightGrid"].execute(structure_values="0.75, 0", color_values="1")[0]
    weights.sets[1] = (0.0,) * 18
    out = nodes["PasticheDualStyleGANGenerate"].execute(model=demo, faces=face, style=styles, weights=weights)[0]
    assert out.shape == (2, 256, 256, 3) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and not torch.equal(out[0], out[1])
    # demo-weight images carry the DEMO WEIGHTS caption band (black with yellow text) at the top
    band = out[:, :8]
    assert (band[..., 2] == 0).float().mean() > 0.5 and (band[..., 0] > 0.9).any()
    assert comfy.utils.events and comfy.utils.events[-1][1] == comfy.utils.events[-1][2]
    with pytest.raises(err(host), match="cannot pair 2 faces, 3 styles"):
        styles.latent, styles.names = styles.latent[[0, 1, 0]], ["a", "b", "c"]
        nodes["PasticheDualStyleGANGenerate"].execute(model=demo, faces=face.repeat(2, 1, 1, 1), style=styles)
    with pytest.raises(err(host), match="square"):
        nodes["PasticheDualStyleGANGenerate"].execute(model=demo, faces=face[:, :200], style=styles)


def test_generate_honours_interrupt(nodes, demo, mm):
    styles = nodes["PasticheEncodeExemplarStyle"].execute(model=demo, index=0)[0]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            nodes["PasticheDualStyleGANGenerate"].execute(model=demo, faces=face_image(), style=styles)
    finally:
        mm.interrupt_current_processing(False)


def test_exemplar_style_and_bad_exemplar(nodes, demo, host):
    enc = nodes["PasticheEncodeExemplarStyle"]
    s = enc.execute(model=demo, exemplar=face_image("pastiche_exemplar_cartoon.jpg"))[0]
    assert s.latent.shape == (1, 14, 512) and s.source == "exemplar"
    with pytest.raises(err(host), match="must be an IMAGE batch.*MASK"):
        enc.execute(model=demo, exemplar=torch.ones(1, 64, 64))  # a MASK wired in
    with pytest.raises(err(host), match="must be an IMAGE"):
        enc.execute(model=demo, exemplar="style.png")


def test_random_styles_and_interpolation(nodes, demo, host):
    rs = nodes["PasticheSampleRandomStyle"]
    one = rs.execute(model=demo, count=1, seed=3)[0]
    three = rs.execute(model=demo, count=3, seed=3, fix_color=True)[0]
    assert one.latent.shape == (1, 14, 512) and three.latent.shape == (3, 14, 512)
    assert torch.equal(three.latent[0, 7:], three.latent[2, 7:]) and not torch.equal(three.latent[0, :7], three.latent[2, :7])
    assert torch.equal(rs.execute(model=demo, count=3, seed=3, fix_color=True)[0].latent, three.latent)
    a = nodes["PasticheEncodeExemplarStyle"].execute(model=demo, index=0)[0]
    b = nodes["PasticheEncodeExemplarStyle"].execute(model=demo, index=3)[0]
    sweep = nodes["PasticheInterpolateStyles"].execute(style_a=a, style_b=b, steps=3)[0]
    assert sweep.latent.shape == (3, 14, 512)
    assert torch.equal(sweep.latent[0], a.latent[0]) and torch.equal(sweep.latent[2], b.latent[0])
    half = nodes["PasticheInterpolateStyles"].execute(style_a=a, style_b=b, t=0.5)[0]
    assert_close_scaled(half.latent, (a.latent + b.latent) / 2)
    with pytest.raises(err(host), match="one code in style_a"):
        nodes["PasticheInterpolateStyles"].execute(style_a=three, style_b=b, steps=3)


# ------------------------------------------------------------------------------------------
# training (FineTuneStage over pastiche_core.training.runner.run_stage)
# ------------------------------------------------------------------------------------------
STAGE_IDS = ["finetune-stylegan", "destylize", "pretrain", "finetune", "refine-exstyle", "sampler"]


def training_mod():
    return sys.modules["pastiche_pack_under_test.nodes.training"]


def test_finetune_stage_schema(nodes):
    cls = nodes["PasticheFineTuneStage"]
    schema = cls.GET_SCHEMA()
    assert schema.not_idempotent and schema.category == "Pastiche/training"
    info = cls.GET_NODE_INFO_V1()
    req, opt = info["input"]["required"], info["input"]["optional"]
    stages = req["stage"][1]["options"]
    assert [training_mod().STAGE_LABELS[s] for s in stages] == STAGE_IDS  # pipeline order
    assert [int(s.split()[0]) for s in stages] == [1, 2, 3, 4, 5, 6]
    assert req["stage"][1]["default"] == stages[3] and "finetune" in stages[3]
    assert req["model"][0] == "DUALSTYLEGAN_MODEL" and opt["images"][0] == "IMAGE" and opt["data_folder"][0] == "STRING"
    for name in ("iterations", "batch_size", "learning_rate"):
        assert req[name][1]["default"] == 0 and req[name][1]["min"] == 0
    assert "600" in req["iterations"][1]["tooltip"] and "1500" in req["iterations"][1]["tooltip"]
    assert {k: req[k][1]["default"] for k in ("style_loss", "contextual_loss", "perceptual_loss", "identity_loss",
                                               "l2_reg_loss")} == {"style_loss": 0.25, "contextual_loss": 0.25,
                                                                   "perceptual_loss": 1.0, "identity_loss": 1.0,
                                                                   "l2_reg_loss": 0.015}
    for name, typ in (("augment", "BOOLEAN"), ("seed", "INT"), ("save_name", "STRING"), ("resume", "BOOLEAN"),
                      ("preview_every", "INT")):
        assert req[name][0] == typ, name
    # declared off: the frontend would otherwise add a randomising control (an INT named seed)
    assert req["seed"][1]["control_after_generate"] is False
    assert schema.is_output_node  # a sink: runs for the files it writes, outputs connected or not
    assert info["output"] == ["DUALSTYLEGAN_MODEL", "IMAGE", "STRING"]
    assert info["output_name"] == ["model", "preview", "info"]
    # last (older workflows keep their widget places); "default": lpips, or a resumed run's own loss
    assert list(opt)[-1] == "loss" and opt["loss"][1]["options"] == ["default", "lpips", "vgg", "pixel"]
    assert opt["loss"][1]["default"] == "default" and "vgg16-397923af.pth" in opt["loss"][1]["tooltip"]


def test_finetune_stage_passes_the_loss_choice(nodes, demo, host, bank_folder, monkeypatch):
    """destylize / refine-exstyle get the chosen loss; "default" leaves it to the runner (lpips for
    a new run, the run's own loss on resume); the other stages never get one."""
    from pastiche_core.errors import InputError
    from pastiche_core.training import runner

    seen = []

    def fake_run_stage(stage, **kw):
        seen.append((stage, kw["options"].get("loss")))
        raise InputError("stopped by the test")
    monkeypatch.setattr(runner, "run_stage", fake_run_stage)
    tm = training_mod()
    bank_folder("loss_choice")
    for label, loss in ((tm.STAGES[1], "default"), (tm.STAGES[1], "vgg"), (tm.STAGES[4], "lpips"),
                        (tm.STAGES[4], "pixel"), (tm.STAGES[0], "vgg")):
        with pytest.raises(err(host), match="stopped by the test"):
            nodes["PasticheFineTuneStage"].execute(model=demo, stage=label, images=face_image(),
                                                   save_name="loss_choice", loss=loss)
    assert seen == [("destylize", None), ("destylize", "vgg"), ("refine-exstyle", "lpips"),
                    ("refine-exstyle", "pixel"), ("finetune-stylegan", None)]
    with pytest.raises(err(host), match="unknown loss 'l2'"):
        nodes["PasticheFineTuneStage"].execute(model=demo, stage=tm.STAGES[1], images=face_image(),
                                               save_name="loss_choice", loss="l2")


def test_training_workflow_chains_the_pipeline(nodes, checker):
    info = dict(checker.CORE_NODES)
    info.update({k: v.GET_NODE_INFO_V1() for k, v in nodes.items()})
    wf = json.loads((ROOT / "workflows" / "5_training_finetune.json").read_text())
    assert checker.check_workflow(wf, info, check_combos=set(nodes)) == []
    by_id = {n["id"]: n for n in wf["nodes"]}
    links = {ln[0]: ln for ln in wf["links"]}

    def source(node, name):
        inp = next(i for i in node["inputs"] if i["name"] == name)
        if inp["link"] is None:
            return None, None, None
        ln = links[inp["link"]]
        src = by_id[ln[1]]
        # link by link: the link's type is the source output's type and the target input's type
        assert ln[5] == src["outputs"][ln[2]]["type"] == node["inputs"][ln[4]]["type"], ln
        assert node["inputs"][ln[4]]["name"] == name and inp["link"] in src["outputs"][ln[2]]["links"]
        return src, ln[2], ln[5]

    labels = training_mod().STAGE_LABELS
    api = checker.ui_to_api(wf, info)
    stages = [n for n in wf["nodes"] if n["type"] == "PasticheFineTuneStage"]
    # walk the chain back from the model that renders the test image
    gen = next(n for n in wf["nodes"] if n["type"] == "PasticheDualStyleGANGenerate")
    chain, node = [], source(gen, "model")[0]
    while node["type"] == "PasticheFineTuneStage":
        chain.append(node)
        node, slot, typ = source(node, "model")
        assert slot == 0 and typ == "DUALSTYLEGAN_MODEL"
    assert node["type"] == "PasticheLoadDualStyleGAN" and len(chain) == len(stages) == 6
    chain.reverse()
    assert [labels[api[str(n["id"])]["inputs"]["stage"]] for n in chain] == STAGE_IDS
    assert {api[str(n["id"])]["inputs"]["save_name"] for n in chain} == {"my_style"}
    for n in chain:
        inputs = api[str(n["id"])]["inputs"]
        stage = labels[inputs["stage"]]
        assert 1 <= inputs["iterations"] <= 4 and 1 <= inputs["batch_size"] <= 2, stage
        assert inputs["resume"] is False and inputs["data_folder"] == ""
        src = source(n, "images")[0]
        if stage == "sampler":
            assert src is None
            continue
        files = [src] if src["type"] == "LoadImage" else [source(src, k)[0] for k in ("image1", "image2")]
        names = [f["widgets_values"][0] for f in files]
        assert all((INPUTS / f).is_file() for f in names)
        if stage == "pretrain":
            assert src["type"] == "ImageBatch" and "pastiche_exemplar_cartoon.jpg" not in names
        else:
            assert names == ["pastiche_exemplar_cartoon.jpg"]
    assert any(n["type"] == "SaveImage" for n in wf["nodes"])
    note = next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    for official in ("600", "300", "3000", "1500", "100", "500000"):
        assert official in note


@pytest.fixture
def bank_folder(host):
    """models/dualstylegan/<name>/exstyle_code.npy with 4 random z+ codes (what the sampler learns)."""
    import shutil

    import folder_paths
    from pastiche_core.styles import StyleBank

    made = []

    def make(name):
        out = Path(folder_paths.get_folder_paths("dualstylegan")[0]) / name
        out.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(1)
        StyleBank([f"s{i}.png" for i in range(4)], torch.randn(4, 14, 512, generator=g), space="z+").save_npy(
            out / "exstyle_code.npy")
        made.append(out)
        return out

    yield make
    for out in made:
        shutil.rmtree(out, ignore_errors=True)


def test_finetune_stage_trains_the_sampler(nodes, demo, bank_folder):
    import comfy.utils

    out = bank_folder("trained_sampler")
    comfy.utils.events.clear()
    with torch.inference_mode():  # as ComfyUI runs nodes
        res = nodes["PasticheFineTuneStage"].execute(model=demo, stage=training_mod().STAGES[5], iterations=3, batch_size=2,
                                             seed=0, save_name="trained_sampler", images=face_image())
    model, preview, info = res[0], res[1], res[2]
    assert model is demo  # no generator in the folder: the input model flows on
    assert preview.shape == (1, 64, 64, 3) and float(preview.abs().max()) == 0.0
    assert (out / "sampler.pt").is_file() and (out / "train_state" / "sampler.pt").is_file()
    assert "stage: 6 sampler" in info and "steps: 6/6" in info and "sampler.pt" in info and "final loss:" in info
    assert "images/data_folder are not used" in info
    assert comfy.utils.events[-1][1:] == (6, 6)
    from pastiche_core.models.sampler import StyleSampler

    StyleSampler.from_checkpoint(out / "sampler.pt")  # the official format, loadable


def test_finetune_stage_reloads_the_trained_style(nodes, demo, bank_folder, monkeypatch):
    """A folder that has a generator after the stage: the output is that style, loaded afresh by
    the loader's own code (load_bundle, mocked here: the demo folder holds no encoder.pt)."""
    models_mod = sys.modules["pastiche_pack_under_test.nodes.models"]
    out = bank_folder("trained_gen")
    (out / "train_state").mkdir()
    (out / "generator.pt").write_bytes(b"stand-in")
    calls = []
    monkeypatch.setattr(models_mod, "load_bundle", lambda *a, **k: calls.append((a, k)) or "fresh bundle")
    res = nodes["PasticheFineTuneStage"].execute(model=demo, stage=training_mod().STAGES[5], iterations=1, batch_size=2,
                                         save_name="trained_gen")
    assert res[0] == "fresh bundle"
    (args, kwargs), = calls
    assert args[0] == "trained_gen" and kwargs["root"] == out.parent and kwargs["reload"] is True
    assert "'trained_gen' loaded from" in res[2]


def test_finetune_stage_writes_images_and_validates(nodes, demo, host, bank_folder):
    import folder_paths
    from PIL import Image

    tm = training_mod()
    root = Path(folder_paths.get_folder_paths("dualstylegan")[0])
    ft = nodes["PasticheFineTuneStage"]
    for bad in ("", "   ", "../escape", "a/b", "a\\b", "..", ".hidden", "c:style"):
        with pytest.raises(err(host), match="save_name"):
            ft.execute(model=demo, stage=tm.STAGES[1], images=face_image(), save_name=bad)
    assert not (root.parent / "escape").exists()
    # an existing style folder that training did not make is never written into
    with pytest.raises(err(host), match="existing style folder"):
        ft.execute(model=demo, stage=tm.STAGES[1], images=face_image(), save_name="cartoon")
    with pytest.raises(err(host), match="needs training images"):
        ft.execute(model=demo, stage=tm.STAGES[0], save_name="wi")
    with pytest.raises(err(host), match="not both"):
        ft.execute(model=demo, stage=tm.STAGES[0], images=face_image(), data_folder="x", save_name="wi")
    with pytest.raises(err(host), match="data_folder 'no/such' is not a folder"):
        ft.execute(model=demo, stage=tm.STAGES[0], data_folder="no/such", save_name="wi")
    out = bank_folder("wi")
    (out / "train_images").mkdir()
    (out / "train_images" / "old.jpg").write_bytes(b"stale")
    (out / "train_images" / "keep.txt").write_text("not an image")
    batch = torch.cat([face_image(), face_image("pastiche_exemplar_cartoon.jpg")])
    # destylize finds no fine-tuned StyleGAN2: one clear node error, after the images are written
    with pytest.raises(err(host), match=r"^Fine-Tune Stage \(destylize\): missing finetune-000600\.pt"):
        ft.execute(model=demo, stage=tm.STAGES[1], images=batch, save_name="wi")
    files = sorted(p.name for p in (out / "train_images").iterdir())
    assert files == ["image_000.png", "image_001.png", "keep.txt"]
    for i, p in enumerate(["image_000.png", "image_001.png"]):
        back = np.asarray(Image.open(out / "train_images" / p).convert("RGB"))
        assert np.array_equal(back, (batch[i].numpy() * 255).round().astype(np.uint8))
    # pretrain's photos go to face_images/; the same batch rewrites the same bytes
    before = (out / "train_images" / "image_000.png").read_bytes()
    tm.write_images(batch[:1], out / "train_images")
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ["image_000.png", "keep.txt"]
    assert (out / "train_images" / "image_000.png").read_bytes() == before
    with pytest.raises(err(host), match=r"^Fine-Tune Stage \(pretrain\): missing "):
        ft.execute(model=demo, stage=tm.STAGES[2], images=batch, save_name="wi")
    assert sorted(p.name for p in (out / "face_images").iterdir()) == ["image_000.png", "image_001.png"]


def test_finetune_stage_interrupt_and_resume(nodes, demo, mm, bank_folder):
    """Stop in the middle (ComfyUI's progress hook raises the interruption, as the real one
    does): the stage saves its state, the node re-raises ComfyUI's interruption, and resume
    continues from the saved step."""
    import comfy.utils

    tm = training_mod()
    out = bank_folder("stopped")
    ft = nodes["PasticheFineTuneStage"]
    mm.interrupt_current_processing(True)  # Stop pressed before the node started: nothing runs
    with pytest.raises(mm.InterruptProcessingException):
        ft.execute(model=demo, stage=tm.STAGES[5], iterations=5, batch_size=2, save_name="stopped")
    assert not (out / "train_state").exists() and not mm.processing_interrupted()

    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 3 and len(seen) == 3:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()  # what ComfyUI's hook does

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ft.execute(model=demo, stage=tm.STAGES[5], iterations=5, batch_size=2, save_name="stopped")
        assert seen == [1, 2, 3] and not mm.processing_interrupted()
        assert (out / "train_state" / "sampler.pt").is_file() and not (out / "sampler.pt").exists()
        seen.clear()
        info = ft.execute(model=demo, stage=tm.STAGES[5], iterations=5, batch_size=2, save_name="stopped",
                          resume=True)[2]
        assert seen == list(range(4, 11)) and "steps: 10/10" in info and "resumed after step 3" in info
        assert (out / "sampler.pt").is_file()
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def test_progress_previews_and_preview_output(host, mm):
    """g_ema samples in the progress info go to ComfyUI's bar as ("PNG", PIL image, 512) and
    become the preview output; no bar update is sent once a Stop is pending."""
    import comfy.utils
    from PIL import Image

    tm = training_mod()
    frames = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: frames.append((v, t, p)))
    try:
        rep = tm._Reporter()
        rep.progress(1, 4, {"loss": 1.0, "preview": torch.zeros(2, 3, 16, 16)})
        rep.progress(2, 4, {"loss": 0.5, "preview": None})
        assert not rep.should_stop()
        mm.interrupt_current_processing(True)
        rep.progress(3, 4, {"loss": 0.4, "preview": torch.ones(3, 3, 16, 16)})
        assert rep.should_stop()
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert [(v, t) for v, t, _ in frames] == [(1, 4), (2, 4)] and frames[1][2] is None
    kind, image, size = frames[0][2]
    assert kind == "PNG" and isinstance(image, Image.Image) and image.size == (32, 16) and size == 512
    out = tm._preview_image(rep, Path("/nonexistent"), "finetune")
    assert out.shape == (3, 16, 16, 3) and float(out.min()) == 1.0  # the last samples, [-1, 1] -> [0, 1]


def test_image_grid(nodes):
    imgs = torch.rand(5, 8, 6, 3)
    g = nodes["PasticheImageGrid"].execute(images=imgs, columns=3, padding=2, background=0.0)[0]
    assert g.shape == (1, 2 * 8 + 2, 3 * 6 + 4, 3)
    assert torch.equal(g[0, 10:18, 8:14], imgs[4])


# ------------------------------------------------------------------------------------------
# faces (need the dlib extra)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dlib_ok():
    require_faces()  # installed but broken is a failure, not a skip


def test_align_generate_paste(nodes, demo, host, dlib_ok):
    photo = face_image("pastiche_photo.jpg")
    photos = torch.cat([photo, photo.flip(2)])
    crops, info, *_masks = nodes["PasticheAlignFace"].execute(image=photos, detector="dlib", face="largest", size=256)
    assert crops.shape == (2, 256, 256, 3) and [b for b, _ in info.faces] == [0, 1]
    style = nodes["PasticheEncodeExemplarStyle"].execute(model=demo, index=0)[0]
    out = nodes["PasticheDualStyleGANGenerate"].execute(model=demo, faces=crops, style=style)[0]
    pasted = nodes["PastichePasteFaceBack"].execute(image=photos, faces=out, face_info=info)[0]
    assert pasted.shape == photos.shape
    changed = (pasted - photos).abs().amax(-1) > 1 / 255 + 1e-6
    assert changed.any() and not changed[:, :, :20].any()  # the left edge of the photo is far from the face
    with pytest.raises(err(host), match="2 face crops for 2|match face_info"):
        nodes["PastichePasteFaceBack"].execute(image=photo, faces=out, face_info=info)


def test_align_no_face_is_a_clear_error(nodes, host, dlib_ok):
    blank = torch.full((2, 200, 300, 3), 0.5)
    with pytest.raises(err(host), match=r"No face found in image 1 of the batch \(300x200\)"):
        nodes["PasticheAlignFace"].execute(image=blank, detector="dlib", face="largest")
    photo = face_image("pastiche_photo.jpg")
    crops, info, *_masks = nodes["PasticheAlignFace"].execute(image=torch.cat([torch.full_like(photo, 0.5), photo]),
                                                     detector="dlib", face="all", skip_missing=True)
    assert [b for b, _ in info.faces] == [1] * len(info)


def _two_faces():
    from PIL import Image

    path = Path(__file__).parent / "fixtures" / "edge" / "two_faces.jpg"  # 1024x512: 006750 left, 081680 right
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


def test_align_face_selection_and_masks(nodes, host, dlib_ok):
    photo = _two_faces()
    align = nodes["PasticheAlignFace"]
    crops, info, soft, hard = align.execute(image=photo, detector="dlib", face="all", order="left-to-right")
    xs = [af.anchors[:, 0].mean() for _, af in info.faces]
    assert crops.shape == (2, 256, 256, 3) and xs[0] < 512 < xs[1]  # numbered from the left
    assert soft.shape == hard.shape == (2, 512, 1024) and soft.dtype == torch.float32
    assert set(hard.unique().tolist()) == {0.0, 1.0} and bool(((soft > 0) <= (hard > 0)).all())
    assert 0.0 <= float(soft.min()) and float(soft.max()) <= 1.0 and bool(((soft > 0) & (soft < 1)).any())
    # each mask sits on its own face, in the photo's frame
    assert hard[0, :, :512].sum() > 0 and hard[0, :, 512:].sum() == 0
    assert hard[1, :, 512:].sum() > 0 and hard[1, :, :512].sum() == 0
    crops2, info2, soft2, _ = align.execute(image=photo, detector="dlib", face="list", face_list="1,0",
                                            order="left-to-right")
    assert torch.equal(crops2, crops.flip(0)) and torch.equal(soft2, soft.flip(0))
    crops3, *_ = align.execute(image=photo, detector="dlib", face="index", index=1, order="left-to-right")
    assert torch.equal(crops3[0], crops[1])
    # stored workflows' values (no order/face_list) still mean what they meant: largest first
    big, *_ = align.execute(image=photo, detector="dlib", face="largest", index=0, size=256, skip_missing=False)
    by_size, *_ = align.execute(image=photo, detector="dlib", face="index", index=0)
    assert torch.equal(big, by_size)
    assert align.validate_inputs(face_list="0, 2") is True and align.validate_inputs(face_list=None) is True
    assert "not a list" in align.validate_inputs(face_list="0,x")
    with pytest.raises(err(host), match="out of range"):
        align.execute(image=photo, detector="dlib", face="list", face_list="0,5")


def test_paste_several_renders_of_one_face(nodes, host, dlib_ok):
    photo = face_image("pastiche_photo.jpg")
    crops, info, soft, _hard = nodes["PasticheAlignFace"].execute(image=photo, detector="dlib", face="largest")
    renders = torch.stack([torch.full((256, 256, 3), v) for v in (0.0, 0.5, 1.0)])  # a 3-style "grid"
    out = nodes["PastichePasteFaceBack"].execute(image=photo, faces=renders, face_info=info)[0]
    assert out.shape == (3,) + tuple(photo.shape[1:])
    outside = soft[0] == 0
    for i in range(3):
        assert torch.equal(out[i][outside], photo[0][outside])  # untouched outside the face mask
    centre = soft[0] > 0.99
    assert [round(float(out[i][centre].mean()), 2) for i in range(3)] == [0.0, 0.5, 1.0]
    two = torch.cat([photo, photo])
    _c, info2, *_ = nodes["PasticheAlignFace"].execute(image=two, detector="dlib", face="largest")
    with pytest.raises(err(host), match="3 face crops for 2 aligned faces"):
        nodes["PastichePasteFaceBack"].execute(image=two, faces=renders, face_info=info2)


# ------------------------------------------------------------------------------------------
# packaging for the Comfy Registry and ComfyUI-Manager
# ------------------------------------------------------------------------------------------
def test_registry_metadata_is_complete():
    import re
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["Icon"] and (comfy["Icon"].startswith("https://") or (ROOT / comfy["Icon"]).is_file())
    # comfy-cli's accepted form; 0.3.48 is the first release with comfy_api.latest
    assert comfy["requires-comfyui"] == ">=0.3.48"
    assert re.match(r"^(>=|==|~=)?\d+\.\d+\.\d+$", comfy["requires-comfyui"])
    for url in (meta["project"].get("urls") or {}).values():  # no placeholder addresses
        assert "example" not in url and "/pastiche/pastiche" not in url, url
    # ComfyUI-Manager installs requirements.txt into ComfyUI's Python: never a torch there
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not [r for r in reqs if re.match(r"torch\b|torchvision\b", r)]
    comfy_section = (ROOT / "README.md").read_text().split("## ComfyUI node pack", 1)[1].split("\n## ", 1)[0]
    assert "pip install -r requirements.txt" in comfy_section
    assert not re.search(r"pip install[^`\n]*torch", comfy_section)  # no torch install command there


def test_registry_package_leaves_out_tests():
    """`comfy node publish` zips the git-tracked files minus .comfyignore's gitwildmatch patterns."""
    patterns = [ln.strip() for ln in (ROOT / ".comfyignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert {"tests/", "benchmarks/"} <= set(patterns)
    assert not any(p.startswith(("nodes", "pastiche_core", "workflows")) for p in patterns)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_has_a_template_thumbnail(path):
    """ComfyUI's template browser shows workflows/<name>.jpg for workflows/<name>.json."""
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file() and thumb.stat().st_size < 100_000
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and min(im.size) >= 128


def test_style_preview_grid(nodes, demo, host):
    """A page of the demo bank (4 styles: one row) on a face, labelled, with its listing."""
    from comfy.utils import events

    node = nodes["PasticheStylePreviewGrid"]
    info = node.GET_NODE_INFO_V1()
    assert info["display_name"] == "Style Preview Grid" and info["output"] == ["IMAGE", "STRING"]
    assert list(info["input"]["required"]) == ["model", "image", "page"]
    before = len(events)
    grid, listing = node.execute(model=demo, image=face_image(), page=0)
    assert grid.shape == (1, 256, 4 * 256, 3) and grid.dtype == torch.float32
    assert listing.splitlines() == [f"{i}: demo_style_{i}" for i in range(4)]
    assert len(events) > before  # progress per generator batch
    band = grid[0, -18:]
    assert (band == 0).float().mean() > 0.5 and (band > 0.8).any()  # the labels
    with pytest.raises(err(host), match=r"page 1 does not exist: the bank has 4 styles on 1 page"):
        node.execute(model=demo, image=face_image(), page=1)
    with pytest.raises(err(host), match="square face crop"):
        node.execute(model=demo, image=face_image()[:, :200], page=0)


def test_loader_lists_official_styles_and_downloads_on_request(nodes, host, monkeypatch, tmp_path):
    """Official styles are listed before they are downloaded; with download_missing on, the
    loader fetches them (from a loopback Hub here) with progress, then loads them."""
    import folder_paths
    from comfy.utils import events

    spec = importlib.util.spec_from_file_location("pastiche_test_download", Path(__file__).parent / "test_download.py")
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    models_mod = sys.modules["pastiche_pack_under_test.nodes.models"]
    loader = nodes["PasticheLoadDualStyleGAN"]
    info = loader.GET_NODE_INFO_V1()["input"]["required"]
    opts = info["style"][1]["options"]
    assert opts[0] == "cartoon" and "anime" in opts and "slamdunk" in opts and opts[-1].startswith("demo")
    assert "not downloaded yet: caricature, anime" in info["style"][1]["tooltip"]
    optional = loader.GET_NODE_INFO_V1()["input"]["optional"]
    assert list(optional) == ["download_missing", "generator"] and optional["download_missing"][1]["default"] is False
    # appended after the two required widgets, the snapshot choice after it
    assert loader.GET_NODE_INFO_V1()["input_order"]["optional"] == ["download_missing", "generator"]

    root = Path(folder_paths.get_folder_paths("dualstylegan")[0])
    with pytest.raises(err(host), match=rf"style 'anime' is not downloaded: anime/generator.pt.* missing in '{root}'. "
                                        r"Turn on 'download_missing'"):
        loader.execute(style="anime")

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # offline: nothing listens there
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(err(host), match=rf"cannot download style 'anime': cannot download from http://127.0.0.1:9 .* "
                                        rf"put them, unchanged, in '{root}'"):
        loader.execute(style="anime", download_missing=True)
    assert not (root / "anime").exists()

    hub = td.Hub(td.make_repo_files(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(models_mod, "load_bundle", lambda style, precision="auto", generator=None: ("loaded", style))
    (root / "encoder.pt").write_bytes(b"the encoder is already here")
    try:
        before = len(events)
        assert loader.execute(style="anime", download_missing=True)[0] == ("loaded", "anime")
        assert sorted(p.name for p in (root / "anime").iterdir()) == ["exstyle_code.npy", "generator.pt",
                                                                      "refined_exstyle_code.npy", "sampler.pt"]
        assert events[-1][1:] == (1000, 1000) and len(events) > before + 3
        assert "anime" in models_mod.find_styles()
        hub.close()  # complete now: no network needed
        assert loader.execute(style="anime", download_missing=True)[0] == ("loaded", "anime")
    finally:
        import shutil

        shutil.rmtree(root / "anime", ignore_errors=True)
        (root / "encoder.pt").unlink(missing_ok=True)


def test_loader_picks_a_numbered_training_snapshot(nodes, host):
    """LoadDualStyleGAN's generator input: 'final' (generator.pt) or a snapshot that training kept
    in the style folder (generator-NNNNNN.pt); the bundle runs the file picked."""
    import shutil

    import folder_paths
    import torch
    from make_model_folder import write_folder
    from pastiche_pack_under_test.nodes import models as node_models

    root = Path(folder_paths.get_folder_paths("dualstylegan")[0])
    before = set(root.iterdir())
    write_folder(root, style="snap_style", bank_size=2)
    style = root / "snap_style"
    try:
        final = torch.load(style / "generator.pt", weights_only=True)
        snap = {"g_ema": {k: (v * 0.5 if k.endswith("conv.weight") else v) for k, v in final["g_ema"].items()}}
        torch.save(snap, style / "generator-000007.pt")
        (style / "generator-pretrain-000007.pt").write_bytes(b"never offered")
        assert node_models.generator_options() == ["final", "generator-000007.pt"]
        schema = nodes["PasticheLoadDualStyleGAN"].GET_NODE_INFO_V1()["input"]["optional"]
        assert list(schema)[-1] == "generator"  # appended: saved workflows keep their widget places
        load = nodes["PasticheLoadDualStyleGAN"]
        key = next(k for k in final["g_ema"] if k.endswith("conv.weight"))

        def weight(bundle):
            return dict(bundle.generator().state_dict())[key].float().cpu()

        picked = load.execute(style="snap_style", precision="fp32", generator="generator-000007.pt")[0]
        assert torch.equal(weight(picked), snap["g_ema"][key].float())
        plain = load.execute(style="snap_style", precision="fp32")[0]
        assert torch.equal(weight(plain), final["g_ema"][key].float())
        assert load.fingerprint_inputs(style="snap_style", generator="generator-000007.pt") != \
            load.fingerprint_inputs(style="snap_style")
        with pytest.raises(err(host), match="no snapshot 'generator-000008.pt'.*it has: generator-000007.pt"):
            load.execute(style="snap_style", precision="fp32", generator="generator-000008.pt")
        with pytest.raises(err(host), match="not a training snapshot name"):
            load.execute(style="snap_style", precision="fp32", generator="../cartoon/generator.pt")
    finally:
        for made in set(root.iterdir()) - before:  # the style and the shared encoder.pt it came with
            shutil.rmtree(made) if made.is_dir() else made.unlink()
