"""The ``learned`` kind: a discretization read from a file (ours or the LD3 reference's ``best_v2.pt``).

The file's model, solver and NFE must match the run: ``model`` (the zoo id of the run), the solver
passed to :func:`ld3.discretizations.get_timesteps` and its NFE. A field the file or the run does
not state is not compared (LD3's ``.pt`` files state none of them). ``allow_mismatch=True`` turns a
mismatch into a warning, but never changes the grid length: the file must hold exactly
``solver.num_timesteps(nfe)`` points. Times stored as EDM noise levels (``time_unit="sigma"``) are
mapped to t with ``noise_schedule.inverse_edm_sigma``. Values outside [eps, T] by rounding only are
clamped onto the range, and endpoints within a relative 1e-6 of eps / T (float32 files such as LD3's)
are snapped to them exactly.
"""

from __future__ import annotations

import os
import warnings
from typing import Union

import torch

from ld3.discretizations.base import Discretization, Request, register_kind
from ld3.discretizations.format import load
from ld3.schedules import RANGE_TOLERANCE, NoiseSchedule


def _to_t(values: torch.Tensor, unit: str, ns: NoiseSchedule) -> torch.Tensor:
    return ns.time_from_unit(values, unit)


#: relative distance under which a stored endpoint counts as the schedule's eps / T (float32 rounding)
ENDPOINT_RTOL = 1e-6


def _clamp_rounding(t: torch.Tensor, ns: NoiseSchedule) -> torch.Tensor:
    """Clamp values outside [eps, T] by rounding only onto the range; snap rounded endpoints to eps / T."""
    tol = RANGE_TOLERANCE * max(abs(ns.T), 1.0)
    t = t.clone()
    t[(t > ns.T) & (t <= ns.T + tol)] = ns.T
    t[(t < ns.eps) & (t >= ns.eps - tol)] = ns.eps
    if abs(float(t[0]) - ns.T) <= ENDPOINT_RTOL * ns.T:
        t[0] = ns.T
    if abs(float(t[-1]) - ns.eps) <= ENDPOINT_RTOL * ns.eps:
        t[-1] = ns.eps
    return t


@register_kind("learned")
def learned(
    req: Request,
    *,
    path: Union[str, os.PathLike],
    model: str | None = None,
    allow_mismatch: bool = False,
) -> Discretization:
    """Load ``path`` and check it fits this run (model, solver, NFE, length, range)."""
    if path is None or str(path) == "":
        raise ValueError("the 'learned' kind needs path=<discretization .json or LD3 .pt file>")
    d = load(path)
    problems = []
    if model is not None and d.model is not None and d.model != model:
        problems.append(f"it was made for model {d.model!r}, this run uses model {model!r}")
    if req.solver_name is not None and d.solver is not None and d.solver != req.solver_name:
        problems.append(f"it was made for solver {d.solver!r}, this run uses solver {req.solver_name!r}")
    if d.nfe is not None and d.nfe != req.nfe:
        problems.append(f"it was made for NFE {d.nfe}, this run uses NFE {req.nfe}")
    rule = d.recorded_solver_options.get("convert_at")
    run_rule = getattr(req.solver, "convert_at", None)
    if rule is not None and run_rule is not None and rule != run_rule and d.model_timesteps is not None:
        problems.append(f"its network times were learned with the solver's convert_at={rule!r}, this run's solver "
                        f"uses {run_rule!r} (set solver.options.convert_at={rule})")
    if problems:
        msg = f"discretization file {str(path)!r} does not match this run: " + "; ".join(problems)
        if not allow_mismatch:
            raise ValueError(msg + " (pass allow_mismatch=True to use it anyway)")
        warnings.warn(msg, stacklevel=2)
    if len(d) != req.num_points:
        raise ValueError(
            f"discretization file {str(path)!r} holds {len(d)} time points, but NFE {req.nfe}"
            f"{'' if req.solver is None else f' with solver {req.solver_name!r}'} needs {req.num_points}"
        )
    ns = req.noise_schedule
    ts = _clamp_rounding(_to_t(d.timesteps, d.time_unit, ns), ns)
    mts = None if d.model_timesteps is None else _clamp_rounding(_to_t(d.model_timesteps, d.time_unit, ns), ns)
    ns.check_t(ts, name=f"timesteps of {path}")
    return Discretization(
        timesteps=ts,
        model_timesteps=mts,
        model=d.model if d.model is not None else model,
        solver=d.solver if d.solver is not None else req.solver_name,
        nfe=d.nfe if d.nfe is not None else req.nfe,
        time_unit="t",
        source=d.source,
        metrics=d.metrics,
        config={**d.config, "file": str(path)},
    )
