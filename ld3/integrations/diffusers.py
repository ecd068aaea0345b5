"""``LD3Scheduler``: any ld3 solver on any (hand-crafted or learned) discretization as a diffusers scheduler.

Usage (see docs/diffusers.md)::

    from ld3.integrations.diffusers import LD3Scheduler
    pipe.scheduler = LD3Scheduler.from_discretization("runs/x/discretization.json", pipe.scheduler.config)
    image = pipe(prompt, num_inference_steps=None).images[0]   # the learned file fixes the step count

Time conventions. The schedule is the discrete VP schedule of the diffusers config's betas
(``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2 / sigmoid, or ``trained_betas``): training
step k (alphas_cumprod[k]) is the continuous time t = (k + 1) / N, N = ``num_train_timesteps``, as in
:class:`ld3.schedules.NoiseScheduleVP`. The UNet receives k = N t - 1, which is fractional for the
decoupled network times of a learned file and for hand-crafted kinds such as ``logSNR`` (see
``round_model_timesteps``). The grid ends at t = 1/N (diffusers' ``final_sigmas_type='sigma_min'``); the
schedule is not defined below that, so the 'zero' final sigma of some diffusers schedulers is not offered.

How ``step`` drives a pure solver. ld3 solvers are pure functions
``solver.sample(model_fn, x_T, timesteps, model_timesteps)`` that call ``model_fn`` themselves, while a
pipeline calls the network and hands each output to ``step``. ``step`` *replays* the solver: it re-runs
``solver.sample`` from x_T with a ``model_fn`` that returns the network outputs received so far (converted
to noise predictions) and stops the run, by an exception, at the first call it has no output for; the state
that call asked about is returned as ``prev_sample`` (the network's next input). After the last output the
run completes and returns x_0. No network call is repeated and no thread is used; the cost is
O(steps^2) cheap elementwise updates per run (137 ms for 50 steps on a 1x4x64x64 latent on CPU), and the
result is the solver's own result bit for bit. Per-run state (x_T, the outputs, the step index) is reset by
``set_timesteps`` and at the first ``step`` after a completed run, so a scheduler can be reused for batches of
any size.
``step`` checks that ``sample`` is the state it returned last (pipelines that edit the latents between steps,
such as inpainting, are not supported).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
except ImportError as _e:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "ld3.integrations.diffusers needs the optional package 'diffusers': pip install '.[zoo]' (or diffusers)"
    ) from _e

from ld3.discretizations import get_discretization
from ld3.discretizations import load as load_discretization
from ld3.discretizations.spacing import TIMESTEP_SPACINGS, spacing_grid, spacing_train_steps  # noqa: F401
from ld3.models.zoo.diffusers_models import PREDICTION_TYPES, betas_from_scheduler_config
from ld3.schedules import NoiseScheduleVP
from ld3.solvers import get_solver

#: DEISMultistepScheduler options that the deis solver takes under the same names
DEIS_OPTION_NAMES = ("solver_order", "solver_type", "algorithm_type", "lower_order_final", "use_karras_sigmas",
                     "thresholding", "dynamic_thresholding_ratio", "sample_max_value")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a run is integrated in: float32 for half-precision states (as diffusers' multistep schedulers
    upcast in ``step``), else the state's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Pause(Exception):
    """Raised by the replay ``model_fn`` at the first network call without a stored output."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__("network output needed")
        self.x = x


