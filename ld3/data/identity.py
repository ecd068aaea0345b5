"""The normalised identity of a teacher: one description, whichever entry point made the data.

``gen_data.py`` describes its solver with the full option group of ``configs/solver/<name>.yaml``;
``main.py`` describes the teacher in its ``teacher`` section with the same layout but only the options
that differ (``teacher.solver.options: {}``). Both mean the same teacher. Before an identity is written to a manifest or
compared with one, :func:`normalise_identity` fills every option a user did not give with its default,
taken from the one place that defines it:

* solver options: the solver itself (``get_solver(name, schedule, **options).describe()``), so the
  defaults of ``configs/solver/*.yaml`` and of the solver class can never disagree with the data;
* discretization options: the keyword defaults of the registered kind (runtime-only arguments such as
  a device or a progress flag are not part of the identity).

Normalising is idempotent, and manifests written before it existed compare equal once normalised.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

#: keyword arguments of discretization kinds that say how to compute, not what (never in an identity)
RUNTIME_DISCRETIZATION_ARGS = frozenset(
    {"model_fn", "x_T", "shape", "generator", "device", "dtype", "cost", "progress", "allow_mismatch"}
)
_SCALARS = (type(None), bool, int, float, str)


def normalise_solver(group: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"name", "options"}`` with every solver option filled in (raises ValueError for bad options)."""
    from ld3.schedules import NoiseScheduleVP
    from ld3.solvers import get_solver

    name = group["name"]
    options = dict(group.get("options") or {})
    # the options do not depend on the schedule: any valid one serves to ask the solver for its defaults
    described = dict(get_solver(name, NoiseScheduleVP(schedule="linear"), **options).describe())
    described.pop("name", None)
    full = {k: v for k, v in described.items() if isinstance(v, _SCALARS)}
    for k, v in options.items():  # keys the solver does not describe (e.g. a seed) stay as given
        full.setdefault(k, v)
    return {"name": name, "options": dict(sorted(full.items()))}


def normalise_discretization(group: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"kind", "options"}`` with the kind's default options filled in (runtime-only ones left out)."""
    from ld3.discretizations.base import canonical_name, lookup

    kind = group["kind"]
    options = dict(group.get("options") or {})
    fn = lookup(kind)
    full: Dict[str, Any] = {}
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in RUNTIME_DISCRETIZATION_ARGS:
            continue
        if p.default is not p.empty and isinstance(p.default, _SCALARS):
            full[p.name] = p.default
    full.update({k: v for k, v in options.items() if k not in RUNTIME_DISCRETIZATION_ARGS})
    return {"kind": canonical_name(kind), "options": dict(sorted(full.items()))}


def normalise_identity(identity: Mapping[str, Any]) -> Dict[str, Any]:
    """A teacher identity (``GenDataConfig.identity()`` or a manifest's) with all defaults filled in."""
    out = dict(identity)
    if isinstance(out.get("solver"), Mapping) and "name" in out["solver"]:
        out["solver"] = normalise_solver(out["solver"])
    if isinstance(out.get("discretization"), Mapping) and "kind" in out["discretization"]:
        out["discretization"] = normalise_discretization(out["discretization"])
    return out
