"""Stand-in for ``comfy_api.latest.io``: the V3 node schema classes the pack uses.

Written from the real API's documented constructor signatures; ``Schema.get_v1_info`` returns
the same dict layout as the server's ``/object_info`` entry for a node, so tests can check
schemas and type-check workflows without ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class _InputBase:
    io_type = "*"

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None,
                 raw_link=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}
        self.raw_link = raw_link

    def as_dict(self) -> dict:
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy, "rawLink": self.raw_link}) | _prune(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type


class _WidgetInput(_InputBase):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "widgetType": self.widget_type, "forceInput": self.force_input})


class _OutputBase:
    io_type = "*"

    def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, is_output_list


def _make_type(io_type: str, input_base=_InputBase):
    class _T:
        pass
    _T.io_type = io_type
    _T.Input = type("Input", (input_base,), {"io_type": io_type})
    _T.Output = type("Output", (_OutputBase,), {"io_type": io_type})
    return _T


def Custom(io_type: str):
    return _make_type(io_type)


Image = _make_type("IMAGE")
Mask = _make_type("MASK")
Latent = _make_type("LATENT")
Model = _make_type("MODEL")


class _BooleanInput(_WidgetInput):
    io_type = "BOOLEAN"

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, label_on=None,
                 label_off=None, socketless=None, force_input=None, extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.label_on, self.label_off = label_on, label_off

    def as_dict(self):
        return super().as_dict() | _prune({"label_on": self.label_on, "label_off": self.label_off})


class _IntInput(_WidgetInput):
    io_type = "INT"

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None, extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate
        self.display_mode = display_mode

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                           "control_after_generate": self.control_after_generate,
                                           "display": getattr(self.display_mode, "value", self.display_mode)})


class _FloatInput(_WidgetInput):
    io_type = "FLOAT"

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None,
                 extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                           "round": self.round, "display": self.display_mode})


class _StringInput(_WidgetInput):
    io_type = "STRING"

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None,
                 extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

    def as_dict(self):
        return super().as_dict() | _prune({"multiline": self.multiline, "placeholder": self.placeholder,
                                           "dynamicPrompts": self.dynamic_prompts})


class _ComboInput(_WidgetInput):
    io_type = "COMBO"

    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None,
                 extra_dict=None, raw_link=None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        if isinstance(default, Enum):
            default = default.value
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None, extra_dict,
                         raw_link)
        self.options, self.control_after_generate = options, control_after_generate

    def as_dict(self):
        return super().as_dict() | _prune({"multiselect": False, "options": self.options,
                                           "control_after_generate": self.control_after_generate})


Boolean = _make_type("BOOLEAN", _BooleanInput)
Int = _make_type("INT", _IntInput)
Float = _make_type("FLOAT", _FloatInput)
String = _make_type("STRING", _StringInput)
Combo = _make_type("COMBO", _ComboInput)


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class HiddenHolder:
    unique_id: Any = None
    prompt: Any = None
    extra_pnginfo: Any = None


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        ids = [i.id for i in self.inputs]
        oids = [o.id for o in self.outputs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Input ids must be unique: {ids}")
        if len(set(oids)) != len(oids):
            raise ValueError(f"Output ids must be unique: {oids}")

    def finalize(self) -> None:
        if self.is_output_node:
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, o in enumerate(self.outputs):
            if o.id is None:
                o.id = f"_{i}_{o.io_type}_"

    def get_v1_info(self, cls=None) -> dict:
        inp: dict = {"required": {}}
        for i in self.inputs:
            d = i.as_dict()
            d.pop("optional", None)
            inp.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), d)
        for h in self.hidden:
            inp.setdefault("hidden", {})[h.name] = (h.value,)
        return {"input": inp, "input_order": {k: list(v) for k, v in inp.items()},
                "output": [o.io_type for o in self.outputs],
                "output_is_list": [o.is_output_list for o in self.outputs],
                "output_name": [o.display_name or o.io_type for o in self.outputs],
                "output_tooltips": [o.tooltip for o in self.outputs],
                "name": self.node_id, "display_name": self.display_name, "category": self.category,
                "description": self.description, "output_node": self.is_output_node,
                "deprecated": self.is_deprecated, "experimental": self.is_experimental,
                "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", None) or "custom_nodes.stub"}


class NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    hidden: HiddenHolder = HiddenHolder()
    RELATIVE_PYTHON_MODULE = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return cls.GET_SCHEMA().get_v1_info(cls)
