"""Noise schedules of diffusion models: pure, differentiable functions of continuous time t.

A forward process x_t = alpha_t x_0 + sigma_t eps is described by alpha(t), sigma(t) and the
half log-SNR lambda(t) = log(alpha_t / sigma_t), which is strictly decreasing in t, so it has an
inverse. Two families are supported:

* :class:`NoiseScheduleVP` (variance preserving, alpha^2 + sigma^2 = 1), following the
  continuous-time view of DPM-Solver (Lu et al. 2022, Sec. 2 and App. A; LuChengTHU/dpm-solver):
  ``'discrete'`` (DDPM-style betas or alphas_cumprod, log alpha piecewise linear in t on the grid
  t_n = n / N, n = 1..N), ``'linear'`` (continuous beta(t) = beta_0 + t (beta_1 - beta_0)) and
  ``'cosine'`` (Nichol & Dhariwal 2021).
* :class:`NoiseScheduleEDM` (Karras et al. 2022): t = sigma, alpha = 1.

Every schedule also maps t to the EDM noise level sigma~ = sigma_t / alpha_t = exp(-lambda_t) and
back, so EDM-style discretizations can be used on any model.

Conventions: each schedule class owns every fact that depends on its family, so a new family
(rectified flow, say) is one subclass of :class:`NoiseSchedule` and no other module changes:
``prior_scale`` (x_T = prior_scale * z), ``model_time_input`` / ``inverse_model_time_input`` (the time the
network was trained with), ``default_time_mode`` (LD3's ``time_mode: auto``), ``t_min`` / ``t_max`` (the
grid endpoints eps and T), ``time_unit`` and ``time_from_unit`` (grids stored in t or in the EDM sigma),
``discrete_steps`` (N of a discrete-time model), ``pixel_space_default`` (DMN's pixel / latent default)
and :meth:`NoiseSchedule.check_grid`, the one validator of a time grid used by solvers, discretizations and
learners. No module outside this one compares ``kind``.

Validation: the public methods check that t lies in [eps, T] (with a small tolerance) and raise a
``ValueError`` naming the offending value. The check needs one host sync; code that evaluates a
schedule inside a hot loop passes ``check=False`` after validating its time grid once.
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Sequence, Union

import torch

Tensorish = Union[torch.Tensor, float, Sequence[float]]

#: relative slack allowed when checking that a time lies in [eps, T]
RANGE_TOLERANCE = 1e-6
#: units a stored time grid may be in: the schedule's own t, or the EDM noise level sigma / alpha
TIME_UNITS = ("t", "sigma")


def _as_tensor(t: Tensorish) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    return torch.as_tensor(t, dtype=torch.float64)


class _InterpTable:
    """Piecewise-linear interpolation of (xp, fp), linear extrapolation beyond the ends; xp increasing.

    The result is bitwise f0 + (x - x0) (f1 - f0) / (x1 - x0) on the segment [x0, x1] holding x (the
    first / last segment beyond the ends), differentiable in x. Per (device, dtype) of the query, the
    tables are cached as the interior knots (``searchsorted`` on them gives the segment index directly)
    and one (4, segments) stack of f0, x0, f1 - f0, x1 - x0, so a call is one ``searchsorted`` and one
    ``index_select``: the fixed cost matters for sampling at batch 1.
    """

    def __init__(self, xp: torch.Tensor, fp: torch.Tensor) -> None:
        self.xp, self.fp = xp, fp
        self._cache: dict = {}

    def _tables(self, device: torch.device, dtype: torch.dtype) -> tuple:
        key = (device, dtype)
        if key not in self._cache:
            xp = self.xp.to(device=device, dtype=dtype)
            fp = self.fp.to(device=device, dtype=dtype)
            segments = torch.stack([fp[:-1], xp[:-1], fp[1:] - fp[:-1], xp[1:] - xp[:-1]])
            self._cache[key] = (xp[1:-1].contiguous(), segments)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        inner, segments = self._tables(x.device, x.dtype)
        # number of interior knots below x = the segment index, already clamped to [0, segments - 1]
        idx = torch.searchsorted(inner, x.detach().contiguous())
        f0, x0, df, dx = segments.index_select(1, idx).unbind(0)
        return f0 + (x - x0) * df / dx


class NoiseSchedule:
    """Common interface. Subclasses define ``marginal_log_mean_coeff`` and ``inverse_lambda``."""

    #: short identifier of the family, e.g. ``vp_discrete``
    kind: str = "abstract"
    T: float
    eps: float

    # ----------------------------------------------------------------- validation
    @property
    def t_min(self) -> float:
        return self.eps

    @property
    def t_max(self) -> float:
        return self.T

    def _check_range(self, lo: float, hi: float, name: str) -> None:
        """Raise unless [lo, hi] lies inside [eps, T] (up to :data:`RANGE_TOLERANCE`)."""
        tol = RANGE_TOLERANCE * max(abs(self.T), 1.0)
        if lo < self.eps - tol or hi > self.T + tol:
            bad = lo if lo < self.eps - tol else hi
            raise ValueError(
                f"{name}={bad!r} is outside the allowed range [eps, T] = [{self.eps}, {self.T}] "
                f"of the {self.kind} noise schedule"
            )

    def check_t(self, t: Tensorish, name: str = "t") -> torch.Tensor:
        """Return ``t`` as a tensor after checking it is finite and inside [eps, T]."""
        t = _as_tensor(t)
        td = t.detach()
        if not torch.isfinite(td).all():
            raise ValueError(f"{name} contains non-finite values: {td.flatten()[:8].tolist()}")
        lo, hi = td.min().item() if td.numel() else self.eps, td.max().item() if td.numel() else self.T
        self._check_range(lo, hi, name)
        return t

    def check_grid(self, timesteps: Tensorish, name: str = "timesteps", length: Optional[int] = None) -> torch.Tensor:
        """The one validator of a time grid: 1-D, at least 2 points (exactly ``length`` if given), finite,
        strictly descending (t_max -> t_min) and inside [eps, T].

        Returns ``timesteps`` itself (a sequence becomes a float64 tensor), so autograd history, dtype and
        device are kept. Costs one device -> host copy; callers validate once, outside any step loop.
        """
        if not isinstance(timesteps, torch.Tensor):
            try:
                timesteps = torch.as_tensor(timesteps, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"{name} must be a 1-D sequence of numbers, got {timesteps!r}") from e
        if timesteps.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
        n = timesteps.numel()
        if length is not None and n != length:
            raise ValueError(f"{name} has {n} points, {length} needed")
        if n < 2:
            raise ValueError(f"{name} needs at least 2 points, got {n}")
        # one device->host copy, then checks on a list of Python floats (no further syncs; on grids of
        # solver size this costs half of numpy's per-call overhead, which matters for sampling at batch 1)
        td = timesteps.detach().to("cpu", torch.float64).tolist()
        if not all(map(math.isfinite, td)):
            raise ValueError(f"{name} contains NaN or inf: {td}")
        if not all(map(operator.gt, td, td[1:])):
            raise ValueError(f"{name} must be strictly descending (t_max -> t_min), got {td}")
        self._check_range(td[-1], td[0], name)
        return timesteps

    # ----------------------------------------------------------------- conventions
    #: unit of this schedule's own time as written in discretization files: ``"t"``, or ``"sigma"`` when t
    #: *is* the EDM noise level sigma / alpha (then a grid stored in sigma needs no conversion)
    time_unit: str = "t"
    #: LD3's parameterization of the grid when the config says ``time_mode: auto`` (``"lambda"`` or ``"time"``)
    default_time_mode: str = "time"
    #: whether a model of this family counts as pixel-space when nothing says otherwise (the LD3 repository's
    #: rule for its DMN baseline, ``discretizations/dmn.py``: EDM models are pixel-space, VP models latent)
    pixel_space_default: bool = False

    @property
    def prior_scale(self) -> float:
        """x_T = prior_scale * z for a unit-normal latent z (the teacher data / LD3 convention).

        1 by default: the marginal at T is close to unit normal (VP: sigma_T ~ 1, DPM-Solver / LD3).
        """
        return 1.0

    @property
    def discrete_steps(self) -> Optional[int]:
        """N for a model trained on N discrete steps (step k at time (k + 1) / N), None for continuous time."""
        return None

    def model_time_input(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous time -> the time the network was trained with (``t`` itself by default)."""
        return t

    def inverse_model_time_input(self, t_input: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`model_time_input`."""
        return t_input

    def time_from_unit(self, values: torch.Tensor, unit: str) -> torch.Tensor:
        """Times stored in ``unit`` (``"t"`` or ``"sigma"``, the EDM noise level) -> this schedule's t."""
        if unit not in TIME_UNITS:
            raise ValueError(f"time_unit={unit!r} is not supported; allowed: {list(TIME_UNITS)}")
        values = _as_tensor(values)
        if unit == "t" or unit == self.time_unit:
            return values.clone()
        return self.inverse_edm_sigma(values)

    def marginal_log_alpha_and_std(self, t: Tensorish, check: bool = True):
        """(log alpha_t, sigma_t) in one call (subclasses may share work between the two)."""
        return self.marginal_log_mean_coeff(t, check=check), self.marginal_std(t, check=check)

    # ----------------------------------------------------------------- marginals
    def marginal_log_mean_coeff(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def marginal_alpha(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        """alpha_t = exp(log alpha_t)."""
        return torch.exp(self.marginal_log_mean_coeff(t, check=check))

    def marginal_std(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        """sigma_t."""
        raise NotImplementedError

    def marginal_lambda(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        """lambda_t = log(alpha_t) - log(sigma_t)."""
        raise NotImplementedError

    def inverse_lambda(self, lamb: Tensorish) -> torch.Tensor:
        """The t with lambda(t) = lamb."""
        raise NotImplementedError

    # ----------------------------------------------------------------- EDM view
    def edm_sigma(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        """sigma~_t = sigma_t / alpha_t = exp(-lambda_t) (the EDM noise level of x_t / alpha_t)."""
        return torch.exp(-self.marginal_lambda(t, check=check))

    def inverse_edm_sigma(self, sigma: Tensorish) -> torch.Tensor:
        """The t whose EDM noise level sigma_t / alpha_t equals ``sigma``."""
        sigma = _as_tensor(sigma)
        if not (sigma.detach() > 0).all():
            raise ValueError(f"sigma must be > 0, got {sigma.detach().flatten()[:8].tolist()}")
        return self.inverse_lambda(-torch.log(sigma))

    @property
    def lambda_min(self) -> float:
        """lambda at t = T (the noisiest end)."""
        return float(self.marginal_lambda(torch.tensor(self.T, dtype=torch.float64)))

    @property
    def lambda_max(self) -> float:
        """lambda at t = eps (the cleanest end)."""
        return float(self.marginal_lambda(torch.tensor(self.eps, dtype=torch.float64)))

    def describe(self) -> dict:
        """A JSON-serialisable description (for manifests and discretization files)."""
        return {"kind": self.kind, "T": self.T, "eps": self.eps}


class NoiseScheduleVP(NoiseSchedule):
    """Variance-preserving schedule (DPM-Solver's ``NoiseScheduleVP``, same constructor).

    Args:
        schedule: ``'discrete'``, ``'linear'`` or ``'cosine'``.
        betas: for ``'discrete'``, the DDPM betas (each in (0, 1)).
        alphas_cumprod: for ``'discrete'``, the cumulative products instead of ``betas``.
        continuous_beta_0, continuous_beta_1: for ``'linear'``.
        eps: smallest time; defaults to 1/N for discrete and 1e-3 for the continuous schedules.
        dtype: dtype of the stored tables (float64 keeps interpolation exact).

    Discrete: log alpha_{t_n} = 0.5 log(alphas_cumprod[n-1]) at t_n = n/N, piecewise linear between
    (and linearly extrapolated below 1/N). Linear: log alpha_t = -(beta_1-beta_0) t^2/4 - beta_0 t/2.
    Cosine: log alpha_t = log cos(pi/2 (t+s)/(1+s)) - log cos(pi/2 s/(1+s)), s = 0.008, T = 0.9946.
    """

    SCHEDULES = ("discrete", "linear", "cosine")

    def __init__(
        self,
        schedule: str = "discrete",
        betas: Optional[Tensorish] = None,
        alphas_cumprod: Optional[Tensorish] = None,
        continuous_beta_0: float = 0.1,
        continuous_beta_1: float = 20.0,
        eps: Optional[float] = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if schedule not in self.SCHEDULES:
            raise ValueError(
                f"schedule={schedule!r} is not supported; allowed values: {list(self.SCHEDULES)}"
            )
        self.schedule = schedule
        self.kind = f"vp_{schedule}"
        if schedule == "discrete":
            if (betas is None) == (alphas_cumprod is None):
                raise ValueError("schedule='discrete' needs exactly one of betas or alphas_cumprod")
            if betas is not None:
                betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
                bad = ~((betas > 0) & (betas < 1))
                if bad.any():
                    raise ValueError(
                        f"betas must lie in the open interval (0, 1); got {betas[bad][:4].tolist()} "
                        f"at indices {bad.nonzero().flatten()[:4].tolist()}"
                    )
                log_alphas = 0.5 * torch.cumsum(torch.log1p(-betas), dim=0)
            else:
                ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
                bad = ~((ac > 0) & (ac < 1))
                if bad.any():
                    raise ValueError(
                        f"alphas_cumprod must lie in (0, 1); got {ac[bad][:4].tolist()} "
                        f"at indices {bad.nonzero().flatten()[:4].tolist()}"
                    )
                if (ac[1:] >= ac[:-1]).any():
                    raise ValueError("alphas_cumprod must be strictly decreasing")
                log_alphas = 0.5 * torch.log(ac)
            self.total_N = int(log_alphas.numel())
            if self.total_N < 2:
                raise ValueError(f"a discrete schedule needs at least 2 steps, got {self.total_N}")
            self.T = 1.0
            self.eps = 1.0 / self.total_N if eps is None else float(eps)
            self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1, dtype=torch.float64)[1:].to(dtype)
            self.log_alpha_array = log_alphas.to(dtype)
            self._log_alphas64 = log_alphas  # float64: alphas_cumprod() / betas() read back exactly
            # lambda decreases in t; keep an increasing copy for inverse interpolation
            self._log_alpha_of_t = _InterpTable(self.t_array, self.log_alpha_array)
            self._t_of_log_alpha = _InterpTable(torch.flip(self.log_alpha_array, [0]), torch.flip(self.t_array, [0]))
        elif schedule == "linear":
            if not (0 <= continuous_beta_0 < continuous_beta_1):
                raise ValueError(
                    f"linear schedule needs 0 <= continuous_beta_0 < continuous_beta_1, got "
                    f"{continuous_beta_0}, {continuous_beta_1}"
                )
            self.total_N = 1000
            self.beta_0 = float(continuous_beta_0)
            self.beta_1 = float(continuous_beta_1)
            self.T = 1.0
            self.eps = 1e-3 if eps is None else float(eps)
        else:  # cosine
            self.total_N = 1000
            self.cosine_s = 0.008
            self.cosine_beta_max = 999.0
            self.cosine_t_max = (
                math.atan(self.cosine_beta_max * (1.0 + self.cosine_s) / math.pi)
                * 2.0 * (1.0 + self.cosine_s) / math.pi - self.cosine_s
            )
            self.cosine_log_alpha_0 = math.log(math.cos(self.cosine_s / (1.0 + self.cosine_s) * math.pi / 2.0))
            self.T = 0.9946
            self.eps = 1e-3 if eps is None else float(eps)
        if not (0 < self.eps < self.T):
            raise ValueError(f"eps={self.eps} must satisfy 0 < eps < T={self.T}")

    # log alpha_t
    def marginal_log_mean_coeff(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        t = self.check_t(t) if check else _as_tensor(t)
        if self.schedule == "discrete":
            if t.dim() == 1:  # a time grid: no reshapes (two dispatches less per sampling call)
                return self._log_alpha_of_t(t)
            return self._log_alpha_of_t(t.reshape(-1)).reshape(t.shape)
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        angle = (t + self.cosine_s) / (1.0 + self.cosine_s) * math.pi / 2.0
        return torch.log(torch.cos(angle)) - self.cosine_log_alpha_0

    def marginal_std(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        log_alpha = self.marginal_log_mean_coeff(t, check=check)
        # sigma = sqrt(1 - alpha^2), computed stably as sqrt(-expm1(2 log alpha))
        return torch.sqrt(-torch.expm1(2.0 * log_alpha))

    def marginal_log_alpha_and_std(self, t: Tensorish, check: bool = True):
        # variance preserving: sigma follows from log alpha (saves a second interpolation)
        log_alpha = self.marginal_log_mean_coeff(t, check=check)
        return log_alpha, torch.sqrt(-torch.expm1(2.0 * log_alpha))

    @property
    def discrete_steps(self) -> Optional[int]:
        return self.total_N if self.schedule == "discrete" else None

    def model_time_input(self, t: torch.Tensor) -> torch.Tensor:
        """Discrete models were trained on integer steps k = 0..N-1 with t_k = (k + 1) / N, so the network
        gets (t - 1/N) * 1000 (DPM-Solver's convention, exact for N = 1000). Continuous VP models get t."""
        if self.schedule == "discrete":
            return (t - 1.0 / self.total_N) * 1000.0
        return t

    def inverse_model_time_input(self, t_input: torch.Tensor) -> torch.Tensor:
        if self.schedule == "discrete":
            return t_input / 1000.0 + 1.0 / self.total_N
        return t_input

    def marginal_lambda(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        log_alpha = self.marginal_log_mean_coeff(t, check=check)
        log_sigma = 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))
        return log_alpha - log_sigma

    def inverse_lambda(self, lamb: Tensorish) -> torch.Tensor:
        lamb = _as_tensor(lamb)
        # log alpha = -0.5 log(1 + exp(-2 lambda))
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        if self.schedule == "discrete":
            flat = log_alpha.reshape(-1)
            return self._t_of_log_alpha(flat).reshape(lamb.shape)
        if self.schedule == "linear":
            tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lamb, torch.zeros_like(lamb))
            delta = self.beta_0**2 + tmp
            return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        return (
            torch.arccos(torch.exp(log_alpha + self.cosine_log_alpha_0)) * 2.0 * (1.0 + self.cosine_s) / math.pi
            - self.cosine_s
        )

    def alphas_cumprod(self) -> torch.Tensor:
        """The discrete schedule's ``alphas_cumprod`` (float64, length N), as given or computed from betas."""
        if self.schedule != "discrete":
            raise ValueError(f"alphas_cumprod() reads back a discrete schedule; this one is {self.schedule!r} "
                             "(use marginal_alpha(t) ** 2 at the times you need)")
        return torch.exp(2.0 * self._log_alphas64)

    def betas(self) -> torch.Tensor:
        """The discrete schedule's betas (float64, length N): ``1 - alphas_cumprod[n] / alphas_cumprod[n-1]``."""
        log_ac = 2.0 * self._log_alphas64 if self.schedule == "discrete" else None
        if log_ac is None:
            raise ValueError(f"betas() reads back a discrete schedule; this one is {self.schedule!r}")
        prev = torch.cat([log_ac.new_zeros(1), log_ac[:-1]])
        return -torch.expm1(log_ac - prev)

    def describe(self) -> dict:
        out = super().describe()
        out["total_N"] = self.total_N
        if self.schedule == "linear":
            out.update(beta_0=self.beta_0, beta_1=self.beta_1)
        return out


class NoiseScheduleEDM(NoiseSchedule):
    """EDM schedule (Karras et al. 2022, Table 1): t = sigma, alpha_t = 1, lambda = -log sigma.

    Args:
        sigma_min, sigma_max: the time range [eps, T] = [sigma_min, sigma_max] (EDM: 0.002, 80).
    """

    kind = "edm"
    time_unit = "sigma"  # t is sigma
    default_time_mode = "lambda"  # the LD3 reference's choice for its EDM models (CIFAR-10, FFHQ, AFHQv2)
    pixel_space_default = True

    @property
    def prior_scale(self) -> float:
        """x_T = sigma_max z (alpha = 1), as the EDM sampler and the LD3 reference's ``prior_transformation``."""
        return float(self.T)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.T = self.sigma_max
        self.eps = self.sigma_min
        self.total_N = None

    def marginal_log_mean_coeff(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        t = self.check_t(t) if check else _as_tensor(t)
        return 0.0 * t  # keeps t in the autograd graph (d alpha / dt = 0 exactly)

    def marginal_alpha(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        t = self.check_t(t) if check else _as_tensor(t)
        return 0.0 * t + 1.0

    def marginal_std(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        t = self.check_t(t) if check else _as_tensor(t)
        return t

    def marginal_lambda(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        t = self.check_t(t) if check else _as_tensor(t)
        return -torch.log(t)

    def inverse_lambda(self, lamb: Tensorish) -> torch.Tensor:
        return torch.exp(-_as_tensor(lamb))

    def describe(self) -> dict:
        return {"kind": self.kind, "T": self.T, "eps": self.eps}


def _vp_discrete(**kw) -> NoiseScheduleVP:
    if kw.get("betas") is None and kw.get("alphas_cumprod") is None:
        kw["betas"] = ddpm_linear_betas()
    return NoiseScheduleVP("discrete", **kw)


SCHEDULE_REGISTRY = {
    "vp_discrete": _vp_discrete,
    "vp_linear": lambda **kw: NoiseScheduleVP("linear", **kw),
    "vp_cosine": lambda **kw: NoiseScheduleVP("cosine", **kw),
    "edm": lambda **kw: NoiseScheduleEDM(**kw),
}


def make_schedule(kind: str, **options) -> NoiseSchedule:
    """Build a schedule by registry name (``vp_discrete``, ``vp_linear``, ``vp_cosine``, ``edm``).

    ``vp_discrete`` without ``betas`` / ``alphas_cumprod`` uses the DDPM linear betas (1000 steps).
    """
    if kind not in SCHEDULE_REGISTRY:
        raise ValueError(f"unknown noise schedule {kind!r}; allowed: {sorted(SCHEDULE_REGISTRY)}")
    return SCHEDULE_REGISTRY[kind](**options)


def ddpm_linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """The DDPM (Ho et al. 2020) linear beta schedule, float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
