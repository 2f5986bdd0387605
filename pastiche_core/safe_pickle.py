"""Bounded, validated reading of pickled weights: ``.pt``/``.pth`` (zip and legacy), ``.npy`` banks,
and safetensors headers.

Why not just ``torch.load(weights_only=True)`` / an allow-listed ``pickle.Unpickler``? Both
check *which* globals a pickle calls, not *how much* it builds: a 500-byte pickle of nested
tuples made of memo references is tiny in memory but explodes in anything that walks it
(``repr`` in an error message, a recursive check), and tensor/array sizes come straight from
the file. weights_only loading is also exploitable below torch 2.6 and can corrupt memory
below 2.10, and ComfyUI brings its own torch.

So every file is first *walked*: :class:`_Machine` interprets the pickle's opcodes (from
``pickletools.genops``) on a symbolic stack with caps on size, opcode count, nesting depth
and the expanded object count (memo references counted every time they are used, which is
what catches the memo-reuse bombs a depth cap misses). Only the globals of the file kind
are accepted, each called only with the argument shapes real files have. Tensors become
:class:`TensorMeta` (dtype, shape, stride, offset, storage key), checked against the size of
their storage in the zip before anything is read, so a caller can compare shapes with the
model a config describes before a single weight is allocated.

Then the data is read: on torch >= 2.10 with ``torch.load(weights_only=True)`` (``mmap``
for zip files), on older torch (or with ``PASTICHE_OWN_LOADER=1``) by the same machine
building the objects itself, storages read straight from the zip entries (or from the
legacy stream) without ``torch.load``.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, brief, short

# --------------------------------------------------------------------------------------------
# Limits. Real files are far inside them: the pSp encoder's data.pkl (792 tensors) is ~100 KB
# and expands to ~20k objects; a training state with Adam moments ~50k objects.
# --------------------------------------------------------------------------------------------
MAX_PICKLE_BYTES = 64 << 20
MAX_OPS = 4_000_000
MAX_DEPTH = 48
MAX_EXPANDED = 3_000_000
MAX_ZIP_ENTRIES = 200_000
MAX_TENSOR_DIMS = 8
MAX_SAFETENSORS_HEADER = 64 << 20
OWN_LOADER_ENV = "PASTICHE_OWN_LOADER"
TORCH_SAFE_VERSION = (2, 10)  # first release without CVE-2025-32434 and CVE-2026-24747

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_NPY_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "O8"}

# roles of the allowed globals, per file kind
TORCH_GLOBALS = {
    ("collections", "OrderedDict"): "odict",
    ("torch._utils", "_rebuild_tensor_v2"): "tensor",
    ("torch._utils", "_rebuild_tensor"): "tensor",
    ("torch._utils", "_rebuild_parameter"): "parameter",
    ("_codecs", "encode"): "bytes",  # protocol 2 spells bytes as _codecs.encode(str, 'latin1')
    **{("torch", name): "storage" for name in _STORAGE_DTYPES},
}
NAMESPACE_GLOBALS = {("argparse", "Namespace"): "namespace"}  # the 'args' of official training files
NPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",  # numpy 1.x writers (released banks)
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",  # numpy 2.x writers
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
}


def torch_is_safe(version: str | None = None) -> bool:
    """Whether this torch's weights-only unpickler can be trusted (>= 2.10)."""
    m = re.match(r"(\d+)\.(\d+)", version or torch.__version__)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= TORCH_SAFE_VERSION


def own_loader_forced() -> bool:
    return os.environ.get(OWN_LOADER_ENV, "").strip() not in ("", "0")


class _Refused(Exception):
    """Internal: the walk stopped; the message says why (without the file name)."""


@dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


class TensorMeta:
    """A tensor as the pickle describes it, before any data is read."""

    __slots__ = ("storage", "offset", "shape", "stride", "requires_grad")

    def __init__(self, storage: StorageRef, offset: int, shape: tuple, stride: tuple, requires_grad: bool = False):
        self.storage, self.offset, self.requires_grad = storage, offset, requires_grad
        self.shape, self.stride = torch.Size(shape), tuple(stride)

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def __repr__(self) -> str:
        return f"TensorMeta({list(self.shape)}, {self.dtype})"


class _Node:
    """A stack/memo slot: the value plus its expanded size and nesting depth, and whether it is
    already inside another object (then it must not change any more, see ``_mutable``)."""

    __slots__ = ("v", "w", "d", "used")

    def __init__(self, v, w: int = 1, d: int = 0):
        self.v, self.w, self.d, self.used = v, w, d, False


