"""Common solver interface, input validation and the solver registry.

Every solver integrates the probability-flow ODE of a diffusion model given a *noise-prediction*
``model_fn(x, t)`` (see :func:`ld3.model_wrapper`) over a descending grid ``timesteps`` of continuous
times. Contract (DESIGN.md):

* ``sample(model_fn, x_T, timesteps, model_timesteps=None, callback=None, return_trajectory=False)``
* ``callback(info)`` is called after every step with a dict (as k-diffusion's samplers do): ``i`` (index
  of the grid point the step started from), ``t`` (its time), ``x`` (the state there), ``denoised`` (the
  data prediction (x - sigma eps) / alpha of the network's last call at that grid point, None for a
  point the solver jumps over without a call), ``t_next`` / ``x_next`` (where the step ended).
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
from ld3.solvers.thresholding import ThresholdingOptions, parse_thresholding_options

ModelFn = Callable[..., torch.Tensor]
#: the user's callback: called once per step with a dict (see the module docstring)
Callback = Optional[Callable[[Dict[str, Any]], None]]
#: what a solver's ``_sample`` calls after reaching grid point ``j`` with state ``x_j`` (None: nothing to do)
StepHook = Optional[Callable[[int, torch.Tensor], None]]

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
        #: Imagen dynamic thresholding (``thresholding``, ``dynamic_thresholding_ratio``, ``sample_max_value``),
        #: accepted by every solver; each update rule applies it to its data / noise predictions
        self.thresholding: ThresholdingOptions = parse_thresholding_options(options)
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
        timesteps = self.noise_schedule.check_grid(timesteps)
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
        device = x_T.device
        if timesteps.device != device:  # a no-op .to still costs a dispatch: skipped at batch-1 sampling rates
            timesteps = timesteps.to(device)
        if model_timesteps.device != device:
            model_timesteps = model_timesteps.to(device)
        if callback is None and not return_trajectory:  # the fast path: no bookkeeping at all
            return self._sample(model_fn, x_T, timesteps, model_timesteps, None)
        rec = _Recorder(self.noise_schedule, model_fn, x_T, timesteps, model_timesteps, callback)
        x = self._sample(rec.model_fn, x_T, timesteps, model_timesteps, rec.step_done)
        return (x, rec.traj) if return_trajectory else x

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
        step_done: StepHook,
    ) -> torch.Tensor:
        """The update rule: integrate ``x`` over the grid, calling ``step_done(j, x_j)`` (when not None)
        each time the state reaches grid point j."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Name and options (for discretization files and manifests)."""
        return {"name": self.name}


class _Recorder:
    """Trajectory and callback bookkeeping of one ``sample`` call (kept out of the solvers' update rules).

    Wraps ``model_fn`` to remember its recent calls (references only, no host syncs); when a step ends,
    the prediction of the network's last call at the step's start point (matched by its model time) is
    turned into ``denoised`` with the integration grid's alpha and sigma, as the solvers do.
    """

    def __init__(
        self,
        ns: NoiseSchedule,
        model_fn: ModelFn,
        x_T: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        callback: Callback,
    ) -> None:
        self.traj: List[torch.Tensor] = [x_T]
        self.callback = callback
        self.timesteps, self.model_timesteps = timesteps, model_timesteps
        self.prev, self.x_prev = 0, x_T
        self.calls: List[tuple] = []  # (x, t, eps) of the calls since the step before the last one
        self.keep_from = 0
        if callback is None:
            self.model_fn = model_fn
        else:
            log_alpha, sigma = ns.marginal_log_alpha_and_std(timesteps, check=False)
            self.alpha, self.sigma = torch.exp(log_alpha), sigma

            def recording_fn(x: torch.Tensor, t: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
                eps = model_fn(x, t, *args, **kwargs)
                self.calls.append((x, t, eps))
                return eps

            self.model_fn = recording_fn

    def _denoised(self, i: int) -> Optional[torch.Tensor]:
        target = float(self.model_timesteps[i])
        for x, t, eps in reversed(self.calls):
            t0 = t.reshape(-1)[0] if isinstance(t, torch.Tensor) else t
            if float(t0) == target:
                a, s = self.alpha[i].to(x.dtype), self.sigma[i].to(x.dtype)
                return (x - s * eps) / a
        return None

    def step_done(self, j: int, x_j: torch.Tensor) -> None:
        self.traj.append(x_j)
        if self.callback is not None:
            i = self.prev
            self.callback({
                "i": i, "t": self.timesteps[i], "x": self.x_prev, "denoised": self._denoised(i),
                "t_next": self.timesteps[j], "x_next": x_j,
            })
            # a multistep solver may call the network for point j during the step that reaches j: keep those
            self.calls = self.calls[self.keep_from:]
            self.keep_from = len(self.calls)
        self.prev, self.x_prev = j, x_j
