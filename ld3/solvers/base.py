"""Common solver interface, input validation and the solver registry.

Every solver integrates the probability-flow ODE of a diffusion model given a *noise-prediction*
``model_fn(x, t)`` (see :func:`ld3.model_wrapper`) over a descending grid ``timesteps`` of continuous
times. Contract (DESIGN.md):

* ``sample(model_fn, x_T, timesteps, model_timesteps=None, callback=None, return_trajectory=False)``
* ``timesteps``: 1-D tensor, strictly descending from t_max to t_min, of length
  ``solver.num_timesteps(nfe)``; it may require grad, and gradients flow to it, to
  ``model_timesteps`` and to ``x_T``.
* ``model_timesteps`` (same shape): the time given to the network at each grid point when it differs
  from the integration time (LD3's decoupled t2, TimeTuner's tuned time). The solver's coefficients
  always use ``timesteps``.
* No hidden state between calls, no ``torch.no_grad`` inside, no host syncs in the step loop (the
  grid is validated once, before the loop). ``solver.nfe(len(timesteps))`` is the exact number of
  network calls.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Type

import torch

from ld3.schedules import NoiseSchedule

ModelFn = Callable[..., torch.Tensor]
Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]

_REGISTRY: Dict[str, Type["Solver"]] = {}


def register_solver(name: str) -> Callable[[Type["Solver"]], Type["Solver"]]:
    """Class decorator adding a solver to the registry under ``name``."""

    def deco(cls: Type["Solver"]) -> Type["Solver"]:
        if name in _REGISTRY:
            raise ValueError(f"solver {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> List[str]:
    """Names of all registered solvers."""
    return sorted(_REGISTRY)


def get_solver(name: str, noise_schedule: NoiseSchedule, **options: Any) -> "Solver":
    """Instantiate the solver registered as ``name`` with its options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; available solvers: {available()}")
    return _REGISTRY[name](noise_schedule, **options)


def validate_timesteps(
    timesteps: Any, noise_schedule: NoiseSchedule, expected_len: Optional[int] = None, name: str = "timesteps"
) -> torch.Tensor:
    """Check a time grid once (the schedule's one validator, :meth:`ld3.schedules.NoiseSchedule.check_grid`)."""
    return noise_schedule.check_grid(timesteps, name=name, length=expected_len)


class Solver:
    """Base class. Subclasses implement :meth:`_sample` and, if not one call per step, NFE maps."""

    name: str = "base"

    def __init__(self, noise_schedule: NoiseSchedule, **options: Any) -> None:
        if options:
            raise ValueError(f"solver {self.name!r} got unknown options {sorted(options)}")
        self.noise_schedule = noise_schedule

    # NFE <-> grid length. Default: one network call per grid point except the last.
    def nfe(self, num_timesteps: int) -> int:
        """Exact number of network calls for a grid of ``num_timesteps`` points."""
        return num_timesteps - 1

    def num_timesteps(self, nfe: int) -> int:
        """Length of the time grid that spends exactly ``nfe`` network calls."""
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        return nfe + 1

    def sample(
        self,
        model_fn: ModelFn,
        x_T: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: Optional[torch.Tensor] = None,
        callback: Callback = None,
        return_trajectory: bool = False,
    ):
        """Integrate from ``timesteps[0]`` to ``timesteps[-1]``; returns x_0 (and the trajectory)."""
        timesteps = validate_timesteps(timesteps, self.noise_schedule)
        self.check_grid_length(timesteps.numel())
        if model_timesteps is None:
            model_timesteps = timesteps
        else:
            if not isinstance(model_timesteps, torch.Tensor):
                model_timesteps = torch.as_tensor(model_timesteps, dtype=timesteps.dtype)
            if model_timesteps.shape != timesteps.shape:
                raise ValueError(
                    f"model_timesteps must have the shape of timesteps {tuple(timesteps.shape)}, "
                    f"got {tuple(model_timesteps.shape)}"
                )
            if not torch.isfinite(model_timesteps.detach()).all():
                raise ValueError(f"model_timesteps contains NaN or inf: {model_timesteps.detach().tolist()}")
        timesteps = timesteps.to(x_T.device)
        model_timesteps = model_timesteps.to(x_T.device)
        traj: Optional[List[torch.Tensor]] = [x_T] if return_trajectory else None
        x = self._sample(model_fn, x_T, timesteps, model_timesteps, callback, traj)
        if return_trajectory:
            return x, traj
        return x

    def check_grid_length(self, n: int) -> None:
        """Raise if a grid of ``n`` points does not fit this solver (override for special grids)."""
        if n < 2:
            raise ValueError(f"timesteps needs at least 2 points, got {n}")

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        callback: Callback,
        traj: Optional[List[torch.Tensor]],
    ) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """Name and options (for discretization files and manifests)."""
        return {"name": self.name}
