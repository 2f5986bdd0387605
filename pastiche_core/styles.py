"""Style banks (the exemplars' extrinsic codes), preserve-colour helpers and layer-weight presets.

Official banks
--------------
``checkpoint/<style>/exstyle_code.npy`` (encoder z+ codes of the style images),
``refined_exstyle_code.npy`` (the same after ``refine_exstyle.py``) and ``instyle_code.npy``
(destylized intrinsic codes) are ``np.save`` of a Python dict ``file name -> float32 [1, 18,
512]``: an object ``.npy`` whose payload is a *pickle*. Unpickling runs code, so we never let
numpy unpickle such a file: :func:`read_npy_bank` parses the header with
numpy's format helpers and reads the pickle with :mod:`pastiche_core.safe_pickle` (bounded
size, depth and object count; every array's data checked against its shape) accepting exactly
the globals a bank needs (found by disassembling numpy-1.26 and numpy-2.x written banks with
``pickletools``):

* ``numpy.core.multiarray._reconstruct`` (numpy 1.x writers -- the released banks) or
  ``numpy._core.multiarray._reconstruct`` (numpy 2.x writers),
* ``numpy.ndarray`` and ``numpy.dtype``.

The dict, its ``str`` keys, tuples, bytes and numbers are pickle opcodes, not globals. Any
other global (``os.system``, ``builtins.eval``, ...) makes the load fail with a
:class:`~pastiche_core.errors.CheckpointError` naming the file and the global, before anything
is called.

Order matters: ``style_transfer.py --style_id k`` is ``list(bank)[k]`` (dict insertion order),
which :class:`StyleBank` keeps.

Our format
----------
:meth:`StyleBank.save` writes safetensors: one tensor ``codes [N, L, D]`` (float32) and the
names, space (``"z+"`` for the official banks) and shape in the metadata. :meth:`StyleBank.save_npy`
writes the official format (byte-compatible with numpy 1.x ``np.save``), so the official
scripts can read our banks.
"""
from __future__ import annotations

import difflib
import json
import operator
import os
import pickle
import pickletools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write as _atomic_write
from .weight_files import CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION, MODEL_KEY, read_safetensors
from .errors import CheckpointError, InputError, short
from .models.dualstylegan import layer_weights
from .models.sampler import N_STRUCTURE_ROWS
from .safe_pickle import load_npy_pickle, parse_json_meta

BANK_MODEL = "style_bank"
NAMES_KEY = "pastiche.names"
SPACE_KEY = "pastiche.space"
SPACES = ("z+", "w+")
N_STRUCTURE = N_STRUCTURE_ROWS  # the official split of a bank code: rows 0..6 structure, 7.. colour
BANK_EXPECTED = ("a style bank (the official exstyle_code.npy / refined_exstyle_code.npy / instyle_code.npy, "
                 "or a Pastiche .safetensors bank)")


class StyleLookupError(InputError, LookupError):
    """A style index or name that the bank does not have."""

    __str__ = BaseException.__str__


# --------------------------------------------------------------------------------------------
# Safe reading / writing of the official pickled-dict .npy
# --------------------------------------------------------------------------------------------
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's ndarray reconstructor, whatever module it lives in
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,   # numpy 1.x writers (released banks)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x writers
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _code_array(value, where: str, key: str) -> np.ndarray:
    """A bank entry -> float32 ``[L, D]`` (accepts the official ``[1, L, D]``)."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise CheckpointError(f"{where}: entry {short(repr(key), 80)} is a {type(value).__name__}"
                              f"{' of dtype ' + str(value.dtype) if isinstance(value, np.ndarray) else ''}, "
                              f"not a numeric array; expected {BANK_EXPECTED}")
    if value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 2:
        raise CheckpointError(f"{where}: entry {short(repr(key), 80)} has shape {list(value.shape)}; expected [1, n_latent, 512]")
    return np.ascontiguousarray(value, dtype=np.float32)


def read_npy_bank(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an official bank ``.npy`` safely -> ``{name: float32 [1, L, D]}`` in file order.

    Raises :class:`CheckpointError` naming the file for a missing/corrupt file, a ``.npy`` that
    is not a pickled dict, or a pickle that references anything but the allowed numpy globals.
    """
    path = Path(path)
    where = f"'{path}'"
    if not path.is_file():
        raise CheckpointError(f"{where} does not exist (expected {BANK_EXPECTED})")
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, EOFError, TypeError, SyntaxError, OverflowError, RecursionError) as exc:
            raise CheckpointError(f"{where} is not a readable .npy file ({short(str(exc), 200)}); "
                                  f"expected {BANK_EXPECTED}") from None
        if dtype != np.dtype(object) or shape != ():
            raise CheckpointError(f"{where} holds a plain {dtype} array of shape {short(str(list(shape)), 80)}, not a pickled dict "
                                  f"of codes; expected {BANK_EXPECTED}")
        obj = load_npy_pickle(fh, where, BANK_EXPECTED)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj[()]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a pickled {type(obj).__name__}, not a dict of codes; expected {BANK_EXPECTED}")
    bank: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: key {short(repr(key), 80)} is a {type(key).__name__}, not a file name string")
        bank[key] = _code_array(value, where, key)[None]
    return bank


