"""Type-check a UI-format (editor) workflow against ``/object_info``-shaped node schemas.

Used by tests/test_nodes.py with the schemas our nodes produce under the stub (plus the core
nodes below) and by tests/test_comfy_real.py with a real server's /object_info.
"""
from __future__ import annotations

import re

NOTE_TYPES = {"Note", "MarkdownNote"}

# --- the frontend's widget rules (comfyui-frontend-package 1.35.9, the one ComfyUI 0.8 pins) ----
#: input types the frontend builds a widget for (its ComfyWidgets registry); any other type is a
#: socket only. An input's ``widgetType`` option, when set, is looked up instead of its type.
FRONTEND_WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "COLOR",
                         "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA"}
#: INT inputs with these names get a "control after generate" widget unless the input says otherwise:
#: ``n.control_after_generate ?? ["seed","noise_seed"].includes(n.name)`` (useIntWidget)
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
#: combo options that make the Comfy.UploadImage extension add an "upload" (IMAGEUPLOAD) input
MEDIA_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
#: kept for callers of the old name: the value-widget types this checker type-checks
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: the core ComfyUI nodes the bundled workflows use, as /object_info describes them (abridged)
CORE_NODES = {
    "LoadImage": {"input": {"required": {"image": ("COMBO", {"image_upload": True, "options": []})}},
                  "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"]},
    "SaveImage": {"input": {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                  "input_order": {"required": ["images", "filename_prefix"]}, "output": [], "output_node": True},
    "PreviewImage": {"input": {"required": {"images": ("IMAGE", {})}}, "input_order": {"required": ["images"]},
                     "output": [], "output_node": True},
    "MaskToImage": {"input": {"required": {"mask": ("MASK", {})}}, "input_order": {"required": ["mask"]},
                    "output": ["IMAGE"]},
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
    """The frontend's test (addInputSocket): a widget when the registry has ``widgetType ?? type``
    and the input is not ``forceInput``; otherwise a socket only."""
    return (opts.get("widgetType") or typ) in FRONTEND_WIDGET_TYPES and not opts.get("forceInput")


def _ordered_specs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of every required/optional input in the order the frontend adds them
    (getOrderedInputSpecs: input_order's required, then its optional, then any others), including
    the "upload" input that Comfy.UploadImage appends for the first media-upload combo."""
    specs: dict[str, tuple] = {}
    for sect in ("required", "optional"):
        for name, spec in (info["input"].get(sect) or {}).items():
            specs[name] = (sect, *_spec(spec))
    order = info.get("input_order")
    if order:
        names = [n for n in order.get("required", []) if specs.get(n, ("",))[0] == "required"]
        names += [n for n in order.get("optional", []) if specs.get(n, ("",))[0] == "optional"]
        names += [n for n in specs if n not in names]
    else:
        names = list(specs)
    out = [(n, specs[n][1], specs[n][2]) for n in names]
    for name, (sect, typ, opts) in specs.items():
        if sect == "required" and typ == "COMBO" and any(opts.get(f) is True for f in MEDIA_UPLOAD_FLAGS):
            out.append(("upload", "IMAGEUPLOAD", dict(opts, imageInputName=name)))
            break
    return out


def frontend_widgets(info: dict) -> list[tuple[str, str, dict]]:
    """The widgets the frontend builds for a node, in ``widgets_values`` order: (name, kind, options)
    where kind is the input type, ``CONTROL`` (control after generate), ``FILTER`` (a combo control's
    filter text) or ``IMAGEUPLOAD``. The rules, from the 1.35.9 bundle:

    * INT: a control widget when ``control_after_generate ?? name in ("seed", "noise_seed")`` is
      truthy (useIntWidget) -- so an INT named seed that declares nothing gets one;
    * FLOAT: a control widget when ``control_after_generate`` is truthy (useFloatWidget);
    * COMBO: when ``control_after_generate`` is truthy, a control widget and a filter-list text
      widget (addComboWidget -> addValueControlWidgets);
    * the control and filter widgets are left out of the API prompt (``serialize: false`` option)
      but stored in ``widgets_values`` like any widget.
    """
    out = []
    for name, typ, opts in _ordered_specs(info):
        if not _is_widget(typ, opts):
            continue
        out.append((name, typ, opts))
        cag = opts.get("control_after_generate")
        if typ == "INT" and (cag if cag is not None else name in SEED_NAMES):
            out.append((name + " (control)", "CONTROL", {}))
        elif typ == "FLOAT" and cag:
            out.append((name + " (control)", "CONTROL", {}))
        elif typ == "COMBO" and cag:
            out.append((name + " (control)", "CONTROL", {"combo": True}))
            out.append((name + " (filter)", "FILTER", {}))
    return out


_VALUE_OK = {
    "INT": lambda v, o: isinstance(v, int) and not isinstance(v, bool),
    "FLOAT": lambda v, o: isinstance(v, (int, float)) and not isinstance(v, bool),
    "STRING": lambda v, o: isinstance(v, str), "TEXTAREA": lambda v, o: isinstance(v, str),
    "MARKDOWN": lambda v, o: isinstance(v, str), "BOOLEAN": lambda v, o: isinstance(v, bool),
    "COMBO": lambda v, o: isinstance(v, (str, int, float)) and not isinstance(v, bool),
    "CONTROL": lambda v, o: v in CONTROL_VALUES + (("increment-wrap",) if o.get("combo") else ()),
    "FILTER": lambda v, o: isinstance(v, str),
}


def check_workflow(wf: dict, object_info: dict, *, check_combos: set[str] | None = None) -> list[str]:
    """Return a list of problems (empty = fine). ``check_combos``: node types whose combo widget
    values must be among the schema's options (others may name files that exist only at run time)."""
    problems: list[str] = []
    # the frontend validates a loaded workflow with zod (id: z.string().uuid().optional()) and shows
    # a sticky "Invalid workflow against zod schema" warning for any other id
    if "id" in wf and not (isinstance(wf["id"], str) and UUID_RE.match(wf["id"])):
        problems.append(f"workflow id {wf['id']!r} is not a UUID")
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
        # widgets: exactly the ones the frontend builds, in its order, each value of its kind
        wv = n.get("widgets_values") or []
        expected = frontend_widgets(info)
        if len(wv) != len(expected):
            problems.append(f"node {n['id']} ({t}): {len(wv)} widget values for {len(expected)} widgets "
                            f"{[e[0] for e in expected]}")
            continue
        for value, (name, typ, opts) in zip(wv, expected):
            check = _VALUE_OK.get(typ)
            if check is not None and not check(value, opts):
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
        values = dict(zip([w[0] for w in frontend_widgets(info)], n.get("widgets_values") or []))
        ui_inputs = {i["name"]: i for i in n.get("inputs") or []}
        inputs = {}
        for name, typ, opts in _ordered_specs(info):
            # graphToPrompt: every widget whose options do not say serialize: false (the control,
            # filter and upload widgets do), then the links, which win over a widget value
            if _is_widget(typ, opts) and typ != "IMAGEUPLOAD" and name in values:
                value = values[name]
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
            ui = ui_inputs.get(name)
            if ui is not None and ui.get("link") is not None:
                ln = links[ui["link"]]
                inputs[name] = [str(ln[1]), ln[2]]
        prompt[str(nid)] = {"class_type": t, "inputs": inputs}
    return prompt