class _Global:
    __slots__ = ("role", "name")

    def __init__(self, role: str, name: str):
        self.role, self.name = role, name


class _NamespaceStub(dict):
    """argparse.Namespace while walking: its attributes arrive by BUILD."""


_PLAIN_KEYS = (str, int, float, bool, type(None), bytes)


def _check_ints(value, what: str) -> tuple:
    if not isinstance(value, tuple) or len(value) > MAX_TENSOR_DIMS:
        raise _Refused(f"{what} is not a tuple of at most {MAX_TENSOR_DIMS} integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 48:
            raise _Refused(f"{what} {brief(value, 80)} has an entry that is not a small non-negative integer")
    return value


def _check_layout(size: tuple, stride: tuple, offset: int, numel: int, what: str) -> None:
    """The view must lie inside its storage, without zero strides or overlapping elements."""
    if len(size) != len(stride):
        raise _Refused(f"{what}: size {list(size)} and stride {list(stride)} differ in length")
    count = 1
    for s in size:
        count *= s
    if count == 0:
        return
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    if extent > numel:
        raise _Refused(f"{what}: a {list(size)} view (stride {list(stride)}, offset {offset}) reaches element "
                       f"{extent - 1} of a storage of {numel}")
    span = 1  # dims ordered by stride: each must step over everything inside the smaller ones
    for s, st in sorted(((s, st) for s, st in zip(size, stride) if s > 1), key=lambda p: p[1]):
        if st < span:
            raise _Refused(f"{what}: stride {list(stride)} makes elements overlap (zero or repeated strides are "
                           f"not in real checkpoints)")
        span = st * s


class _Machine:
    """Interpret one pickle's opcodes with caps, building only the allowed structures.

    roles: ``{(module, name): role}`` of the accepted globals.
    storage: ``callable(key, dtype, numel) -> StorageRef or torch storage`` for persistent ids
    (None: the pickle must not have any). tensor: ``callable(storage, offset, size, stride,
    requires_grad)`` -> the value a ``_rebuild_tensor`` call stands for.
    """

    def __init__(self, roles: dict, storage=None, tensor=None, real_objects: bool = False):
        self.roles, self.storage, self.tensor, self.real = roles, storage, tensor, real_objects
        self.unbuilt: set[int] = set()  # numpy arrays made by _reconstruct, not yet given their state
        self.keep: list = []             # keeps ids in `unbuilt` from being reused

    # -- helpers --------------------------------------------------------------------------
    def _push(self, v, w=1, d=0):
        if d > MAX_DEPTH:
            raise _Refused(f"objects are nested more than {MAX_DEPTH} deep")
        self.total += w
        if self.total > MAX_EXPANDED:
            raise _Refused(f"it expands to more than {MAX_EXPANDED:,} objects (memo references counted each time "
                           f"they are used)")
        self.stack.append(_Node(v, w, d))

    def _pop_mark(self) -> list:
        if not self.marks:
            raise _Refused("MARK missing")
        at = self.marks.pop()
        items, self.stack[at:] = self.stack[at:], []
        return items

    def _pop(self) -> _Node:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused("stack underflow")
        return self.stack.pop()

    def _container(self, node: _Node, kind) -> None:
        if not isinstance(node.v, kind) or isinstance(node.v, _NamespaceStub):
            raise _Refused(f"an item is added to a {type(node.v).__name__}, not a {kind.__name__}")

    @staticmethod
    def _mutable(node: _Node) -> None:
        # Real pickles finish every container before they put it into another one. Filling one
        # afterwards (through a memo reference) would dodge the size and depth counts, which are
        # taken when an object is placed, and is how recursive and exponential structures are built.
        if node.used:
            raise _Refused("a container is changed after it was placed in another object "
                           "(recursive or back-filled structures are not in real files)")

    def _grow(self, node: _Node, children) -> None:
        for c in children:
            c.used = True
            node.w += c.w
            node.d = max(node.d, c.d + 1)
        if node.d > MAX_DEPTH:
            raise _Refused(f"objects are nested more than {MAX_DEPTH} deep")

    def _setitems(self, target: _Node, items: list) -> None:
        self._container(target, dict)
        self._mutable(target)
        if len(items) % 2:
            raise _Refused("odd number of dict items")
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k.v, _PLAIN_KEYS):
                raise _Refused(f"a dict key is a {type(k.v).__name__}")
            target.v[k.v] = v.v
        self._grow(target, items)

    # -- globals and calls ------------------------------------------------------------------
    def _global(self, module: str, name: str) -> _Global:
        role = self.roles.get((module, name))
        if role is None:
            raise _Refused(f"it references the global '{short(module, 60)}.{short(name, 60)}', which this kind of "
                           f"file never contains; refusing to unpickle it")
        return _Global(role, f"{module}.{name}")

    def _reduce(self, fn, args):
        if not isinstance(fn, _Global):
            raise _Refused(f"it calls a {type(fn).__name__}")
        if not isinstance(args, tuple):
            raise _Refused(f"{fn.name} is called with a {type(args).__name__}")
        role = fn.role
        if role == "odict":
            if args:
                raise _Refused("OrderedDict is called with arguments")
            return collections.OrderedDict()
        if role == "bytes":
            if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
                raise _Refused("_codecs.encode is called with arguments other than (str, 'latin1')")
            return args[0].encode("latin1")
        if role == "tensor":
            if len(args) not in (4, 6, 7):
                raise _Refused(f"{fn.name} is called with {len(args)} arguments")
            storage, offset, size, stride = args[:4]
            if not isinstance(storage, (StorageRef, _RealStorage)):
                raise _Refused(f"{fn.name}'s first argument is a {type(storage).__name__}, not a storage")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise _Refused(f"tensor storage offset {brief(offset, 40)} is not a non-negative integer")
            size, stride = _check_ints(size, "tensor size"), _check_ints(stride, "tensor stride")
            requires_grad = False
            if len(args) >= 6:
                requires_grad, hooks = args[4], args[5]
                if not isinstance(requires_grad, bool) or not isinstance(hooks, dict) or hooks:
                    raise _Refused("tensor with backward hooks or a non-bool requires_grad")
                if len(args) == 7 and not (args[6] is None or (isinstance(args[6], dict) and not args[6])):
                    raise _Refused("tensor with extra metadata")
            _check_layout(size, stride, offset, storage.numel, f"tensor in storage '{storage.key}'")
            return self.tensor(storage, offset, size, stride, requires_grad)
        if role == "parameter":
            if len(args) != 3 or not isinstance(args[0], (TensorMeta, torch.Tensor)) or args[2]:
                raise _Refused("_rebuild_parameter is called with unexpected arguments")
            return args[0]
        if role == "reconstruct":
            # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') + BUILD(state); any
            # other shape would allocate (uninitialised) memory before the state is checked
            if (len(args) != 3 or not (isinstance(args[0], _Global) and args[0].role == "ndarray")
                    or args[1] != (0,) or args[2] not in (b"b", "b")):
                raise _Refused("numpy's _reconstruct is called with arguments other than (ndarray, (0,), b'b')")
            arr = np.ndarray((0,), dtype=np.int8)
            self.unbuilt.add(id(arr))
            self.keep.append(arr)
            return arr
        if role == "dtype":
            if len(args) != 3 or not isinstance(args[0], str) or args[0] not in _NPY_DTYPES:
                raise _Refused(f"numpy dtype {brief(args[:1], 40)} is not a plain numeric or object dtype")
            return np.dtype(args[0])
        raise _Refused(f"it calls {fn.name}, which real files never call")

    def _build(self, target, state) -> None:
        if isinstance(target, np.ndarray) and id(target) in self.unbuilt:
            self._build_array(target, state)
            self.unbuilt.discard(id(target))
        elif isinstance(target, np.dtype):
            if (not isinstance(state, tuple) or len(state) not in (8, 9) or state[1] not in ("<", "|", "=")):
                raise _Refused("numpy dtype state is not a little-endian plain dtype")
        elif isinstance(target, (collections.OrderedDict, _NamespaceStub)):
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise _Refused(f"{type(target).__name__} attributes are not a dict with str keys")
            if isinstance(target, _NamespaceStub):
                target.update(state)
            elif self.real:
                for k, v in state.items():
                    setattr(target, k, v)
        else:
            raise _Refused(f"it sets the state of a {type(target).__name__}")

    def _build_array(self, arr: np.ndarray, state) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise _Refused("numpy array state is not (1, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, data = state
        _check_ints(shape, "numpy array shape")
        if not isinstance(dtype, np.dtype) or not isinstance(fortran, bool):
            raise _Refused("numpy array state has no plain dtype")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if dtype.hasobject:
            # only the 0-d holder np.save wraps the dict in; object arrays of arrays are not banks
            if shape != () or not isinstance(data, list) or len(data) != 1:
                raise _Refused("object array other than the 0-d holder of a dict")
        elif not isinstance(data, bytes) or len(data) != count * dtype.itemsize:
            # the data must be exactly the array: no stride tricks, no claimed size beyond the file
            got = len(data) if isinstance(data, bytes) else type(data).__name__
            raise _Refused(f"numpy array of shape {list(shape)} {dtype} comes with {got} bytes of data, "
                           f"not {count * dtype.itemsize}")
        arr.__setstate__((1, shape, dtype, fortran, data))

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stream, limit: int = MAX_PICKLE_BYTES):
        self.stack: list[_Node] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Node] = {}
        self.total = 0
        ops = 0
        for op, arg, pos in pickletools.genops(stream):
            ops += 1
            if ops > MAX_OPS or (pos or 0) > limit:
                raise _Refused(f"the pickle is larger than the limit ({MAX_OPS:,} opcodes, {limit:,} bytes)")
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(self.stack) != 1 or self.marks:
                    raise _Refused("the pickle ends with a malformed stack")
                if self.unbuilt:
                    raise _Refused("a numpy array is created without its data (_reconstruct without BUILD: "
                                   "uninitialised memory)")
                return self.stack[0].v
            if name == "MARK":
                self.marks.append(len(self.stack))
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                self._push({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT"):
                self._push(arg)
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE",
                          "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
                self._push(arg)
            elif name in ("BINSTRING", "SHORT_BINSTRING", "STRING"):
                self._push(arg.encode("latin1") if isinstance(arg, str) else arg)  # py2 str: numpy 1.x data
            elif name == "EMPTY_DICT":
                self._push({})
            elif name == "EMPTY_LIST":
                self._push([])
            elif name == "EMPTY_TUPLE":
                self._push(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3", "TUPLE"):
                if name == "TUPLE":
                    items = self._pop_mark()
                else:
                    n = int(name[-1])
                    items = [self._pop() for _ in range(n)][::-1]
                node = _Node(tuple(c.v for c in items), 1, 0)
                self._grow(node, items)
                self._push(node.v, node.w, node.d)
            elif name == "LIST":
                items = self._pop_mark()
                node = _Node([c.v for c in items])
                self._grow(node, items)
                self._push(node.v, node.w, node.d)
            elif name == "DICT":
                items = self._pop_mark()
                node = _Node({})
                self._setitems(node, items)
                self._push(node.v, node.w, node.d)
            elif name == "APPEND":
                item = self._pop()
                target = self._pop()
                self._container(target, list)
                self._mutable(target)
                target.v.append(item.v)
                self._grow(target, [item])
                self.stack.append(target)
            elif name == "APPENDS":
                items = self._pop_mark()
                target = self._pop()
                self._container(target, list)
                self._mutable(target)
                target.v.extend(c.v for c in items)
                self._grow(target, items)
                self.stack.append(target)
            elif name == "SETITEM":
                v, k = self._pop(), self._pop()
                target = self._pop()
                self._setitems(target, [k, v])
                self.stack.append(target)
            elif name == "SETITEMS":
                items = self._pop_mark()
                target = self._pop()
                self._setitems(target, items)
                self.stack.append(target)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                if not self.stack:
                    raise _Refused("memo store with an empty stack")
                self.memo[len(self.memo) if name == "MEMOIZE" else int(arg)] = self.stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                node = self.memo.get(int(arg))
                if node is None:
                    raise _Refused(f"memo entry {arg} is read before it is written")
                self._push(node.v, node.w, node.d)
                self.stack[-1] = node  # same object: later changes to a container reach every user
            elif name == "POP":
                self._pop()
            elif name == "POP_MARK":
                self._pop_mark()
            elif name == "DUP":
                node = self._pop()
                self.stack.append(node)
                self._push(node.v, node.w, node.d)
                self.stack[-1] = node
            elif name == "GLOBAL":
                module, _, gname = arg.partition(" ")
                self._push(self._global(module, gname))
            elif name == "STACK_GLOBAL":
                gname, module = self._pop().v, self._pop().v
                if not isinstance(module, str) or not isinstance(gname, str):
                    raise _Refused("STACK_GLOBAL with non-string names")
                self._push(self._global(module, gname))
            elif name == "REDUCE":
                args, fn = self._pop(), self._pop()
                args.used = True
                value = self._reduce(fn.v, args.v)
                self._push(value, args.w + 1, args.d + 1)
            elif name == "NEWOBJ":
                args, cls = self._pop(), self._pop()
                if not (isinstance(cls.v, _Global) and cls.v.role == "namespace") or args.v != ():
                    raise _Refused(f"it creates an object of {getattr(cls.v, 'name', type(cls.v).__name__)}")
                self._push(_NamespaceStub())
            elif name == "BUILD":
                state = self._pop()
                target = self._pop()
                self._mutable(target)
                self._build(target.v, state.v)
                self._grow(target, [state])
                self.stack.append(target)
            elif name in ("BINPERSID", "PERSID"):
                pid = self._pop().v if name == "BINPERSID" else arg
                self._push(self._persistent(pid))
            else:
                raise _Refused(f"it uses the pickle opcode {name}, which real files never contain")
        raise _Refused("the pickle ends without STOP (truncated)")

    def _persistent(self, pid):
        if self.storage is None:
            raise _Refused("it has a persistent id, which this kind of file never contains")
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not (isinstance(pid[1], _Global) and pid[1].role == "storage")):
            raise _Refused(f"persistent id {brief(pid, 80)} is not a tensor storage")
        _, kind, key, location, numel = pid[:5]
        if len(pid) == 6 and pid[5] is not None:
            raise _Refused("storage views (a pre-1.0 torch feature) are not supported")
        if not isinstance(key, str) or not isinstance(location, str) or isinstance(numel, bool) \
                or not isinstance(numel, int) or numel < 0:
            raise _Refused(f"persistent id {brief(pid, 80)} is malformed")
        return self.storage(key, _STORAGE_DTYPES[kind.name.split(".")[-1]], numel)


class _RealStorage:
    """A storage already read (own reader): a flat tensor of ``numel`` elements."""

    __slots__ = ("key", "numel", "flat")

    def __init__(self, key: str, flat: torch.Tensor):
        self.key, self.flat, self.numel = key, flat, flat.numel()


def _real_tensor(storage: _RealStorage, offset, size, stride, requires_grad):
    t = torch.as_strided(storage.flat, size, stride, offset)
    return t.requires_grad_(requires_grad) if requires_grad and t.is_floating_point() else t


def _meta_tensor(storage, offset, size, stride, requires_grad):
    return TensorMeta(storage, offset, size, stride, requires_grad)


def _finish_objects(obj, depth: int = 0):
    """Namespace stubs -> argparse.Namespace (only the own reader returns them)."""
    if isinstance(obj, _NamespaceStub):
        return argparse.Namespace(**{k: _finish_objects(v, depth + 1) for k, v in obj.items()})
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)):
                obj[k] = _finish_objects(v, depth + 1)
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                obj[i] = _finish_objects(v, depth + 1)
        return obj
    return obj