def _pickle_numpy1(obj) -> bytes:
    """Pickle (protocol 3) with numpy's reconstructor named ``numpy.core.multiarray`` as numpy 1.x
    does, so that numpy 1.x (the official scripts' environment) and numpy 2.x can both read it.

    Protocol 3 has no frames and addresses its memo by index, so rewriting the module name
    of a ``GLOBAL`` opcode in place is safe. Every global is checked against the allow-list.
    """
    raw = pickle.dumps(obj, protocol=3)
    ops = list(pickletools.genops(raw))
    out, last = bytearray(), 0
    for i, (op, arg, pos) in enumerate(ops):
        if op.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
            raise AssertionError(f"unexpected pickle opcode {op.name}")
        if op.name != "GLOBAL":
            continue
        module, name = arg.split(" ", 1)
        if module == "numpy._core.multiarray":
            module = "numpy.core.multiarray"
        if (module, name) not in _ALLOWED_GLOBALS:
            raise AssertionError(f"unexpected global {module}.{name} while writing a style bank")
        end = ops[i + 1][2]
        out += raw[last:pos] + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        last = end
    out += raw[last:]
    return bytes(out)


def _npy_bank_writer(bank: Mapping[str, np.ndarray]):
    holder = np.empty((), dtype=object)
    holder[()] = {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in bank.items()}
    payload = _pickle_numpy1(holder)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
            fh.write(payload)

    return write


def write_npy_bank(path: str | os.PathLike, bank: Mapping[str, np.ndarray]) -> None:
    """Write ``{name: float32 [1, L, D]}`` as the official object ``.npy`` (numpy 1.x layout)."""
    _atomic_write(Path(path), _npy_bank_writer(bank))


# --------------------------------------------------------------------------------------------
# StyleBank
# --------------------------------------------------------------------------------------------
def _as_code(code, n_latent: int | None, style_dim: int | None, what: str) -> torch.Tensor:
    """A code ``[L, D]`` or ``[1, L, D]`` (tensor or array) -> float32 CPU ``[L, D]``."""
    if isinstance(code, np.ndarray):
        code = torch.from_numpy(np.ascontiguousarray(code))
    if not isinstance(code, torch.Tensor):
        raise InputError(f"{what} must be a tensor or numpy array, got {type(code).__name__}")
    if code.ndim == 3 and code.shape[0] == 1:
        code = code[0]
    if code.ndim != 2 or (not code.is_floating_point() and code.dtype not in (torch.int32, torch.int64)):
        raise InputError(f"{what} must be a [n_latent, dim] or [1, n_latent, dim] float code, got "
                         f"{list(code.shape)} {code.dtype}")
    if (n_latent is not None and code.shape[0] != n_latent) or (style_dim is not None and code.shape[1] != style_dim):
        raise InputError(f"{what} has shape {list(code.shape)}, but this bank holds [{n_latent}, {style_dim}] codes")
    return code.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()


