"""Time discretizations: hand-crafted schedules, the GITS / DMN / AYS baselines, learned grids, one file format.

``get_timesteps(kind, noise_schedule, nfe, solver=None, **options)`` returns a 1-D float64 tensor of
times, descending from t_max to t_min, of length ``solver.num_timesteps(nfe)`` when a solver (object
or registry name) is given, else ``nfe + 1``. ``get_discretization`` returns the same grid as a
:class:`Discretization` with its provenance (and the decoupled ``model_timesteps`` of learned
files). Kinds (``available()``): time_uniform, time_quadratic, logSNR, edm, poly (handcrafted.py),
gits, dmn, ays, learned, linspace / trailing (spacing.py: diffusers' ``timestep_spacing``).
``save``/``load`` read and write the ``ld3.discretization/1`` JSON format;
``load`` also reads the LD3 reference's ``best_v2.pt``. See docs/discretizations.md.
"""

from __future__ import annotations

from typing import Any

import torch

from ld3.discretizations import ays, dmn, gits, handcrafted, learned, spacing  # noqa: F401  (register the kinds)
from ld3.discretizations.base import (
    Discretization,
    Request,
    allowed_options,
    available,
    canonical_name,
    check_grid,
    check_nfe,
    json_safe,
    lookup,
    register_kind,
)
from ld3.discretizations.format import FORMAT, from_dict, load, save, to_dict
from ld3.discretizations.gits import GITSCost, gits_cost_matrix, gits_select
from ld3.schedules import NoiseSchedule


def _resolve_solver(solver: Any, noise_schedule: NoiseSchedule):
    if solver is None or not isinstance(solver, str):
        if solver is not None and not hasattr(solver, "num_timesteps"):
            raise ValueError(f"solver must be a solver name or a Solver object, got {solver!r}")
        return solver
    from ld3.solvers import get_solver

    return get_solver(solver, noise_schedule)


def get_discretization(
    kind: str, noise_schedule: NoiseSchedule, nfe: int, solver: Any = None, **options: Any
) -> Discretization:
    """Build the ``kind`` grid for ``nfe`` network calls (see the module docstring)."""
    fn = lookup(kind)
    name = canonical_name(kind)
    if not isinstance(noise_schedule, NoiseSchedule):
        raise ValueError(f"noise_schedule must be a NoiseSchedule, got {type(noise_schedule).__name__}")
    nfe = check_nfe(nfe)
    allowed = allowed_options(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"discretization kind {name!r} got unknown option(s) {unknown}; allowed: {allowed}")
    solver = _resolve_solver(solver, noise_schedule)
    num_points = nfe + 1 if solver is None else int(solver.num_timesteps(nfe))
    req = Request(noise_schedule=noise_schedule, nfe=nfe, num_points=num_points, solver=solver)
    out = fn(req, **options)
    if not isinstance(out, Discretization):
        out = Discretization(timesteps=out, source=f"handcrafted:{name}")
    out.timesteps = check_grid(out.timesteps, noise_schedule, num_points, f"{name} timesteps")
    if out.model_timesteps is not None and out.model_timesteps.shape != out.timesteps.shape:
        raise ValueError(f"{name}: model_timesteps shape {tuple(out.model_timesteps.shape)} != timesteps shape")
    if out.nfe is None:
        out.nfe = nfe
    if out.solver is None and req.solver_name is not None:
        out.solver = req.solver_name
    out.config = {"kind": name, **json_safe(options), **out.config}
    return out


def get_timesteps(
    kind: str, noise_schedule: NoiseSchedule, nfe: int, solver: Any = None, **options: Any
) -> torch.Tensor:
    """The ``kind`` time grid (1-D float64, descending, exact endpoints) for ``nfe`` network calls."""
    return get_discretization(kind, noise_schedule, nfe, solver=solver, **options).timesteps


__all__ = [
    "FORMAT",
    "Discretization",
    "GITSCost",
    "Request",
    "available",
    "from_dict",
    "get_discretization",
    "get_timesteps",
    "gits_cost_matrix",
    "gits_select",
    "load",
    "register_kind",
    "save",
    "to_dict",
]