# --------------------------------------------------------------------------------------------
# .pt / .pth files
# --------------------------------------------------------------------------------------------
def _fail(path: Path, why: str, expected: str):
    raise CheckpointError(f"'{short(str(path), 200)}' {why}; expected {expected}")


class _TorchFile:
    """The layout of a ``.pt`` file: zip (torch >= 1.6) or the legacy pickle stream."""

    def __init__(self, path: Path, expected: str):
        self.path, self.expected = path, expected
        self.size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(b"PK\x03\x04"):
            self.format = "zip"
            self._open_zip()
        elif head[:1] == b"\x80":
            self.format = "legacy"
            with open(path, "rb") as fh:
                self.head = fh.read(min(self.size, MAX_PICKLE_BYTES))
        else:
            _fail(path, f"is not a PyTorch checkpoint ({self.size} bytes, neither a zip nor a pickle)", expected)

    def _open_zip(self) -> None:
        try:
            zf = zipfile.ZipFile(self.path)
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            _fail(self.path, f"is truncated or corrupt ({self.size} bytes; {short(str(exc), 120)})", self.expected)
        if len(infos) > MAX_ZIP_ENTRIES:
            _fail(self.path, f"has {len(infos):,} zip entries", self.expected)
        pkl = [i for i in infos if re.fullmatch(r"[^/]+/data\.pkl", i.filename)]
        if len(pkl) != 1:
            _fail(self.path, "is a zip file but not a PyTorch checkpoint (no single */data.pkl)", self.expected)
        self.zip, self.prefix = zf, pkl[0].filename[: -len("data.pkl")]
        self.entries = {i.filename: i for i in infos}
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.header_offset + info.file_size > self.size:
                _fail(self.path, f"has a compressed or out-of-range zip entry '{short(info.filename, 80)}'",
                      self.expected)
        if pkl[0].file_size > MAX_PICKLE_BYTES:
            _fail(self.path, f"has a {pkl[0].file_size:,}-byte data.pkl (limit {MAX_PICKLE_BYTES:,})", self.expected)
        order = self.entries.get(self.prefix + "byteorder")
        if order is not None and self._read(order, 16) not in (b"little",):
            _fail(self.path, "was written on a big-endian machine", self.expected)
        self.pickle = self._read(pkl[0], MAX_PICKLE_BYTES)

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        try:
            with self.zip.open(info) as fh:
                data = fh.read(min(info.file_size, limit))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:
            _fail(self.path, f"is truncated or corrupt (zip entry '{short(info.filename, 80)}': "
                  f"{short(str(exc), 120)})", self.expected)
        if len(data) != info.file_size:
            _fail(self.path, f"is truncated (zip entry '{short(info.filename, 80)}')", self.expected)
        return data

    def _read_stored(self, info: zipfile.ZipInfo) -> bytearray:
        """A stored (uncompressed) entry read straight into one buffer: the tensor's memory, no copies."""
        raw = bytearray(info.file_size)
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            head = fh.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                _fail(self.path, f"is corrupt (zip entry '{short(info.filename, 80)}' has no local header)",
                      self.expected)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            if fh.readinto(raw) != info.file_size:
                _fail(self.path, f"is truncated (zip entry '{short(info.filename, 80)}')", self.expected)
        return raw

    # -- walking ----------------------------------------------------------------------------
    def _zip_storage_meta(self, key: str, dtype: torch.dtype, numel: int) -> StorageRef:
        info = self.entries.get(f"{self.prefix}data/{key}")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if info is None:
            raise _Refused(f"tensor storage '{short(key, 40)}' has no zip entry data/{short(key, 40)}")
        if info.file_size != nbytes:
            raise _Refused(f"storage '{short(key, 40)}' claims {numel:,} {dtype} elements ({nbytes:,} bytes) but "
                           f"its zip entry has {info.file_size:,} bytes")
        return self._shared(key, StorageRef(key, dtype, numel))

    def _shared(self, key, ref):
        seen = self.seen.setdefault(key, ref)
        if (seen.dtype, seen.numel) != (ref.dtype, ref.numel):
            raise _Refused(f"storage '{short(key, 40)}' is declared twice with different types")
        return seen

    def walk(self, roles: dict):
        """The file's object with :class:`TensorMeta` for tensors; nothing read but the pickles."""
        self.seen: dict = {}
        if self.format == "zip":
            machine = _Machine(roles, self._zip_storage_meta, _meta_tensor)
            return self._run(machine, io.BytesIO(self.pickle))
        stream = io.BytesIO(self.head)
        self._legacy_preamble(stream)
        self.legacy_main = stream.tell()

        def storage(key, dtype, numel):
            return self._shared(key, StorageRef(key, dtype, numel))

        obj = self._run(_Machine(roles, storage, _meta_tensor), stream)
        keys = self._run(_Machine({}), stream)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(self.seen) or len(keys) != len(self.seen):
            raise CheckpointError(f"'{self.path}' lists other storages than its tensors use; expected {self.expected}")
        self.legacy_keys, self.legacy_data = keys, stream.tell()
        need = sum(8 + r.numel * torch.empty((), dtype=r.dtype).element_size() for r in self.seen.values())
        if self.legacy_data + need > self.size:
            _fail(self.path, f"is truncated: its tensors need {need:,} bytes after the pickles but the file has "
                  f"{max(self.size - self.legacy_data, 0):,}", self.expected)
        return obj

    def _legacy_preamble(self, stream) -> None:
        magic = self._run(_Machine({}), stream)
        version = self._run(_Machine({}), stream)
        info = self._run(_Machine({}), stream)
        if magic != 0x1950A86A20F9469CFC6C or version != 1001:
            _fail(self.path, "is a pickle but not a PyTorch checkpoint (no torch magic number)", self.expected)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            _fail(self.path, "was written on a big-endian machine or has no system info", self.expected)

    def _run(self, machine: _Machine, stream):
        try:
            return machine.run(stream)
        except _Refused as exc:
            raise CheckpointError(f"'{short(str(self.path), 200)}' is not a plain checkpoint: {exc}; "
                                  f"expected {self.expected}") from None
        except (ValueError, EOFError, TypeError, KeyError, IndexError, OverflowError, struct.error,
                UnicodeDecodeError, RecursionError, MemoryError) as exc:
            raise CheckpointError(f"'{short(str(self.path), 200)}' has a corrupt or truncated pickle "
                                  f"({type(exc).__name__}: {short(str(exc), 120)}); expected {self.expected}") from None

    # -- reading ----------------------------------------------------------------------------
    def read_own(self, roles: dict):
        """Build the object without torch.load, storages read straight from the file."""
        cache: dict[str, _RealStorage] = {}
        if self.format == "zip":
            def storage(key, dtype, numel):
                if key not in cache:
                    ref = self._zip_storage_meta(key, dtype, numel)
                    raw = self._read_stored(self.entries[f"{self.prefix}data/{key}"])
                    cache[key] = _RealStorage(key, torch.frombuffer(raw, dtype=ref.dtype) if raw
                                              else torch.empty(0, dtype=ref.dtype))
                return cache[key]

            machine = _Machine(roles, storage, _real_tensor, real_objects=True)
            return _finish_objects(self._run(machine, io.BytesIO(self.pickle)))
        # legacy: storages follow the pickles, in the order of the key list, each as int64 numel + bytes
        flats: dict[str, torch.Tensor] = {}
        with open(self.path, "rb") as fh:
            fh.seek(self.legacy_data)
            for key in self.legacy_keys:
                ref = self.seen[str(key)]
                head = fh.read(8)
                if len(head) != 8 or struct.unpack("<q", head)[0] != ref.numel:
                    _fail(self.path, f"is corrupt: storage '{short(str(key), 40)}' does not have the {ref.numel:,} "
                          f"elements its tensors need", self.expected)
                nbytes = ref.numel * torch.empty((), dtype=ref.dtype).element_size()
                raw = bytearray(nbytes)
                if fh.readinto(raw) != nbytes:
                    _fail(self.path, "is truncated", self.expected)
                flats[str(key)] = torch.frombuffer(raw, dtype=ref.dtype) if raw else torch.empty(0, dtype=ref.dtype)

        def storage(key, dtype, numel):
            if key not in cache:
                cache[key] = _RealStorage(key, flats[key])
            return cache[key]

        stream = io.BytesIO(self.head)
        stream.seek(self.legacy_main)
        return _finish_objects(self._run(_Machine(roles, storage, _real_tensor, real_objects=True), stream))


