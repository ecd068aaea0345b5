"""Read NVIDIA EDM network pickles as data: no NVIDIA code on the path, no code from the file executed.

EDM's training loop saves ``pickle.dump(dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...))``
(github NVlabs/edm, ``training/training_loop.py``). Every module class there is wrapped by
``torch_utils.persistence.persistent_class``, whose ``__reduce__`` stores
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=6, module_src=<the whole source of the defining module>,
class_name='EDMPrecond', state=<the module's __dict__>)``; the state holds ``_init_args``, ``_init_kwargs``,
``_parameters``, ``_buffers`` and ``_modules`` (nested records, and plain ``torch.nn.ModuleDict`` objects).
The original reconstruct function ``exec``-s ``module_src``.

:class:`SafeEDMUnpickler` resolves only an allow-list of globals (:data:`ALLOWED_GLOBALS`); the reconstruct
function is replaced by one that returns an inert :class:`PersistentRecord` (``module_src`` is kept as a
string and never run), tensors are rebuilt by torch's own ``weights_only`` loader, and everything else is
refused with a :class:`UnsafePickleError` naming the global.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle refers to a class or function outside the allow-list (nothing from it was run)."""


class PersistentRecord:
    """What ``torch_utils.persistence`` stored for one object: its class name, init arguments and state.

    ``module_src`` (the defining module's source) is kept only as text; it is never executed.
    """

    def __init__(self, meta: Dict[str, Any]) -> None:
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        self.module_src = meta.get("module_src")
        state = meta.get("state")
        self.state: Dict[str, Any] = dict(state) if isinstance(state, dict) else {}

    @property
    def init_args(self) -> Any:
        return self.state.get("_init_args")

    @property
    def init_kwargs(self) -> Any:
        return self.state.get("_init_kwargs")

    def __repr__(self) -> str:
        return f"PersistentRecord(class_name={self.class_name!r})"


class PlainModuleRecord:
    """A non-persistent ``torch.nn`` container (``ModuleDict``, ...) as data: its class and ``__dict__``."""

    def __init__(self, *args: Any) -> None:
        self.class_name = type(self).__name__
        self.state: Dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}


class ModuleDictRecord(PlainModuleRecord):
    pass


class ModuleListRecord(PlainModuleRecord):
    pass


class SequentialRecord(PlainModuleRecord):
    pass


class EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access): plain data."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement of ``torch_utils.persistence._reconstruct_persistent_obj``: keeps ``meta`` as data."""
    if not isinstance(meta, dict):
        raise UnsafePickleError(f"a persistence record must hold a dict, found {type(meta).__name__}")
    if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise UnsafePickleError(
            f"unsupported persistence record (type={meta.get('type')!r}, class_name={meta.get('class_name')!r})"
        )
    return PersistentRecord(meta)


def _load_storage_from_bytes(data: bytes) -> Any:
    """Replacement of ``torch.storage._load_from_bytes`` (how a plain pickle stores a tensor's storage):
    the bytes are a ``torch.save`` stream, read with torch's restricted ``weights_only`` unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("a tensor storage must be stored as bytes")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, *state: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("a parameter must wrap a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused (only plain numeric dtypes)")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy dtype {spec!r} refused")
    dt = np.dtype(spec)
    if dt.hasobject:
        raise UnsafePickleError(f"numpy dtype {spec!r} refused (object dtype)")
    return dt


_TORCH_DTYPES = {name: getattr(torch, name) for name in ("float16", "float32", "float64", "bfloat16", "int64", "uint8")}

#: (module, name) -> what it resolves to; everything else is refused
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("torch.nn.modules.container", "ModuleList"): ModuleListRecord,
    ("torch.nn.modules.container", "Sequential"): SequentialRecord,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    **{("torch", name): dt for name, dt in _TORCH_DTYPES.items()},
}


class SafeEDMUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS` (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: it is not on the EDM safe loader's allow-list (the file "
                f"may contain code; nothing from it was run). Only NVIDIA EDM network pickles are supported; "
                f"for a trusted file of another kind pass edm_repo=<NVlabs/edm checkout>"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}: EDM network pickles have none")


def safe_load_edm_pickle(f: io.BufferedIOBase) -> Any:
    """Unpickle an open EDM pickle with :class:`SafeEDMUnpickler`."""
    return SafeEDMUnpickler(f).load()


def iter_records(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted path, record) for ``obj`` and every module record below it, parents first."""
    yield prefix, obj
    for name, child in _modules(obj).items():
        if child is not None:
            yield from iter_records(child, f"{prefix}.{name}" if prefix else name)


def _modules(rec: Any) -> Dict[str, Any]:
    mods = rec.state.get("_modules", {}) if isinstance(rec, (PersistentRecord, PlainModuleRecord)) else {}
    bad = [n for n, m in mods.items() if m is not None and not isinstance(m, (PersistentRecord, PlainModuleRecord))]
    if bad:
        raise ValueError(f"sub-module(s) {bad} are not module records")
    return mods


def record_state_dict(root: Any) -> "collections.OrderedDict[str, torch.Tensor]":
    """The ``state_dict()`` the module tree of ``root`` would have (parameters and persistent buffers)."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for path, rec in iter_records(root):
        pre = f"{path}." if path else ""
        non_persistent = set(rec.state.get("_non_persistent_buffers_set", ()) or ())
        for kind in ("_parameters", "_buffers"):
            for name, t in (rec.state.get(kind) or {}).items():
                if t is None or (kind == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"{pre}{name} is a {type(t).__name__}, expected a tensor")
                out[pre + name] = t.detach()
    return out


def record_class_names(root: Any) -> List[Tuple[str, str]]:
    """(path, class name) of every persistent record in the tree (plain containers are skipped)."""
    return [(p, r.class_name) for p, r in iter_records(root) if isinstance(r, PersistentRecord)]


