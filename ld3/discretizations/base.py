"""The discretization record, the registry of kinds, and the checks every kind shares.

A *kind* is a function ``fn(request, **options)`` registered with :func:`register_kind`. It receives a
:class:`Request` (noise schedule, NFE, solver, grid length) and returns either a 1-D tensor of times
or a :class:`Discretization`. :func:`build` validates the request and the options against the
function's signature, calls it, and checks the result (length, finite, strictly descending, inside
the schedule's range, endpoints as requested).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Union

import torch

from ld3.schedules import NoiseSchedule
from ld3.utils.plain import json_safe  # noqa: F401  (re-exported for the kinds)

TimeLike = Union[float, torch.Tensor]



@dataclass
class Discretization:
    """A time grid plus what is known about where it came from.

    Attributes:
        timesteps: 1-D float64 tensor, strictly descending from t_max to t_min (the integration grid).
        model_timesteps: the times given to the network when they differ (LD3's t2), else None.
        model, solver, nfe: the zoo id, solver name and NFE the grid was made for (None = unknown).
        time_unit: ``"t"`` (the schedule's own time) or ``"sigma"`` (EDM noise level sigma/alpha).
        source: e.g. ``handcrafted:edm``, ``gits``, ``dmn``, ``ays:sd15``, ``learned:ld3``.
        metrics: free-form numbers (validation loss, FID, ...).
        config: the options that produced it (JSON-serialisable).
    """

    timesteps: torch.Tensor
    model_timesteps: torch.Tensor | None = None
    model: str | None = None
    solver: str | None = None
    nfe: int | None = None
    time_unit: str = "t"
    source: str = "unknown"
    metrics: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.timesteps.numel())

    @property
    def recorded_solver_options(self) -> Dict[str, Any]:
        """Solver options the file says its grid needs (``config.solver_options``, e.g. ``convert_at``); {} if none."""
        return dict((self.config.get("solver_options") if isinstance(self.config, dict) else None) or {})


@dataclass
class Request:
    """What a kind is asked for: ``num_points`` times for ``nfe`` network calls of ``solver``."""

    noise_schedule: NoiseSchedule
    nfe: int
    num_points: int
    solver: Any = None  # a Solver object or None

    @property
    def solver_name(self) -> str | None:
        return None if self.solver is None else getattr(self.solver, "name", type(self.solver).__name__)


KindFn = Callable[..., Union[torch.Tensor, Discretization]]
_KINDS: Dict[str, KindFn] = {}


def register_kind(name: str) -> Callable[[KindFn], KindFn]:
    """Decorator adding a discretization kind under ``name`` (looked up case-insensitively)."""

    def deco(fn: KindFn) -> KindFn:
        if name.lower() in {k.lower() for k in _KINDS}:
            raise ValueError(f"discretization kind {name!r} is already registered")
        _KINDS[name] = fn
        return fn

    return deco


def available() -> List[str]:
    """Names of all registered kinds."""
    return sorted(_KINDS, key=str.lower)


def lookup(kind: str) -> KindFn:
    """The function of ``kind`` (case-insensitive), or a ValueError listing the known kinds."""
    if not isinstance(kind, str):
        raise ValueError(f"kind must be a string, got {kind!r}; available kinds: {available()}")
    for name, fn in _KINDS.items():
        if name.lower() == kind.lower():
            return fn
    raise ValueError(f"unknown discretization kind {kind!r}; available kinds: {available()}")


def canonical_name(kind: str) -> str:
    lookup(kind)
    return next(n for n in _KINDS if n.lower() == kind.lower())


def allowed_options(fn: KindFn) -> List[str]:
    params = inspect.signature(fn).parameters
    return [p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY]


# ----------------------------------------------------------------------------- checks
def check_nfe(nfe: Any) -> int:
    """nfe must be an integer >= 1 (bools and floats with a fraction are rejected)."""
    if isinstance(nfe, bool) or not isinstance(nfe, (int,)) and not (
        isinstance(nfe, float) and float(nfe).is_integer()
    ):
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    nfe = int(nfe)
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return nfe


def as_time(value: TimeLike, name: str) -> torch.Tensor:
    """A scalar float64 tensor (keeps autograd history when ``value`` is a tensor)."""
    t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=torch.float64)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(t.shape)}")
    t = t.reshape(()).to(torch.float64)
    if not math.isfinite(float(t.detach())):
        raise ValueError(f"{name} must be finite, got {float(t.detach())}")
    return t


def time_range(ns: NoiseSchedule, t_min: TimeLike | None, t_max: TimeLike | None):
    """Resolve (t_min, t_max): defaults are the schedule's eps and T; both must lie in [eps, T]."""
    lo = as_time(ns.eps if t_min is None else t_min, "t_min")
    hi = as_time(ns.T if t_max is None else t_max, "t_max")
    lo_f, hi_f = float(lo.detach()), float(hi.detach())
    if not lo_f < hi_f:
        raise ValueError(f"need t_min < t_max, got t_min={lo_f}, t_max={hi_f}")
    ns.check_t(lo.detach(), name="t_min")
    ns.check_t(hi.detach(), name="t_max")
    return lo, hi


def with_endpoints(interior: torch.Tensor, t_max: torch.Tensor, t_min: torch.Tensor) -> torch.Tensor:
    """cat([t_max], interior, [t_min]): makes the endpoints exact (and keeps gradients)."""
    return torch.cat([t_max.reshape(1), interior.reshape(-1).to(torch.float64), t_min.reshape(1)])


def check_grid(t: torch.Tensor, ns: NoiseSchedule, num_points: int, what: str) -> torch.Tensor:
    """The result of a kind: 1-D, ``num_points`` long, finite, strictly descending, inside [eps, T]
    (the schedule's one validator, :meth:`ld3.schedules.NoiseSchedule.check_grid`)."""
    return ns.check_grid(t, name=what, length=num_points)
