"""Device selection, moving a loaded model to a device, seeding."""

from __future__ import annotations

import random
from typing import Any, Union

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``, ``cuda`` or ``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or str(device).startswith("cuda"):
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available; use device=cpu or auto")
        return torch.device(device)
    raise ValueError(f"device={device!r} is not supported; allowed: auto, cpu, cuda, cuda:N")


#: the attributes of a :class:`~ld3.models.zoo.LoadedModel` that may hold torch modules
MODEL_PARTS = ("network", "classifier", "decode", "feature_fn", "cond_process_fn")


def move_model(loaded: Any, device: Union[str, torch.device]) -> None:
    """Put every torch module of a loaded model on ``device`` in eval mode: its network, classifier, decoder,
    feature net and condition encoder, and modules in its ``metadata``; bound methods count by their owner."""
    objs = [getattr(loaded, a, None) for a in MODEL_PARTS]
    objs += list((getattr(loaded, "metadata", None) or {}).values())
    for obj in objs:
        mod = obj if isinstance(obj, torch.nn.Module) else getattr(obj, "__self__", None)
        if isinstance(mod, torch.nn.Module):
            mod.to(device).eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
