"""Config nodes and run records as plain, JSON-serialisable Python (one definition for the package)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

#: arrays with at most this many elements are written out in full; larger ones as ``<tensor (shape)>``
MAX_LISTED = 64


def to_plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts / lists (interpolations resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def json_safe(obj: Any) -> Any:
    """``obj`` as it reads back from JSON: mappings -> dicts with str keys, tuples -> lists, paths -> str,
    small tensors / arrays -> nested lists (larger: ``<tensor (shape)>``), numpy scalars -> numbers,
    any other object (a model function, a network) -> ``<TypeName>``. OmegaConf nodes are resolved first."""
    obj = to_plain(obj)
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arr = obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj
        return arr.tolist() if np.prod(arr.shape) <= MAX_LISTED else f"<tensor {tuple(arr.shape)}>"
    return f"<{type(obj).__name__}>"
