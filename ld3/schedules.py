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

Validation: the public methods check that t lies in [eps, T] (with a small tolerance) and raise a
``ValueError`` naming the offending value. The check needs one host sync; code that evaluates a
schedule inside a hot loop passes ``check=False`` after validating its time grid once.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

Tensorish = Union[torch.Tensor, float, Sequence[float]]

#: relative slack allowed when checking that a time lies in [eps, T]
RANGE_TOLERANCE = 1e-6


def _as_tensor(t: Tensorish) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    return torch.as_tensor(t, dtype=torch.float64)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, linear extrapolation beyond the ends.

    xp must be increasing. Differentiable with respect to x (the slope of the segment).
    """
    xp = xp.to(device=x.device, dtype=x.dtype)
    fp = fp.to(device=x.device, dtype=x.dtype)
    idx = torch.searchsorted(xp, x.detach().contiguous()) - 1
    idx = idx.clamp(0, xp.numel() - 2)
    x0, x1 = xp[idx], xp[idx + 1]
    f0, f1 = fp[idx], fp[idx + 1]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


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

    def check_t(self, t: Tensorish, name: str = "t") -> torch.Tensor:
        """Return ``t`` as a tensor after checking it is finite and inside [eps, T]."""
        t = _as_tensor(t)
        td = t.detach()
        if not torch.isfinite(td).all():
            raise ValueError(f"{name} contains non-finite values: {td.flatten()[:8].tolist()}")
        tol = RANGE_TOLERANCE * max(abs(self.T), 1.0)
        lo, hi = td.min().item() if td.numel() else self.eps, td.max().item() if td.numel() else self.T
        if lo < self.eps - tol or hi > self.T + tol:
            bad = lo if lo < self.eps - tol else hi
            raise ValueError(
                f"{name}={bad!r} is outside the allowed range [eps, T] = [{self.eps}, {self.T}] "
                f"of the {self.kind} noise schedule"
            )
        return t

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
            self._log_alpha_increasing = torch.flip(self.log_alpha_array, [0])
            self._t_increasing = torch.flip(self.t_array, [0])
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
            return _interp(t.reshape(-1), self.t_array, self.log_alpha_array).reshape(t.shape)
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        angle = (t + self.cosine_s) / (1.0 + self.cosine_s) * math.pi / 2.0
        return torch.log(torch.cos(angle)) - self.cosine_log_alpha_0

    def marginal_std(self, t: Tensorish, check: bool = True) -> torch.Tensor:
        log_alpha = self.marginal_log_mean_coeff(t, check=check)
        # sigma = sqrt(1 - alpha^2), computed stably as sqrt(-expm1(2 log alpha))
        return torch.sqrt(-torch.expm1(2.0 * log_alpha))

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
            return _interp(flat, self._log_alpha_increasing, self._t_increasing).reshape(lamb.shape)
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


SCHEDULE_REGISTRY = {
    "vp_discrete": lambda **kw: NoiseScheduleVP("discrete", **kw),
    "vp_linear": lambda **kw: NoiseScheduleVP("linear", **kw),
    "vp_cosine": lambda **kw: NoiseScheduleVP("cosine", **kw),
    "edm": lambda **kw: NoiseScheduleEDM(**kw),
}


def make_schedule(kind: str, **options) -> NoiseSchedule:
    """Build a schedule by registry name (``vp_discrete``, ``vp_linear``, ``vp_cosine``, ``edm``)."""
    if kind not in SCHEDULE_REGISTRY:
        raise ValueError(f"unknown noise schedule {kind!r}; allowed: {sorted(SCHEDULE_REGISTRY)}")
    return SCHEDULE_REGISTRY[kind](**options)


def ddpm_linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """The DDPM (Ho et al. 2020) linear beta schedule, float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