def load_torch_file(path: str | os.PathLike, expected: str, *, allow_namespace: bool = True, check=None,
                    mmap: bool = True, reader: str = "auto"):
    """Walk, validate, then read a ``.pt``/``.pth`` -> the object ``torch.load`` would give.

    expected: what the file should be, for messages. allow_namespace: accept
    ``argparse.Namespace`` (the ``args`` of official training checkpoints). check: called with
    the walked object (:class:`TensorMeta` for tensors) before any tensor data is read; raises
    :class:`CheckpointError` to refuse. reader: "auto" (torch.load on torch >= 2.10, else our
    own; ``PASTICHE_OWN_LOADER=1`` forces ours), "torch" or "own".
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist (expected {expected})")
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a folder, not a file (expected {expected})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"'{path}' is empty (0 bytes); expected {expected}. Download it again.")
    roles = {**TORCH_GLOBALS, **(NAMESPACE_GLOBALS if allow_namespace else {})}
    try:
        f = _TorchFile(path, expected)
    except OSError as exc:
        raise CheckpointError(f"'{path}' could not be read ({short(str(exc), 160)}); expected {expected}") from None
    skeleton = f.walk(roles)
    if check is not None:
        check(skeleton)
    if reader == "auto":
        reader = "own" if own_loader_forced() or not torch_is_safe() else "torch"
    try:
        if reader == "own":
            return f.read_own(roles)
        safe = [argparse.Namespace] if allow_namespace else []
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and f.format == "zip")
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, OSError, EOFError, TypeError, KeyError, IndexError, MemoryError,
            zipfile.BadZipFile, struct.error, UnicodeDecodeError, pickletools.pickle.UnpicklingError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"'{path}' could not be read as a PyTorch checkpoint ({type(exc).__name__}: "
                              f"{short(text, 200)}); expected {expected}") from None


# --------------------------------------------------------------------------------------------
# .npy object banks
# --------------------------------------------------------------------------------------------
def load_npy_pickle(stream, where: str, expected: str):
    """The pickle payload of an object ``.npy`` (numpy arrays, dicts, str keys only)."""
    data = stream.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{where} is larger than {MAX_PICKLE_BYTES:,} bytes; expected {expected}")
    try:
        return _Machine(NPY_GLOBALS, real_objects=True).run(io.BytesIO(data))
    except _Refused as exc:
        raise CheckpointError(f"{where} is not a plain style bank: {exc}; expected {expected}") from None
    except (ValueError, EOFError, TypeError, KeyError, IndexError, OverflowError, struct.error,
            UnicodeDecodeError, RecursionError, MemoryError) as exc:
        raise CheckpointError(f"{where} has a corrupt or truncated pickle payload ({type(exc).__name__}: "
                              f"{short(str(exc), 120)}); expected {expected}") from None


# --------------------------------------------------------------------------------------------
# safetensors headers
# --------------------------------------------------------------------------------------------
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_safetensors_header(path: Path, expected: str) -> tuple[dict[str, TensorMeta], dict[str, str]]:
    """``({name: TensorMeta}, metadata)`` from the header alone, every entry checked against the file size."""
    where = f"'{short(str(path), 200)}'"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > min(MAX_SAFETENSORS_HEADER, size - 8):
                raise CheckpointError(f"{where} is not a safetensors file (header length {n:,} for a {size:,}-byte "
                                      f"file); expected {expected}")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{where} could not be read ({short(str(exc), 160)}); expected {expected}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where} has an unreadable safetensors header ({short(str(exc), 120)}); "
                              f"expected {expected}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has a safetensors header that is not a JSON object; expected {expected}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{where}: safetensors metadata must map strings to strings; expected {expected}")
    body = size - 8 - n
    tensors: dict[str, TensorMeta] = {}
    spans = []
    for name, entry in header.items():
        label = short(repr(name), 60)
        try:
            dtype = _ST_DTYPES[entry["dtype"]]
            shape = _check_ints(tuple(entry["shape"]), "shape")
            begin, end = entry["data_offsets"]
            if isinstance(begin, bool) or isinstance(end, bool) or not (isinstance(begin, int) and isinstance(end, int)):
                raise TypeError("offsets")
        except (KeyError, TypeError, ValueError, _Refused):
            raise CheckpointError(f"{where}: safetensors entry {label} is malformed (needs dtype, shape, "
                                  f"data_offsets); expected {expected}") from None
        numel = torch.Size(shape).numel()
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end <= body) or end - begin != nbytes:
            raise CheckpointError(f"{where}: safetensors entry {label} claims {list(shape)} {entry['dtype']} "
                                  f"({nbytes:,} bytes) at bytes {begin}..{end} of a {body:,}-byte data section; "
                                  f"expected {expected}")
        spans.append((begin, end))
        tensors[name] = TensorMeta(StorageRef(name, dtype, numel), 0, shape, _contiguous(shape))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise CheckpointError(f"{where}: safetensors entries overlap; expected {expected}")
    return tensors, meta


def _contiguous(shape) -> tuple:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(stride))


def parse_json_meta(meta: dict, key: str, default, kind: type, where: str, limit: int = 1 << 20):
    """A JSON value of safetensors metadata, of the given type, with one clear error otherwise."""
    text = meta.get(key)
    if text is None:
        return default
    try:
        if len(text) > limit:
            raise ValueError(f"{len(text):,} characters")
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: metadata {key!r} is not readable JSON ({short(str(exc), 100)})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: metadata {key!r} is a {type(value).__name__}, expected a {kind.__name__}")
    return value


__all__ = ["MAX_DEPTH", "MAX_EXPANDED", "OWN_LOADER_ENV", "StorageRef", "TensorMeta", "load_npy_pickle",
           "load_torch_file", "own_loader_forced", "parse_json_meta", "read_safetensors_header", "torch_is_safe"]
