"""Write tiny EDM network snapshots in NVIDIA's on-disk format from the derived test data in tests/data/edm.

How tests/data/edm was made (the generating script is deliberately not in the repository): NVlabs/edm at
commit 008a4e5 (``training/networks.py``, ``torch_utils/persistence.py``, ``dnnlib``) was fetched to a
directory outside the repository and imported with torch 2.x. For each tiny configuration below, the
ORIGINAL class (``EDMPrecond`` / ``VPPrecond`` / ``VEPrecond`` around ``SongUNet`` DDPM++ / NCSN++ or
``DhariwalUNet``) was instantiated from ``init_kwargs``; its i-th parameter (``named_parameters`` order)
was overwritten with :func:`rule_param` (no zero-initialised layers, so every weight matters); the module was
deep-copied, put in eval mode with gradients off, as EDM's training loop does before pickling; and the
ORIGINAL forward ``net(x, sigma, one_hot_labels)`` was run in float32 on CPU. Committed per case:

* ``<case>.safetensors``: inputs ``x``, ``sigma``, ``labels`` (conditional cases), the original output ``out``
  and every buffer (``buffer.<key>``: FIR resampling filters, NCSN++ Fourier frequencies);
* ``<case>.json``: the record's class name, ``init_kwargs``, the parameter keys and shapes, and the module
  tree as persistence records it (per module: persistent class name or ``torch.nn`` container, its
  ``__dict__`` without tensors and sub-modules, parameter / buffer / child names), values tagged by type.

``released_manifests.json`` holds ``state_dict`` key -> shape of the ORIGINAL classes instantiated (on the meta
device) with the configurations of the nine released ``edm-*.pkl`` files (NVlabs/edm ``train.py`` presets
and the README table of training options).

:func:`write_snapshot` rebuilds, from that data alone, the byte layout of a real snapshot: ``pickle.dump`` of
``dict(ema=..., loss_fn=..., augment_pipe=None, dataset_kwargs=...)`` in which every persistent module is
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class', version=6,
module_src=..., class_name=..., state=...)``, ``torch.nn.ModuleDict`` containers are plain objects, tensors
are pickled by torch (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` around
``torch.storage._load_from_bytes``), and floats such as ``skip_scale`` are numpy scalars.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file

DATA = Path(__file__).resolve().parent / "data" / "edm"
CASES = ["ddpmpp_edm_uncond", "ddpmpp_vp_cond", "ncsnpp_edm_cond", "ncsnpp_skip_ve_uncond", "adm_edm_cond"]
PLACEHOLDER_SRC = "# (module source of training/networks.py would be embedded here)\n"


def rule_param(i: int, shape, key: str = "") -> torch.Tensor:
    """Deterministic pseudo-random weights for the i-th parameter, exact in integer arithmetic (so bit-identical
    everywhere): a multiplicative hash of the flat index k, h = mix(k * 2654435761 + (i + 1) * 97531) mod 2^32,
    mapped to u in [-1, 1) and scaled to variance 1/fan_in (0.3 u for vectors); attention ``qkv`` and ``proj``
    weights x4, so that attention maps are far from uniform and matter for the output."""
    n = int(np.prod(shape)) if len(shape) else 1
    k = torch.arange(n, dtype=torch.int64)
    h = (k * 2654435761 + (i + 1) * 97531) % 4294967296
    h = ((h ^ (h >> 13)) * 1274126177) % 4294967296
    u = h.to(torch.float64) / 4294967296.0 * 2 - 1
    scale = math.sqrt(3.0 / (n // shape[0])) if len(shape) >= 2 else 0.3
    if key.endswith("qkv.weight") or key.endswith("proj.weight"):
        scale *= 4.0
    return (u * scale).reshape(shape).to(torch.float32)


def load_case(case: str) -> tuple[dict, dict]:
    meta = json.loads((DATA / f"{case}.json").read_text())
    return meta, load_file(str(DATA / f"{case}.safetensors"))


def decode(v: Any) -> Any:
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, val), = v.items()
    if tag == "__odict__":
        return OrderedDict((k, decode(x)) for k, x in val)
    if tag in ("__dict__", "__easydict__"):
        return {k: decode(x) for k, x in val}
    if tag == "__set__":
        return set(val)
    if tag == "__tuple__":
        return tuple(decode(x) for x in val)
    if tag == "__np_float64__":
        return np.float64(val)
    if tag == "__float__":
        return float(val)
    raise ValueError(tag)


class _Persistent:
    """Pickles exactly as a ``torch_utils.persistence`` object does."""

    def __init__(self, meta: dict, reconstruct) -> None:
        self.meta, self.reconstruct = meta, reconstruct

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def _fake_persistence_module():
    """A stand-in ``torch_utils.persistence`` so that pickle writes the real global name; it never loads."""
    def _reconstruct_persistent_obj(meta):  # pragma: no cover - must never be called
        raise AssertionError("the loader imported torch_utils.persistence")

    mod = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = mod.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = mod
    return pkg, mod


def _build(node: dict, params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor], reconstruct,
           module_src: str, overrides: Optional[dict]) -> Any:
    path = node["path"]
    key = (lambda n: f"{path}.{n}" if path else n)
    state = {k: decode(v) for k, v in node["attrs"].items()}
    state["_parameters"] = OrderedDict(
        (n, None if ref is None else torch.nn.Parameter(params[key(n)].clone(), requires_grad=False))
        for n, ref in node["params"])
    state["_buffers"] = OrderedDict((n, None if ref is None else buffers[key(n)].clone()) for n, ref in node["buffers"])
    state["_modules"] = OrderedDict(
        (c["name"], _build(c, params, buffers, reconstruct, module_src, overrides)) for c in node["children"])
    if node["persistent"]:
        meta = dict(type="class", version=6, module_src=module_src, class_name=node["class"], state=state)
        if overrides and path in overrides:
            meta.update(overrides[path])
        return _Persistent(meta, reconstruct)
    assert node["class"] == "torch.nn.modules.container.ModuleDict", node["class"]
    obj = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
    obj.__dict__.update(state)
    return obj


def write_snapshot(case: str, path: Path, module_src: str = PLACEHOLDER_SRC, overrides: Optional[dict] = None,
                   extra: Optional[dict] = None) -> Path:
    """Write the tiny ``case`` as an EDM ``network-snapshot-*.pkl`` at ``path``.

    ``overrides`` maps a module path ('' = the top) to meta entries to replace (e.g. a class name);
    ``extra`` adds / replaces top-level snapshot entries.
    """
    meta, t = load_case(case)
    params = {k: rule_param(i, tuple(s), k) for i, (k, s) in enumerate(meta["param_keys"])}
    buffers = {k[len("buffer."):]: v for k, v in t.items() if k.startswith("buffer.")}
    pkg, mod = _fake_persistence_module()
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = pkg, mod
    try:
        reconstruct = mod._reconstruct_persistent_obj
        ema = _build(meta["tree"], params, buffers, reconstruct, module_src, overrides)
        loss_state = {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5, "_init_args": (), "_init_kwargs": {}}
        loss = _Persistent(dict(type="class", version=6, module_src="# training/loss.py\n", class_name="EDMLoss",
                                state=loss_state), reconstruct)
        res = decode(meta["init_kwargs"])["img_resolution"]
        data = dict(ema=ema, loss_fn=loss, augment_pipe=None,
                    dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="datasets/x.zip",
                                        use_labels=False, xflip=False, cache=True, resolution=res, max_size=10))
        data.update(extra or {})
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(data, f)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path
