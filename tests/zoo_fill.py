"""Deterministic, RNG-free parameter values for tiny real-format checkpoints in the zoo tests.

A tiny instance of a released architecture is described by its parameter names and shapes (a manifest);
its values come from :func:`fill_value`, a pure function of (name, shape) in float64 arithmetic, so the
reference outputs (computed once with the original model code) and the tests agree on the weights without
committing them. Values are a hash of the flat index (``frac(sin(12.9898 i + phase) * 43758.5453)``)
scaled like a uniform initialisation: +-sqrt(3/fan_in) for matrices / kernels, 1 +- 0.2 for 1-D
``weight`` entries (norm scales), +-0.1 for other 1-D entries (biases).
"""

from __future__ import annotations

import math
import zlib
from typing import Dict, Iterable, Tuple

import torch


def fill_value(name: str, shape: Tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    phase = (zlib.crc32(name.encode()) % 100003) / 997.0
    i = torch.arange(n, dtype=torch.float64)
    u = torch.frac(torch.abs(torch.sin(i * 12.9898 + phase) * 43758.5453))  # in [0, 1)
    s = 2.0 * u - 1.0
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        v = s * math.sqrt(3.0 / fan_in)
    elif name.endswith("weight"):
        v = 1.0 + 0.2 * s
    else:
        v = 0.1 * s
    return v.reshape(shape).to(torch.float32)


def filled_state_dict(shapes: Iterable[Tuple[str, Iterable[int]]]) -> Dict[str, torch.Tensor]:
    """``{name: fill_value(name, shape)}`` for (name, shape) pairs (e.g. a manifest's items)."""
    return {k: fill_value(k, tuple(int(d) for d in s)) for k, s in shapes}
