"""Type-check a UI-format (editor) workflow against ``/object_info``-shaped node schemas.

Used by tests/test_nodes.py with the schemas our nodes produce under the stub (plus the core
nodes below) and by tests/test_comfy_real.py with a real server's /object_info.
"""
from __future__ import annotations

NOTE_TYPES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

#: the core ComfyUI nodes the bundled workflows use, as /object_info describes them (abridged)
CORE_NODES = {
    "LoadImage": {"input": {"required": {"image": ("COMBO", {"image_upload": True, "options": []})}},
                  "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"]},
    "SaveImage": {"input": {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                  "input_order": {"required": ["images", "filename_prefix"]}, "output": [], "output_node": True},
    "PreviewImage": {"input": {"required": {"images": ("IMAGE", {})}}, "input_order": {"required": ["images"]},
                     "output": [], "output_node": True},
    "ImageBatch": {"input": {"required": {"image1": ("IMAGE", {}), "image2": ("IMAGE", {})}},
                   "input_order": {"required": ["image1", "image2"]}, "output": ["IMAGE"]},
}


def _spec(spec):
    typ = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(typ, list):
        opts = dict(opts, options=typ)
        typ = "COMBO"
    return typ, opts


def _is_widget(typ, opts) -> bool:
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def check_workflow(wf: dict, object_info: dict, *, check_combos: set[str] | None = None) -> list[str]:
    """Return a list of problems (empty = fine). ``check_combos``: node types whose combo widget
    values must be among the schema's options (others may name files that exist only at run time)."""
    problems: list[str] = []
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    if not any(n.get("type") in NOTE_TYPES for n in nodes.values()):
        problems.append("no note node explaining the workflow")
    for n in nodes.values():
        t = n.get("type")
        if t in NOTE_TYPES:
            if not (n.get("widgets_values") or [""])[0].strip():
                problems.append(f"note node {n['id']} is empty")
            continue
        info = object_info.get(t)
        if info is None:
            problems.append(f"node {n['id']}: unknown type {t!r}")
            continue
        specs = {}
        for sect in ("required", "optional"):
            specs.update(info["input"].get(sect) or {})
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        names = list(order.get("required", [])) + list(order.get("optional", []))
        ui_inputs = {i["name"]: i for i in n.get("inputs") or []}
        for name in ui_inputs:
            if name not in specs:
                problems.append(f"node {n['id']} ({t}): input {name!r} is not in the schema")
        # sockets: required ones linked, types agree
        for name in order.get("required", []):
            typ, opts = _spec(specs[name])
            if not _is_widget(typ, opts):
                ui = ui_inputs.get(name)
                if ui is None or ui.get("link") is None:
                    problems.append(f"node {n['id']} ({t}): required input {name!r} ({typ}) is not connected")
        # widgets: count and values
        wv = n.get("widgets_values") or []
        expected = []
        for name in names:
            typ, opts = _spec(specs[name])
            if not _is_widget(typ, opts):
                continue
            expected.append((name, typ, opts))
            if opts.get("control_after_generate"):
                expected.append((name + " (control)", "CONTROL", {}))
            if opts.get("image_upload"):
                expected.append((name + " (upload)", "UPLOAD", {}))
        if len(wv) != len(expected):
            problems.append(f"node {n['id']} ({t}): {len(wv)} widget values for {len(expected)} widgets "
                            f"{[e[0] for e in expected]}")
            continue
        for value, (name, typ, opts) in zip(wv, expected):
            ok = {"INT": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                  "STRING": lambda v: isinstance(v, str), "BOOLEAN": lambda v: isinstance(v, bool),
                  "COMBO": lambda v: isinstance(v, (str, int, float)),
                  "CONTROL": lambda v: v in ("fixed", "increment", "decrement", "randomize"),
                  "UPLOAD": lambda v: True}[typ](value)
            if not ok:
                problems.append(f"node {n['id']} ({t}): widget {name!r} = {value!r} is not a {typ}")
                continue
            if typ in ("INT", "FLOAT"):
                if opts.get("min") is not None and value < opts["min"] or opts.get("max") is not None and value > opts["max"]:
                    problems.append(f"node {n['id']} ({t}): widget {name!r} = {value!r} outside [{opts.get('min')}, {opts.get('max')}]")
            if typ == "COMBO" and check_combos is not None and t in check_combos and value not in opts.get("options", []):
                problems.append(f"node {n['id']} ({t}): {name!r} = {value!r} is not one of {opts.get('options')}")
    # links
    for ln in wf.get("links", []):
        lid, oid, oslot, tid, tslot, ltype = ln[:6] if isinstance(ln, list) else (
            ln["id"], ln["origin_id"], ln["origin_slot"], ln["target_id"], ln["target_slot"], ln.get("type"))
        src, dst = nodes.get(oid), nodes.get(tid)
        if src is None or dst is None:
            problems.append(f"link {lid}: dangling ({oid} -> {tid})")
            continue
        sinfo, dinfo = object_info.get(src["type"]), object_info.get(dst["type"])
        if sinfo is None or dinfo is None:
            continue
        if oslot >= len(sinfo["output"]):
            problems.append(f"link {lid}: {src['type']} has no output {oslot}")
            continue
        otype = sinfo["output"][oslot]
        dname = (dst.get("inputs") or [])[tslot]["name"] if tslot < len(dst.get("inputs") or []) else None
        dspecs = {}
        for sect in ("required", "optional"):
            dspecs.update(dinfo["input"].get(sect) or {})
        if dname not in dspecs:
            problems.append(f"link {lid}: {dst['type']} has no input slot {tslot} ({dname})")
            continue
        itype, _ = _spec(dspecs[dname])
        if (dst["inputs"][tslot].get("link")) != lid:
            problems.append(f"link {lid}: target input {dname!r} of node {tid} does not point back at the link")
        if not (otype == itype == ltype or "*" in (otype, itype)):
            problems.append(f"link {lid}: {src['type']}[{oslot}] ({otype}) -> {dst['type']}.{dname} ({itype}), "
                            f"link says {ltype}")
        if lid not in (src["outputs"][oslot].get("links") or []):
            problems.append(f"link {lid}: output {oslot} of node {oid} does not list the link")
    return problems


def ui_to_api(wf: dict, object_info: dict) -> dict:
    """A UI-format workflow -> an API prompt ``{id: {"class_type", "inputs"}}`` (note nodes dropped).
    Handles the node kinds the bundled workflows use (no reroutes, primitives, groups or bypass)."""
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    links = {ln[0]: ln for ln in wf.get("links", [])}
    prompt = {}
    for nid, n in nodes.items():
        t = n["type"]
        if t in NOTE_TYPES or n.get("mode", 0) in (2, 4):
            continue
        info = object_info[t]
        specs = {}
        for sect in ("required", "optional"):
            specs.update(info["input"].get(sect) or {})
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        wv = list(n.get("widgets_values") or [])
        ui_inputs = {i["name"]: i for i in n.get("inputs") or []}
        inputs = {}
        for name in list(order.get("required", [])) + list(order.get("optional", [])):
            typ, opts = _spec(specs[name])
            if _is_widget(typ, opts):
                inputs[name] = wv.pop(0)
                if opts.get("control_after_generate") or opts.get("image_upload"):
                    wv.pop(0)
            ui = ui_inputs.get(name)
            if ui is not None and ui.get("link") is not None:
                ln = links[ui["link"]]
                inputs[name] = [str(ln[1]), ln[2]]
        prompt[str(nid)] = {"class_type": t, "inputs": inputs}
    return prompt
