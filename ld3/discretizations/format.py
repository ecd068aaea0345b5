"""One file format for any discretization, plus a reader for the LD3 reference's ``best_v2.pt``.

JSON (``ld3.discretization/1``, see DESIGN.md)::

    {"format": "ld3.discretization/1", "model": "analytic_gmm", "solver": "ipndm", "nfe": 5,
     "time_unit": "t", "timesteps": [...], "model_timesteps": [...], "source": "handcrafted:edm",
     "metrics": {...}, "config": {...}}

``timesteps`` are descending; ``model_timesteps`` (same length) are the times fed to the network
(equal to ``timesteps`` unless a learner decoupled them). ``time_unit`` is ``"t"`` (the schedule's own
time; for EDM models t = sigma) or ``"sigma"`` (the EDM noise level sigma_t / alpha_t, converted
with ``noise_schedule.inverse_edm_sigma`` when the grid is used). Floats are written with Python's
shortest round-trip repr, so a save/load round trip is exact. Writes are atomic.

LD3 reference (vinhsuhi/LD3 ``trainer.py``, ``_save_checkpoint``): ``best_v2.pt`` is a dict
``{"params1", "params2", "best_t_steps"}`` with ``best_t_steps = cat([t1, t2])``, 2(N+1) values in
the model's native time (sigma for EDM models, continuous t for VP models), t1 the integration grid
and t2 the decoupled network times. It has no model, solver or NFE fields; NFE is inferred only as
"N + 1 points".
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import torch

from ld3.discretizations.base import Discretization
from ld3.schedules import TIME_UNITS
from ld3.utils.io import atomic_write_json

FORMAT = "ld3.discretization/1"
PathLike = Union[str, os.PathLike]

_REQUIRED = ("format", "timesteps")
_KNOWN = (
    "format", "model", "solver", "nfe", "time_unit", "timesteps", "model_timesteps", "source", "metrics", "config",
)


def _as_list(x: Any, name: str) -> list:
    t = x.detach().cpu().to(torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 numbers, got shape {tuple(t.shape)}")
    vals = [float(v) for v in t.tolist()]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name} contains NaN or inf: {vals}")
    return vals


def _check_descending(vals: Sequence[float], name: str, where: str) -> None:
    if not all(a > b for a, b in zip(vals[:-1], vals[1:], strict=True)):
        raise ValueError(f"{where}: {name} must be strictly descending, got {list(vals)}")


def to_dict(d: Discretization) -> Dict[str, Any]:
    """The JSON object of a discretization (validates it first)."""
    ts = _as_list(d.timesteps, "timesteps")
    _check_descending(ts, "timesteps", "discretization")
    mts = ts if d.model_timesteps is None else _as_list(d.model_timesteps, "model_timesteps")
    if len(mts) != len(ts):
        raise ValueError(f"model_timesteps has {len(mts)} values, timesteps has {len(ts)}")
    if d.time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit={d.time_unit!r} is not supported; allowed: {list(TIME_UNITS)}")
    if d.nfe is not None and (isinstance(d.nfe, bool) or not isinstance(d.nfe, int) or d.nfe < 1):
        raise ValueError(f"nfe must be an integer >= 1 or None, got {d.nfe!r}")
    obj = {
        "format": FORMAT,
        "model": d.model,
        "solver": d.solver,
        "nfe": d.nfe,
        "time_unit": d.time_unit,
        "timesteps": ts,
        "model_timesteps": mts,
        "source": d.source,
        "metrics": dict(d.metrics or {}),
        "config": dict(d.config or {}),
    }
    json.dumps(obj, allow_nan=False)  # fail here, not half-way through a write
    return obj


def from_dict(obj: Dict[str, Any], where: str = "discretization") -> Discretization:
    """Parse and validate a JSON object of the ``ld3.discretization/1`` format."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    if obj["format"] != FORMAT:
        raise ValueError(f"{where}: format={obj['format']!r} is not supported; expected {FORMAT!r}")
    unknown = sorted(set(obj) - set(_KNOWN))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {list(_KNOWN)}")
    ts = _as_list(obj["timesteps"], f"{where}: timesteps")
    _check_descending(ts, "timesteps", where)
    mts_raw = obj.get("model_timesteps")
    mts = None if mts_raw is None else _as_list(mts_raw, f"{where}: model_timesteps")
    if mts is not None and len(mts) != len(ts):
        raise ValueError(f"{where}: model_timesteps has {len(mts)} values, timesteps has {len(ts)}")
    unit = obj.get("time_unit", "t")
    if unit not in TIME_UNITS:
        raise ValueError(f"{where}: time_unit={unit!r} is not supported; allowed: {list(TIME_UNITS)}")
    nfe = obj.get("nfe")
    if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
        raise ValueError(f"{where}: nfe must be an integer >= 1 or null, got {nfe!r}")
    return Discretization(
        timesteps=torch.tensor(ts, dtype=torch.float64),
        model_timesteps=None if mts is None else torch.tensor(mts, dtype=torch.float64),
        model=obj.get("model"),
        solver=obj.get("solver"),
        nfe=nfe,
        time_unit=unit,
        source=obj.get("source") or "unknown",
        metrics=dict(obj.get("metrics") or {}),
        config=dict(obj.get("config") or {}),
    )


