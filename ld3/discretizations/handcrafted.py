"""Hand-crafted time discretizations: time-uniform, time-quadratic, logSNR, EDM (rho) and polynomial.

All of them place ``M + 1`` points (M = ``request.num_points - 1`` intervals) between t_max and t_min,
with r_i = i / M, i = 0..M, and return the times in descending order with exact endpoints:

* ``time_uniform``:   t_i = t_max + r_i (t_min - t_max).
* ``time_quadratic``: t_i = (sqrt(t_max) + r_i (sqrt(t_min) - sqrt(t_max)))^2, the form of DPM-Solver
  (Lu et al. 2022, App. D.1; LuChengTHU/dpm-solver ``get_time_steps``). The LD3 reference uses
  t_i = t_min + (t_max - t_min) (1 - r_i)^2 instead, which crowds points at the *clean* end in the
  opposite way; it is not reproduced here.
* ``logSNR``:         lambda_i = lambda(t_max) + r_i (lambda(t_min) - lambda(t_max)), t_i = lambda^{-1}(lambda_i)
  (uniform in the half log-SNR lambda = log(alpha/sigma); DPM-Solver's ``logSNR`` skip type).
* ``edm``:            s_i = (s_max^{1/rho} + r_i (s_min^{1/rho} - s_max^{1/rho}))^rho on the EDM noise level
  s = sigma_t / alpha_t (Karras et al. 2022, Eq. 5, rho = 7), mapped back with
  ``noise_schedule.inverse_edm_sigma``; for EDM models t = s.
* ``poly``:           the same polynomial law applied to the schedule's own time t with any rho > 0:
  rho = 1 is ``time_uniform``, rho = 2 is ``time_quadratic``, and for EDM models ``poly`` equals ``edm``.
  For VP models ``poly`` with rho = 7 is what the LD3 reference calls ``edm`` (rho applied to t).

Defaults: t_min = noise_schedule.eps and t_max = noise_schedule.T, i.e. 1/N..1 for discrete VP,
1e-3..1 for continuous VP (cosine: T = 0.9946) and 0.002..80 for EDM; both can be overridden.
Every formula is a differentiable function of t_min, t_max and rho (pass tensors with
``requires_grad=True``) and, through the schedule, of nothing else.
"""

from __future__ import annotations

import torch

from ld3.discretizations.base import Request, TimeLike, as_time, register_kind, time_range, with_endpoints


def _ratios(num_points: int) -> torch.Tensor:
    """Interior r_i = i / M, i = 1..M-1 (float64)."""
    m = num_points - 1
    return torch.arange(1, m, dtype=torch.float64) / m


def _check_rho(rho: TimeLike) -> torch.Tensor:
    r = as_time(rho, "rho")
    if not float(r.detach()) > 0:
        raise ValueError(f"rho must be > 0, got {float(r.detach())}")
    return r


def _power_law(lo: torch.Tensor, hi: torch.Tensor, rho: torch.Tensor, num_points: int) -> torch.Tensor:
    """Interior points of (hi^{1/rho} + r (lo^{1/rho} - hi^{1/rho}))^rho."""
    r = _ratios(num_points)
    a, b = hi ** (1.0 / rho), lo ** (1.0 / rho)
    return (a + r * (b - a)) ** rho


@register_kind("time_uniform")
def time_uniform(
    req: Request, *, t_min: TimeLike | None = None, t_max: TimeLike | None = None
) -> torch.Tensor:
    """Uniform in t."""
    lo, hi = time_range(req.noise_schedule, t_min, t_max)
    interior = hi + _ratios(req.num_points) * (lo - hi)
    return with_endpoints(interior, hi, lo)


@register_kind("time_quadratic")
def time_quadratic(
    req: Request, *, t_min: TimeLike | None = None, t_max: TimeLike | None = None
) -> torch.Tensor:
    """DPM-Solver's quadratic spacing: linspace(sqrt(t_max), sqrt(t_min))^2."""
    lo, hi = time_range(req.noise_schedule, t_min, t_max)
    two = torch.tensor(2.0, dtype=torch.float64)
    return with_endpoints(_power_law(lo, hi, two, req.num_points), hi, lo)


@register_kind("logSNR")
def log_snr(req: Request, *, t_min: TimeLike | None = None, t_max: TimeLike | None = None) -> torch.Tensor:
    """Uniform in lambda = log(alpha / sigma)."""
    ns = req.noise_schedule
    lo, hi = time_range(ns, t_min, t_max)
    lam_hi, lam_lo = ns.marginal_lambda(hi, check=False), ns.marginal_lambda(lo, check=False)
    lam = lam_hi + _ratios(req.num_points) * (lam_lo - lam_hi)
    return with_endpoints(ns.inverse_lambda(lam), hi, lo)


@register_kind("edm")
def edm(
    req: Request,
    *,
    rho: TimeLike = 7.0,
    t_min: TimeLike | None = None,
    t_max: TimeLike | None = None,
) -> torch.Tensor:
    """Karras et al.'s rho-schedule on sigma~ = sigma / alpha, mapped back to t."""
    ns = req.noise_schedule
    lo, hi = time_range(ns, t_min, t_max)
    r = _check_rho(rho)
    s_lo, s_hi = ns.edm_sigma(lo, check=False), ns.edm_sigma(hi, check=False)
    sig = _power_law(s_lo, s_hi, r, req.num_points)
    return with_endpoints(ns.inverse_edm_sigma(sig), hi, lo)


@register_kind("poly")
def poly(
    req: Request,
    *,
    rho: TimeLike = 7.0,
    t_min: TimeLike | None = None,
    t_max: TimeLike | None = None,
) -> torch.Tensor:
    """Polynomial spacing with exponent rho applied to the schedule's own time t."""
    lo, hi = time_range(req.noise_schedule, t_min, t_max)
    r = _check_rho(rho)
    return with_endpoints(_power_law(lo, hi, r, req.num_points), hi, lo)