class StyleBank:
    """An ordered collection of named extrinsic (or intrinsic) style codes.

    ``bank[k]`` / ``bank["Cartoons_00038_07.jpg"]`` -> ``[1, L, D]`` float32 (a batch of one,
    like the official ``latent``); ``bank.codes`` -> ``[N, L, D]``; ``bank.names`` -> names in
    order (index ``k`` = official ``--style_id k``). ``space`` is ``"z+"`` for the official banks
    (map with ``DualStyleGAN.map_exstyle`` before use).
    """

    def __init__(self, names: Iterable[str] = (), codes=None, *, space: str = "z+", n_latent: int | None = None,
                 style_dim: int | None = None):
        if space not in SPACES:
            raise InputError(f"style bank space must be one of {', '.join(SPACES)}, got {space!r}")
        self.space = space
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._codes: list[torch.Tensor] = []
        self._stacked: torch.Tensor | None = None
        self._n_latent, self._style_dim = n_latent, style_dim
        names = list(names)
        if codes is None:
            if names:
                raise InputError("names were given without codes")
            return
        if isinstance(codes, (torch.Tensor, np.ndarray)):
            if codes.ndim != 3 or codes.shape[0] != len(names):
                raise InputError(f"codes must be [N, n_latent, dim] with N = {len(names)} names, got {list(codes.shape)}")
            codes = list(codes)
        codes = list(codes)
        if len(codes) != len(names):
            raise InputError(f"{len(names)} names but {len(codes)} codes")
        for name, code in zip(names, codes):
            self.add(name, code)

    # -- construction / IO -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, mapping: Mapping[str, object], space: str = "z+") -> "StyleBank":
        return cls(list(mapping.keys()), list(mapping.values()), space=space)

    @classmethod
    def load_npy(cls, path: str | os.PathLike, space: str = "z+") -> "StyleBank":
        """An official bank file (read with the allow-listed unpickler, never ``allow_pickle``)."""
        bank = read_npy_bank(path)
        if not bank:
            raise CheckpointError(f"'{path}' is an empty style bank (no entries)")
        return cls.from_dict(bank, space=space)

    @classmethod
    def load_safetensors(cls, path: str | os.PathLike) -> "StyleBank":
        path = Path(path)
        where = f"'{path}'"
        found: dict = {}

        def check(metas, meta):
            if meta.get(MODEL_KEY) != BANK_MODEL or "codes" not in metas:
                raise CheckpointError(f"{where} is a safetensors file but not a Pastiche style bank (metadata "
                                      f"{MODEL_KEY!r} is {short(repr(meta.get(MODEL_KEY)), 60)}); expected {BANK_EXPECTED}")
            if NAMES_KEY not in meta:
                raise CheckpointError(f"{where}: style bank metadata {NAMES_KEY!r} is missing")
            names = parse_json_meta(meta, NAMES_KEY, [], list, where)
            config = parse_json_meta(meta, CONFIG_KEY, {}, dict, where)
            codes = metas["codes"]
            if not all(isinstance(n, str) for n in names) or codes.ndim != 3 or codes.shape[0] != len(names):
                raise CheckpointError(f"{where}: {len(names)} names for codes of shape {list(codes.shape)}; "
                                      f"the bank is inconsistent")
            space = meta.get(SPACE_KEY, config.get("space", "z+"))
            if space not in SPACES:
                raise CheckpointError(f"{where}: style bank space {short(repr(space), 40)} is not one of "
                                      f"{', '.join(SPACES)}")
            found.update(names=names, space=space)

        tensors, meta = read_safetensors(path, BANK_EXPECTED, check)
        names, codes, space = found["names"], tensors["codes"], found["space"]
        try:
            return cls(names, codes, space=space, n_latent=codes.shape[1], style_dim=codes.shape[2])
        except InputError as exc:
            raise CheckpointError(f"'{path}': {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StyleBank":
        """``.npy`` (official) or ``.safetensors`` (ours), by suffix."""
        path = Path(path)
        if path.suffix == ".npy":
            return cls.load_npy(path)
        if path.suffix == ".safetensors":
            return cls.load_safetensors(path)
        raise CheckpointError(f"'{path}': unknown style bank format (expected a .npy or .safetensors file)")

    def _safetensors_writer(self):
        from safetensors.torch import save_file

        codes = self.codes.contiguous()
        config = {"space": self.space, "count": len(self), "n_latent": int(codes.shape[1]),
                  "style_dim": int(codes.shape[2])}
        meta = {FORMAT_KEY: FORMAT_VERSION, MODEL_KEY: BANK_MODEL, CONFIG_KEY: json.dumps(config),
                SPACE_KEY: self.space, NAMES_KEY: json.dumps(self._names)}
        return lambda tmp, more=None: save_file({"codes": codes}, str(tmp), metadata={**meta, **(more or {})})

    def save(self, path: str | os.PathLike) -> None:
        """Our format: safetensors with ``codes [N, L, D]`` and names/space/config in the metadata."""
        _atomic_write(Path(path), self._safetensors_writer())

    def save_pair(self, npy_path: str | os.PathLike, st_path: str | os.PathLike) -> None:
        """The official ``.npy`` and our ``.safetensors`` as one pair that cannot disagree
        (:func:`pastiche_core.atomic.write_pair`: loading skips a ``.safetensors`` whose ``.npy``
        twin changed since)."""
        from .atomic import write_pair

        if self.space != "z+":
            raise InputError(f"the official scripts read banks as z+ codes; this bank is {self.space}")
        write_pair(npy_path, _npy_bank_writer(self.to_dict()), st_path, self._safetensors_writer())

    def save_npy(self, path: str | os.PathLike) -> None:
        """The official format (``np.save`` of ``{name: float32 [1, L, D]}``, numpy 1.x pickle layout)."""
        if self.space != "z+":
            raise InputError(f"the official scripts read banks as z+ codes; this bank is {self.space}")
        write_npy_bank(path, self.to_dict())

    def to_dict(self) -> dict[str, np.ndarray]:
        """``{name: float32 numpy [1, L, D]}`` in order (the official dict)."""
        return {n: c.numpy()[None].copy() for n, c in zip(self._names, self._codes)}

    # -- access ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def n_latent(self) -> int:
        return self._n_latent if self._n_latent is not None else 18

    @property
    def style_dim(self) -> int:
        return self._style_dim if self._style_dim is not None else 512

    @property
    def codes(self) -> torch.Tensor:
        """All codes ``[N, L, D]`` float32 (stacked once and cached; treat it as read-only)."""
        if self._stacked is None:
            self._stacked = (torch.stack(self._codes) if self._codes
                             else torch.zeros(0, self.n_latent, self.style_dim))
        return self._stacked

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __contains__(self, name) -> bool:
        return name in self._index

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for i, name in enumerate(self._names):
            yield name, self[i]

    def index(self, key: int | str) -> int:
        """Position of a style given by index (negative counts from the end) or name."""
        if isinstance(key, str):
            if key in self._index:
                return self._index[key]
            close = difflib.get_close_matches(key, self._names, n=3, cutoff=0.75)
            if close:
                hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
            elif self._names:
                shown = ", ".join(repr(n) for n in self._names[:5])
                hint = f"names include {shown}{', ...' if len(self) > 5 else ''}"
            else:
                hint = "the bank is empty"
            raise StyleLookupError(f"no style named {key!r} in this bank of {len(self)} styles; {hint}")
        if isinstance(key, bool):
            raise InputError(f"a style is selected by an integer index or a name, not {key!r}")
        try:
            i = operator.index(key)
        except TypeError:
            raise InputError(f"a style is selected by an integer index or a name, not {type(key).__name__}") from None
        n = len(self)
        if n == 0:
            raise StyleLookupError(f"style index {i} is out of range: the bank is empty")
        if not -n <= i < n:
            raise StyleLookupError(f"style index {i} is out of range: the bank has {n} styles "
                                   f"(valid indices 0..{n - 1}, or -{n}..-1 counting from the end)")
        return i % n

    def name_of(self, key: int | str) -> str:
        return self._names[self.index(key)]

    def __getitem__(self, key: int | str) -> torch.Tensor:
        """The code ``[1, L, D]`` (float32, CPU; a copy)."""
        return self._codes[self.index(key)].unsqueeze(0).clone()

    # -- editing -----------------------------------------------------------------------------
    def add(self, name: str, code, *, replace: bool = False) -> int:
        """Append ``name -> code`` (``[L, D]`` or ``[1, L, D]``); returns its index.

        An existing name is an error unless ``replace=True`` (then the code is replaced in place,
        keeping its position, as assigning to a dict key does).
        """
        if not isinstance(name, str) or not name:
            raise InputError(f"a style name must be a non-empty string, got {name!r}")
        code = _as_code(code, self._n_latent, self._style_dim, f"the code for {name!r}")
        if not torch.isfinite(code).all():
            raise InputError(f"the code for {name!r} contains NaN or infinite values")
        self._n_latent, self._style_dim = int(code.shape[0]), int(code.shape[1])
        self._stacked = None
        if name in self._index:
            if not replace:
                raise InputError(f"the bank already has a style named {name!r} (pass replace=True to overwrite it)")
            i = self._index[name]
            self._codes[i] = code
            return i
        self._index[name] = len(self._names)
        self._names.append(name)
        self._codes.append(code)
        return len(self._names) - 1

    def extend(self, other: "StyleBank | Mapping[str, object] | Iterable[tuple[str, object]]", *,
               replace: bool = False) -> "StyleBank":
        """Add every entry of another bank, a dict ``name -> code`` or ``(name, code)`` pairs."""
        if isinstance(other, StyleBank):
            if other.space != self.space and len(other):
                raise InputError(f"cannot mix a {other.space} bank into a {self.space} bank")
            pairs = list(zip(other._names, other._codes))
        elif isinstance(other, Mapping):
            pairs = list(other.items())
        else:
            pairs = list(other)
        for name, code in pairs:
            self.add(name, code, replace=replace)
        return self

    def __repr__(self) -> str:
        return f"StyleBank({len(self)} styles, {self.space}, [{self.n_latent}, {self.style_dim}])"


def load_style_bank(path: str | os.PathLike) -> StyleBank:
    """Shortcut for :meth:`StyleBank.load`."""
    return StyleBank.load(path)


# --------------------------------------------------------------------------------------------
# Code arithmetic
# --------------------------------------------------------------------------------------------
def _tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a tensor, got {type(x).__name__}")
    return x if x.is_floating_point() else x.float()


def interpolate(code_a, code_b, t) -> torch.Tensor:
    """Linear interpolation ``(1 - t) * a + t * b`` (``torch.lerp``: exact at t = 0 and t = 1).

    t: a float or 0-d tensor (result has the codes' broadcast shape); a 1-D sequence/tensor of
    T weights (a batch: codes ``[D]`` -> ``[T, D]``, ``[L, D]`` or ``[1 or T, L, D]`` ->
    ``[T, L, D]``); or a tensor of any other shape, broadcast as is. Values outside [0, 1]
    extrapolate. Interpolate in the space the codes are in (z+ bank entries interpolate in z+).
    """
    a, b = _tensor(code_a, "code_a"), _tensor(code_b, "code_b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(float(t), dtype=dtype, device=a.device)
    else:
        t = torch.as_tensor(t if not isinstance(t, np.ndarray) else np.asarray(t), dtype=dtype, device=a.device)
    if t.ndim == 1:
        nd = max(a.ndim, b.ndim)
        trailing = nd - 1 if nd >= 3 else nd
        t = t.reshape(t.shape[0], *([1] * trailing))
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape, t.shape)
    except RuntimeError:
        raise InputError(f"cannot interpolate codes {list(a.shape)} and {list(b.shape)} with t of shape "
                         f"{list(t.shape)}") from None
    return torch.lerp(a.expand(shape), b.expand(shape), t.expand(shape))


def _swap_color_rows(exstyle, instyle, color_start: int, what: str) -> torch.Tensor:
    ex, ins = _tensor(exstyle, f"{what} exstyle"), _tensor(instyle, f"{what} instyle")
    if ex.ndim not in (2, 3) or ins.ndim not in (2, 3) or ex.shape[-2:] != ins.shape[-2:]:
        raise InputError(f"{what}: exstyle and instyle must both be [L, D] or [B, L, D] codes of the same "
                         f"[L, D], got {list(ex.shape)} and {list(ins.shape)}")
    if not 0 <= color_start <= ex.shape[-2]:
        raise InputError(f"{what}: color_start {color_start} is outside 0..{ex.shape[-2]}")
    try:
        shape = torch.broadcast_shapes(ex.shape, ins.shape)
    except RuntimeError:
        raise InputError(f"{what}: batch sizes {ex.shape[0]} and {ins.shape[0]} do not match") from None
    out = ex.expand(shape).clone()
    out[..., color_start:, :] = ins.to(out).expand(shape)[..., color_start:, :]
    return out


def preserve_color_zplus(exstyle_zplus, instyle_zplus, color_start: int = N_STRUCTURE) -> torch.Tensor:
    """``style_transfer.py --preserve_color`` (default z+ mode): the exemplar's z+ code with its
    colour rows ``7..`` replaced by the content's z+ rows **before** the mapping network.

    exstyle_zplus: the bank entry ``[1 or B, 18, 512]`` (z+); instyle_zplus: the content's code from
    the z+ encoder (``encoder.pt``). Returns a new tensor (the inputs are not modified; the
    official script swaps in place); map it with ``DualStyleGAN.map_exstyle`` afterwards. The
    layer weights stay as they are.
    """
    return _swap_color_rows(exstyle_zplus, instyle_zplus, color_start, "preserve_color_zplus")


def preserve_color_wplus(exstyle_wplus, instyle_wplus, color_start: int = N_STRUCTURE) -> torch.Tensor:
    """``style_transfer.py --wplus --preserve_color``: the colour rows ``7..`` of the **mapped**
    exemplar code (``map_exstyle(bank entry)``, w+) replaced by the content's w+ rows (from
    ``encoder_wplus.pt``) **after** the mapping. Returns a new tensor."""
    return _swap_color_rows(exstyle_wplus, instyle_wplus, color_start, "preserve_color_wplus")


# --------------------------------------------------------------------------------------------
# Layer-weight presets (interp_weights, one per latent row)
# --------------------------------------------------------------------------------------------
LAYER_WEIGHT_PRESETS: dict[str, tuple[float, ...]] = {
    # style_transfer.py / generate.py default --weight: structure 0.75, colour 1
    "default": tuple(layer_weights(0.75, 1.0)),
    # the exemplar fully on every layer (refine_exstyle.py and training renders)
    "full": tuple(layer_weights(1.0, 1.0)),
    # README alternative to --preserve_color: colour layers off, [w]*7 + [0]*11 with w = 0.75
    "preserve_color": tuple(layer_weights(0.75, 0.0)),
    # README --preserve_color example: --weight 0.6 x11, 1 x7 (used together with the flag)
    "readme_color_example": (0.6,) * 11 + (1.0,) * 7,
    # only the exemplar's structure (colour from the content)
    "structure_only": tuple(layer_weights(1.0, 0.0)),
    # only the exemplar's colour (structure from the content)
    "color_only": tuple(layer_weights(0.0, 1.0)),
    # no extrinsic style at all: the plain intrinsic StyleGAN output
    "intrinsic_only": tuple(layer_weights(0.0, 0.0)),
}


def layer_weight_preset(name: str, n_latent: int = 18) -> list[float]:
    """A named preset as a list of ``n_latent`` floats (the 18-layer vector truncated for smaller
    models, as the official code uses only the first ``n_latent`` entries)."""
    if name not in LAYER_WEIGHT_PRESETS:
        close = difflib.get_close_matches(str(name), list(LAYER_WEIGHT_PRESETS), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise InputError(f"unknown layer-weight preset {name!r}{hint}; presets: {', '.join(LAYER_WEIGHT_PRESETS)}")
    preset = LAYER_WEIGHT_PRESETS[name]
    if not 1 <= n_latent <= len(preset):
        raise InputError(f"n_latent must be 1..{len(preset)}, got {n_latent}")
    return list(preset[:n_latent])


def preserve_color_weights(structure: float = 0.75, n_latent: int = 18) -> list[float]:
    """The README's weight-vector way to keep the content's colours: ``[structure]*7 + [0]*(n-7)``."""
    return layer_weights(structure, 0.0, n_latent)


__all__ = ["BANK_EXPECTED", "LAYER_WEIGHT_PRESETS", "StyleBank", "StyleLookupError", "interpolate",
           "layer_weight_preset", "load_style_bank", "preserve_color_weights", "preserve_color_wplus",
           "preserve_color_zplus", "read_npy_bank", "write_npy_bank"]