class LD3Scheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running an ld3 solver on an ld3 discretization (see the module docstring).

    Config (all JSON-serialisable, saved by ``save_config``):
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the training noise schedule,
            with diffusers' names and meanings.
        prediction_type: 'epsilon', 'sample' or 'v_prediction' (what the UNet outputs).
        timestep_spacing, steps_offset: diffusers' spacing of integer steps ('linspace', 'leading',
            'trailing'), used when neither ``discretization`` nor learned timesteps are set.
        solver, solver_options: an ld3 solver (``ld3.solvers.available()``) and its options.
        discretization, discretization_options: an ld3 discretization kind (``ld3.discretizations.available()``,
            e.g. 'logSNR', 'edm', 'time_uniform') built for the ``num_inference_steps`` of ``set_timesteps``.
        learned_timesteps, learned_model_timesteps: a fixed grid in continuous time t (and its decoupled network
            times); set by :meth:`from_discretization`.
        round_model_timesteps: hand the UNet round(N t - 1) instead of the fractional N t - 1 (for networks
            that only accept integer steps); the solver then also evaluates its conversions at the rounded time.
    """

    order = 1
    _compatibles: List[str] = []

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        solver: str = "dpm_solver++",
        solver_options: Optional[Dict[str, Any]] = None,
        discretization: Optional[str] = None,
        discretization_options: Optional[Dict[str, Any]] = None,
        learned_timesteps: Optional[List[float]] = None,
        learned_model_timesteps: Optional[List[float]] = None,
        round_model_timesteps: bool = False,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; allowed: {list(PREDICTION_TYPES)}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing={timestep_spacing!r} is not supported; allowed: {list(TIMESTEP_SPACINGS)}"
            )
        if trained_betas is not None:
            trained_betas = [float(b) for b in np.asarray(trained_betas, dtype=np.float64).reshape(-1)]
        betas = betas_from_scheduler_config({
            "num_train_timesteps": num_train_timesteps, "beta_start": beta_start, "beta_end": beta_end,
            "beta_schedule": beta_schedule, "trained_betas": trained_betas,
        })
        self.noise_schedule = NoiseScheduleVP("discrete", betas=betas)
        self.num_train = int(num_train_timesteps)
        self.solver = get_solver(solver, self.noise_schedule, **dict(solver_options or {}))
        if discretization is not None and learned_timesteps is not None:
            raise ValueError("give either discretization (a kind) or learned_timesteps, not both")
        if learned_timesteps is None and learned_model_timesteps is not None:
            raise ValueError("learned_model_timesteps needs learned_timesteps")
        self._learned: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        if learned_timesteps is not None:
            ts = self.noise_schedule.check_grid(learned_timesteps, name="learned_timesteps").to(torch.float64)
            self.solver.check_grid_length(ts.numel())
            if learned_model_timesteps is None:
                mts = ts.clone()
            else:
                mts = torch.as_tensor(learned_model_timesteps, dtype=torch.float64)
                if mts.shape != ts.shape:
                    raise ValueError(
                        f"learned_model_timesteps has {mts.numel()} values, learned_timesteps has {ts.numel()}"
                    )
            self._learned = (ts, mts)
        self.init_noise_sigma = float(self.noise_schedule.prior_scale)
        self.num_inference_steps: Optional[int] = None
        self.timesteps = torch.empty(0)
        self._grid: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._call_t: List[torch.Tensor] = []
        self._begin_index: Optional[int] = None
        self._reset_run()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' ``from_config`` (reads the schedule keys of any scheduler config). For a
        ``DEISMultistepScheduler`` config (``algorithm_type='deis'``) with ``solver='deis'`` and no
        ``solver_options``, its DEIS options (``solver_order``, ``solver_type``, ``algorithm_type``,
        ``lower_order_final``, ``use_karras_sigmas``, thresholding) become the solver's, so the scheduler runs
        the same method. A config with ``use_karras_sigmas=True`` (any scheduler) selects the ``karras_sigmas``
        discretization (diffusers' Karras grid) unless a discretization is given."""
        if config is not None and not isinstance(config, (str, bytes)) and hasattr(config, "get"):
            solver = kwargs.get("solver", config.get("solver"))
            is_deis = config.get("_class_name") == "DEISMultistepScheduler" or config.get("algorithm_type") == "deis"
            if (is_deis and solver == "deis"
                    and kwargs.get("solver_options", config.get("solver_options")) is None):
                kwargs["solver_options"] = {k: config[k] for k in DEIS_OPTION_NAMES if k in config}
            # a diffusers config's use_karras_sigmas=True is its grid: diffusers' Karras grid, unless one is given
            if (config.get("use_karras_sigmas") and kwargs.get("discretization", config.get("discretization")) is None
                    and kwargs.get("learned_timesteps", config.get("learned_timesteps")) is None):
                kwargs["discretization"] = "karras_sigmas"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_discretization(
        cls, path: Any, scheduler_config: Optional[Dict[str, Any]] = None, **overrides: Any
    ) -> "LD3Scheduler":
        """A scheduler for the learned (or any saved) discretization file ``path`` (``ld3.discretization/1``
        JSON, or the LD3 reference's ``best_v2.pt``), with the noise schedule of ``scheduler_config`` (e.g.
        ``pipe.scheduler.config``). The solver is the file's unless ``solver=`` is given; ``solver_options``
        (the options the grid was learned with) should be passed when they differ from the solver's defaults.
        The x0 conversion rule a file records (``config.solver_options.convert_at``) is applied when the solver
        has that option and ``solver_options`` does not set it.
        """
        from ld3.config_schema import solver_option_defaults

        d = load_discretization(path)
        config = {k: v for k, v in dict(scheduler_config or {}).items() if not k.startswith("_")}
        config.update(overrides)
        solver = config.get("solver") or d.solver
        if not solver:
            raise ValueError(f"{path}: the file names no solver; pass solver=... (one of ld3.solvers.available())")
        config["solver"] = solver
        rule = d.recorded_solver_options.get("convert_at")
        if rule is not None and "convert_at" in solver_option_defaults(solver):
            config["solver_options"] = {"convert_at": rule, **dict(config.get("solver_options") or {})}
        probe = cls.from_config({**config, "learned_timesteps": None, "learned_model_timesteps": None,
                                 "discretization": None})
        ns = probe.noise_schedule
        ts = ns.time_from_unit(d.timesteps, d.time_unit)
        mts = ts if d.model_timesteps is None else ns.time_from_unit(d.model_timesteps, d.time_unit)
        config["learned_timesteps"] = [float(v) for v in ts.tolist()]
        config["learned_model_timesteps"] = [float(v) for v in mts.tolist()]
        config["discretization"] = None
        return cls.from_config(config)

    @property
    def learned_nfe(self) -> Optional[int]:
        """Network calls of the learned grid (the ``num_inference_steps`` to pass), None without one."""
        return None if self._learned is None else int(self.solver.nfe(self._learned[0].numel()))

    # ------------------------------------------------------------------ diffusers interface
    def __len__(self) -> int:
        return self.num_train

    def _unet_time(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.num_train - 1.0

    def _from_unet_time(self, k: torch.Tensor) -> torch.Tensor:
        return (k + 1.0) / self.num_train

    def _grid_for(self, num_inference_steps: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._learned is not None:
            ts, mts = self._learned
            nfe = self.solver.nfe(ts.numel())
            if num_inference_steps is not None and int(num_inference_steps) != nfe:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} but the learned discretization spends exactly {nfe} "
                    f"network calls; pass {nfe} or None"
                )
            return ts.clone(), mts.clone()
        if num_inference_steps is None:
            raise ValueError("num_inference_steps is needed (the scheduler has no learned discretization)")
        nfe = int(num_inference_steps)
        if self.config.discretization is not None:
            d = get_discretization(self.config.discretization, self.noise_schedule, nfe, solver=self.solver,
                                   **dict(self.config.discretization_options or {}))
            ts = d.timesteps.to(torch.float64)
            mts = ts.clone() if d.model_timesteps is None else d.model_timesteps.to(torch.float64)
            return ts, mts
        if getattr(self.solver, "use_karras_sigmas", False):  # deis(use_karras_sigmas=True) needs that grid
            d = get_discretization("karras_sigmas", self.noise_schedule, nfe, solver=self.solver)
            return d.timesteps.to(torch.float64), d.model_timesteps.to(torch.float64)
        n_points = int(self.solver.num_timesteps(nfe))
        ts = spacing_grid(self.config.timestep_spacing, self.num_train, n_points, self.config.steps_offset)
        return ts, ts.clone()

    def _custom_grid(self, timesteps: Optional[Sequence[float]], sigmas: Optional[Sequence[float]]) -> torch.Tensor:
        """The grid t of diffusers-style custom ``timesteps`` (steps k of the network calls; the end point
        t = 1 / N is appended, as ``final_sigmas_type='sigma_min'``) or ``sigmas`` (noise levels sigma / alpha of
        all points, end point included as in EulerDiscreteScheduler; a final 0 stands for t = 1 / N)."""
        if self._learned is not None:
            raise ValueError("this LD3Scheduler holds a learned discretization; custom timesteps / sigmas are not "
                             "accepted (build one without it)")
        ns = self.noise_schedule
        if timesteps is not None:
            ks = torch.as_tensor(list(timesteps), dtype=torch.float64).reshape(-1)
            ts = torch.cat([self._from_unet_time(ks), torch.tensor([ns.eps], dtype=torch.float64)])
            what = f"timesteps={ks.tolist()} (training steps of the network calls, descending, each > 0)"
        else:
            sig = torch.as_tensor(list(sigmas), dtype=torch.float64).reshape(-1)
            if sig.numel() < 2 or not bool((sig[:-1] > 0).all()) or float(sig[-1]) < 0:
                raise ValueError(f"sigmas={sig.tolist()} must be positive (the last may be 0) with at least 2 values")
            last_zero = float(sig[-1]) == 0.0
            ts = ns.inverse_edm_sigma(sig[:-1] if last_zero else sig)
            if last_zero:
                ts = torch.cat([ts, torch.tensor([ns.eps], dtype=torch.float64)])
            # float32 sigmas at the schedule's ends are the ends
            ts = torch.where((ts - ns.T).abs() <= 1e-6 * ns.T, torch.full_like(ts, ns.T), ts)
            ts = torch.where((ts - ns.eps).abs() <= 1e-6 * ns.eps, torch.full_like(ts, ns.eps), ts)
            what = f"sigmas={sig.tolist()} (descending noise levels inside the schedule's range)"
        try:
            ts = ns.check_grid(ts, name="the custom grid")
            self.solver.check_grid_length(ts.numel())
        except ValueError as e:
            raise ValueError(f"{what} give an invalid grid: {e}") from None
        return ts

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[Sequence[float]] = None,
        sigmas: Optional[Sequence[float]] = None,
    ) -> None:
        """Build the grid for ``num_inference_steps`` network calls (None or the file's count for a learned
        discretization) and reset the per-run state. ``self.timesteps`` are the UNet inputs, one per network
        call, in call order (float32; fractional where the grid is not on training steps).

        Instead of ``num_inference_steps``, custom ``timesteps`` (training steps of the network calls) or
        ``sigmas`` (noise levels of all grid points) may be given, as to diffusers' DPMSolverMultistep /
        EulerDiscrete schedulers (and through a pipeline's ``timesteps=`` / ``sigmas=`` arguments); see
        :meth:`_custom_grid`. They set the integration grid; the network is called at its points.
        """
        if sum(v is not None for v in (num_inference_steps, timesteps, sigmas)) > 1:
            raise ValueError("pass only one of num_inference_steps, timesteps and sigmas")
        if timesteps is not None or sigmas is not None:
            ts = self._custom_grid(timesteps, sigmas)
            mts = ts.clone()
        else:
            ts, mts = self._grid_for(num_inference_steps)
        if self.config.round_model_timesteps:
            mts = self._from_unet_time(torch.round(self._unet_time(mts)))
        calls: List[torch.Tensor] = []

        def probe(x: torch.Tensor, t: Any, *args: Any, **kw: Any) -> torch.Tensor:
            t = torch.as_tensor(t, dtype=torch.float64)
            calls.append(t.reshape(-1)[0].detach().clone())
            return torch.zeros_like(x)

        # the times of the network calls do not depend on the state: a dry run on a 1-element state finds them
        self.solver.sample(probe, torch.zeros(1, 1, dtype=torch.float64), ts, mts)
        self._grid = (ts, mts)
        self._call_t = calls
        unet_t = self._unet_time(torch.stack(calls))
        if self.config.round_model_timesteps:
            unet_t = torch.round(unet_t)
        self.timesteps = unet_t.to(device=device, dtype=torch.float32)
        self.num_inference_steps = len(calls)
        self._begin_index = None
        self._reset_run()

    def _reset_run(self) -> None:
        self._step_index = self._begin_index or 0
        self._x_T: Optional[torch.Tensor] = None
        self._eps: List[torch.Tensor] = []
        self._last: Optional[torch.Tensor] = None

    @property
    def step_index(self) -> int:
        """Index in ``timesteps`` of the next network call (the run starts at ``begin_index`` or 0)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """The call a run starts at (img2img), None for 0; reset by ``set_timesteps``."""
        return self._begin_index

    def _one_call_per_point(self) -> bool:
        ts, mts = self._grid
        return len(self._call_t) == ts.numel() - 1 and all(
            float(c) == float(m) for c, m in zip(self._call_t, mts[:-1].tolist(), strict=True))

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start runs at network call ``begin_index`` (img2img pipelines call this after ``set_timesteps``): the
        solver then runs on the grid from point ``begin_index`` on, its multistep history starting afresh there,
        as diffusers' multistep schedulers do. Needs a solver with one network call per grid point."""
        if self._grid is None:
            raise ValueError("call set_timesteps before set_begin_index")
        b = int(begin_index)
        if not 0 <= b < len(self._call_t):
            raise ValueError(f"begin_index={begin_index} is outside 0..{len(self._call_t) - 1}")
        if b and not self._one_call_per_point():
            raise ValueError(f"solver {self.solver.name!r} does not make one network call per grid point, so a run "
                             f"cannot start at call {b}")
        self._begin_index = b
        self._reset_run()

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t noise at the grid point of the network call ``timesteps`` (its integration
        time, which differs from the network time for decoupled grids); with a ``begin_index``, at that point."""
        if self._grid is None:
            raise ValueError("call set_timesteps before add_noise")
        if not self._one_call_per_point():
            raise ValueError(f"add_noise needs a solver with one network call per grid point, not {self.solver.name!r}")
        steps = torch.as_tensor(timesteps).reshape(-1).to("cpu", torch.float64)
        if self._begin_index is not None:
            idx = [self._begin_index] * steps.numel()
        else:
            unet_t = self.timesteps.to("cpu", torch.float64)
            idx = []
            for k in steps.tolist():
                hits = (unet_t - k).abs() <= 1e-4 * max(1.0, abs(k))
                if not bool(hits.any()):
                    raise ValueError(f"timestep {k} is not one of this scheduler's timesteps {unet_t.tolist()}")
                idx.append(int(hits.nonzero()[0]))
        t = self._grid[0][idx]
        log_alpha, sigma = self.noise_schedule.marginal_log_alpha_and_std(t)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        alpha = torch.exp(log_alpha).reshape(shape).to(original_samples.device, original_samples.dtype)
        sigma = sigma.reshape(shape).to(original_samples.device, original_samples.dtype)
        return alpha * original_samples + sigma * noise

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: the network takes the state x_t itself."""
        return sample

    def _to_noise(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kind = PREDICTION_TYPES[self.config.prediction_type]
        if kind == "noise":
            return out
        log_alpha, sigma = self.noise_schedule.marginal_log_alpha_and_std(t, check=False)
        alpha, sigma = torch.exp(log_alpha).to(x.device, x.dtype), sigma.to(x.device, x.dtype)
        out = out.to(x.dtype)
        if kind == "x_start":
            return (x - alpha * out) / sigma
        return alpha * out + sigma * x  # v = alpha eps - sigma x0, VP (alpha^2 + sigma^2 = 1)

    def _replay(self) -> torch.Tensor:
        outputs = iter(self._eps)

        def model_fn(x: torch.Tensor, t: Any, *args: Any, **kw: Any) -> torch.Tensor:
            eps = next(outputs, None)
            if eps is None:
                raise _Pause(x)
            return eps

        ts, mts = self._grid
        b = self._begin_index or 0
        try:
            return self.solver.sample(model_fn, self._x_T, ts[b:], mts[b:])
        except _Pause as p:
            return p.x

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        return_dict: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> Union[SchedulerOutput, Tuple[torch.Tensor]]:
        """Take the network output for the current call and return the next network input (after the last
        call: the final sample x_0). ``generator`` is accepted for pipelines and unused (the solvers are ODE
        solvers). An output with twice the sample's channels (a learned-variance UNet) keeps its first half, the
        prediction, as diffusers' schedulers with ``variance_type='learned_range'`` do."""
        if self._grid is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index >= len(self._call_t):
            self._reset_run()  # a new run on the same grid
        i = self._step_index
        if timestep is not None:
            expected = float(self.timesteps[i])
            got = float(timestep)
            if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-4):
                raise ValueError(f"step {i} got timestep={got}, expected {expected} (self.timesteps[{i}])")
        work = _work_dtype(sample.dtype)
        if i == (self._begin_index or 0):
            self._x_T = sample.to(work)
        elif sample is not self._last and not (
            sample.shape == self._last.shape and torch.equal(sample.to(self._last.dtype), self._last)
        ):
            raise ValueError(
                "sample differs from the prev_sample returned by the previous step; LD3Scheduler integrates from "
                "its own state (pipelines that modify the latents between steps are not supported)"
            )
        if (model_output.dim() >= 2 and model_output.shape[1] == 2 * sample.shape[1]
                and model_output.shape[2:] == sample.shape[2:] and model_output.shape[0] == sample.shape[0]):
            model_output = model_output[:, : sample.shape[1]]  # learned variance: (prediction, variance) channels
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        self._eps.append(self._to_noise(model_output.to(work), sample.to(work), self._call_t[i]))
        prev = self._replay().to(sample.dtype)
        self._step_index += 1
        self._last = prev
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)