def save(
    path: PathLike,
    timesteps: Union[Discretization, torch.Tensor, Sequence[float]],
    *,
    model: str | None = None,
    solver: str | None = None,
    nfe: int | None = None,
    model_timesteps: Union[torch.Tensor, Sequence[float]] | None = None,
    time_unit: str | None = None,
    source: str | None = None,
    metrics: Dict[str, Any] | None = None,
    config: Dict[str, Any] | None = None,
) -> Path:
    """Write a discretization JSON file atomically and return its path.

    ``timesteps`` is a :class:`Discretization` (fields given here override its own) or a descending
    1-D tensor/sequence (then ``time_unit`` defaults to ``"t"`` and ``source`` to ``"unknown"``).
    """
    if isinstance(timesteps, Discretization):
        base = timesteps
    else:
        base = Discretization(timesteps=torch.as_tensor(timesteps, dtype=torch.float64))
    d = Discretization(
        timesteps=base.timesteps,
        model_timesteps=base.model_timesteps if model_timesteps is None else torch.as_tensor(model_timesteps),
        model=base.model if model is None else model,
        solver=base.solver if solver is None else solver,
        nfe=base.nfe if nfe is None else nfe,
        time_unit=base.time_unit if time_unit is None else time_unit,
        source=base.source if source is None else source,
        metrics={**base.metrics, **(metrics or {})},
        config={**base.config, **(config or {})},
    )
    return atomic_write_json(path, to_dict(d))


def load_ld3_checkpoint(path: PathLike) -> Discretization:
    """Read the LD3 reference's ``best_v2.pt`` / ``best_v1.pt`` / ``t_steps.pt`` (see module docstring)."""
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        if "best_t_steps" not in obj:
            raise ValueError(f"{path}: an LD3 checkpoint must hold 'best_t_steps'; found keys {sorted(obj)}")
        steps = obj["best_t_steps"]
    elif isinstance(obj, torch.Tensor):  # t_steps.pt: the bare cat([t1, t2])
        steps = obj
    else:
        raise ValueError(f"{path}: expected a dict with 'best_t_steps' or a tensor, got {type(obj).__name__}")
    steps = torch.as_tensor(steps).detach().to(torch.float64).flatten()
    if steps.numel() < 4 or steps.numel() % 2:
        raise ValueError(f"{path}: best_t_steps must hold 2(N+1) >= 4 values (cat of t1 and t2), got {steps.numel()}")
    half = steps.numel() // 2
    t1, t2 = steps[:half].clone(), steps[half:].clone()
    where = f"{path}: best_t_steps[:{half}] (t1)"
    _check_descending(t1.tolist(), "t1", where)
    if not torch.isfinite(t2).all():
        raise ValueError(f"{path}: t2 contains NaN or inf")
    return Discretization(
        timesteps=t1,
        model_timesteps=t2,
        nfe=None,
        time_unit="t",
        source="learned:ld3-reference",
        config={"file": str(path), "num_points": half},
    )


def load(path: PathLike) -> Discretization:
    """Read a discretization: ``.json`` in our format, ``.pt``/``.pth`` from the LD3 reference."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"discretization file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return load_ld3_checkpoint(path)
    if suffix != ".json":
        raise ValueError(f"{path}: unknown discretization file type {suffix!r}; expected .json, .pt or .pth")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return from_dict(obj, where=str(path))
