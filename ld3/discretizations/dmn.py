"""Data-free optimized time steps (Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized
Time Steps", CVPR; reference scxue/DM-NonUniform ``step_optim.py``).

Setting. A multistep data-prediction solver (DPM-Solver++ / UniPC predictor) advances the exact
solution x_{s+1} = (sigma_{s+1}/sigma_s) x_s + sigma_{s+1} int_{lambda_s}^{lambda_{s+1}} e^lambda x_theta dlambda
by replacing x_theta on [lambda_s, lambda_{s+1}] with the Lagrange polynomial through its k_s most
recent nodes lambda_{s-k_s+1..s}. Step s therefore weights the node values with

    J_{s,j} = int_{lambda_s}^{lambda_{s+1}} e^lambda l_j(lambda) dlambda
            = e^{lambda_s} sum_m c_{j,m} H_m(h_s),   H_m(h) = int_0^h e^u u^m du,

(l_j the Lagrange basis written as sum_m c_{j,m} u^m in u = lambda - lambda_s; the reference hard-codes
these for k <= 3 with H_0 = e^h - 1, H_1 = h e^h - H_0, H_2 = h^2 e^h - 2 H_1). The error of the data
prediction at a node is modelled by the data-free weight e_j = sigma_j^2 / alpha_j of the VP
schedule with the same lambda (alpha = (1 + e^{-2 lambda})^{-1/2}, sigma = (1 + e^{2 lambda})^{-1/2}),
and the objective, an estimate of the distance between the exact and the numerical solution, is

    F(lambda) = sum_{s: k_s = 1} |J_{s,0} e_s|
              + sum_{s < 3, k_s > 1} sqrt(sum_j (J_{s,j} e_j)^2)          (first steps: independent errors)
              + sum_n |sum_{s >= 3, k_s > 1} J_{s,n} e_n|                 (later steps: per-node sums)

exactly as the reference combines them. Step orders follow the solver: k_s = min(s + 1, order,
N - s), i.e. warm-up from first order and lower orders in the final steps; for order 3 this is the
reference's pattern (1, 2, 3, ..., 3, 2, 1). The interior lambda_1..lambda_{N-1} are optimized with
scipy's ``trust-constr`` under the linear constraints lambda(t_max) < lambda_1 < ... < lambda_{N-1} <
lambda(t_min) (a small positive margin keeps the grid strictly monotone), starting from the
``init`` schedule (reference: uniform logSNR for pixel models, uniform t for latent models). The
objective depends on lambda only, so the same code serves VP and EDM schedules; t = lambda^{-1}.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import lru_cache
from typing import Tuple

import numpy as np
import torch

from ld3.discretizations.base import (
    Discretization,
    Request,
    TimeLike,
    lookup,
    register_kind,
    time_range,
    with_endpoints,
)

#: steps before this index combine their node errors as independent (sqrt of squares), as in the reference
INDEPENDENT_STEPS = 3
INITS = ("logSNR", "time_uniform", "time_quadratic", "edm")
MAX_ORDER = 4
VARIANTS = ("xue", "ld3")


#: series terms for |h| < SMALL_H: the first omitted term is below 1e-17 relative
_SERIES_TERMS = 16
SMALL_H = 0.1


@lru_cache(maxsize=8)
def _series_matrix(order: int) -> torch.Tensor:
    """C[p, m] with H_m(h) = sum_p h^(p+1) C[p, m] for small h (C = 1 / ((p-m)! (p+1)) for p >= m)."""
    n_pow = order + _SERIES_TERMS
    c = torch.zeros(n_pow, order, dtype=torch.float64)
    for m in range(order):
        for kk in range(_SERIES_TERMS):
            c[m + kk, m] = 1.0 / (math.factorial(kk) * (m + kk + 1))
    return c


def exp_moments(h: torch.Tensor, order: int) -> torch.Tensor:
    """H_m(h) = int_0^h e^u u^m du for m = 0..order-1, shape (..., order); differentiable.

    Closed form H_0 = e^h - 1, H_m = h^m e^h - m H_{m-1}; a power series when |h| < 0.1, where the
    recursion would cancel.
    """
    h = torch.as_tensor(h, dtype=torch.float64)
    small = h.abs() < SMALL_H
    hs = torch.where(small, h, torch.zeros_like(h))  # series branch, safe everywhere
    hl = torch.where(small, torch.ones_like(h), h)  # closed-form branch, no cancellation
    eh = torch.exp(hl)
    closed = [torch.expm1(hl)]
    for m in range(1, order):
        closed.append(hl**m * eh - m * closed[-1])
    closed_t = torch.stack(closed, dim=-1)
    powers = hs.unsqueeze(-1) ** torch.arange(1, order + _SERIES_TERMS + 1, dtype=torch.float64)
    series = (powers.unsqueeze(-1) * _series_matrix(order)).sum(-2)  # elementwise: no BLAS call
    return torch.where(small.unsqueeze(-1), series, closed_t)


def lagrange_moment_weights(u: torch.Tensor, used: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """w_j = sum_p c_{j,p} H_p with l_j(u) = sum_p c_{j,p} u^p the Lagrange basis over the used slots.

    u, used: (n, K) node offsets and mask; moments: (n, K) with H_p(h). Unused slots get w = 0. The
    basis polynomials are built by multiplying out prod_{m != j} (u - u_m) / (u_j - u_m) with
    elementwise operations only (tiny batched LAPACK/BLAS calls are slow when cores are shared).
    """
    n, k = u.shape
    coef = torch.zeros(n, k, k, dtype=u.dtype)
    coef[:, :, 0] = 1.0
    denom = torch.ones(n, k, dtype=u.dtype)
    eye = torch.eye(k, dtype=torch.bool)
    for m in range(k):
        apply = (used[:, m : m + 1] & ~eye[m][None, :]).unsqueeze(-1)  # (n, j, 1): multiply by (u - u_m)
        shifted = torch.nn.functional.pad(coef[..., :-1], (1, 0))
        coef = torch.where(apply, shifted - u[:, m, None, None] * coef, coef)
        denom = torch.where(apply.squeeze(-1), denom * (u - u[:, m : m + 1]), denom)
    denom = torch.where(used, denom, torch.ones((), dtype=u.dtype))  # unused slots: no 0/0 (NaN gradients)
    w = (coef * moments[:, None, :]).sum(-1) / denom
    return torch.where(used, w, torch.zeros((), dtype=u.dtype))


def step_weights(lam: torch.Tensor, steps: torch.Tensor, k: int) -> torch.Tensor:
    """Weights J_{s,j} (one row per step s in ``steps``, nodes j = s-k+1..s) of k-node Lagrange steps:
    J_{s,j} = e^{lam_s} int_0^h e^u l_j(u) du with u = lambda - lam_s and h = lam_{s+1} - lam_s."""
    steps = torch.as_tensor(steps, dtype=torch.long).reshape(-1)
    idx = steps[:, None] + torch.arange(-k + 1, 1)[None, :]
    u = lam[idx] - lam[steps][:, None]  # (n, k)
    h = lam[steps + 1] - lam[steps]
    w = lagrange_moment_weights(u, torch.ones_like(u, dtype=torch.bool), exp_moments(h, k))
    return torch.exp(lam[steps])[:, None] * w


def step_orders(num_steps: int, order: int) -> list:
    """k_s = min(s + 1, order, N - s): warm-up and lower-order final steps."""
    return [min(s + 1, order, num_steps - s) for s in range(num_steps)]


@lru_cache(maxsize=64)
def _plan(num_steps: int, order: int, independent_steps: int = INDEPENDENT_STEPS):
    """Index tables for evaluating every step at once with ``K = max k_s`` node slots per step.

    Slot j of step s holds node s - K + 1 + j (clamped to 0); slots j < K - k_s are unused.
    Returns (K, node indices, used mask, late-step mask, first-order mask).
    """
    orders = torch.tensor(step_orders(num_steps, order), dtype=torch.long)
    k_max = int(orders.max())
    steps = torch.arange(num_steps)
    slots = torch.arange(k_max)
    node = steps[:, None] - k_max + 1 + slots[None, :]
    used = slots[None, :] >= (k_max - orders)[:, None]  # (N, K)
    late = (steps >= independent_steps) & (orders > 1)
    first_order = orders == 1
    return k_max, node.clamp_min(0), used, late, first_order


def all_step_weights(lam: torch.Tensor, order: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weights J_{s,j} of every step in one batch: (node indices (N, K), weights (N, K), 0 = unused)."""
    n_steps = lam.numel() - 1
    k_max, node, used = _plan(n_steps, order)[:3]
    lam_s = lam[:-1]
    u = torch.where(used, lam[node] - lam_s[:, None], torch.zeros((), dtype=lam.dtype))
    w = lagrange_moment_weights(u, used, exp_moments(lam[1:] - lam_s, k_max))
    return node, torch.exp(lam_s)[:, None] * w


def data_error_weight(lam: torch.Tensor, sigma_power: int = 2) -> torch.Tensor:
    """sigma^p / alpha of the VP schedule with half log-SNR lam (the reference's data_err_vec: p = 2;
    the LD3 repository uses p = 1 for pixel-space models)."""
    alpha = torch.rsqrt(1.0 + torch.exp(-2.0 * lam))
    sigma = torch.rsqrt(1.0 + torch.exp(2.0 * lam))
    return sigma**sigma_power / alpha


def objective(
    lam, order: int = 3, independent_steps: int = INDEPENDENT_STEPS, sigma_power: int = 2
) -> torch.Tensor:
    """F(lambda) for a full increasing lambda grid (noisiest first), see the module docstring.

    ``independent_steps``: steps with index below it (and k_s > 1) add sqrt(sum of squares) of their node
    errors (the reference's truncNum, 3); ``sigma_power``: the node error weight sigma^p / alpha."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    n_steps = lam.numel() - 1
    *_, late, first_order = _plan(n_steps, order, independent_steps)
    node, weights = all_step_weights(lam, order)
    contrib = weights * data_error_weight(lam, sigma_power)[node]  # (N, K), zero in unused slots
    total = contrib[first_order].abs().sum()
    early = ~late & ~first_order
    total = total + torch.sqrt((contrib[early] ** 2).sum(1)).sum()
    per_node = torch.zeros_like(lam).index_add(0, node[late].reshape(-1), contrib[late].reshape(-1))
    return total + per_node.abs().sum()


def optimize_lambdas(
    lam_init: np.ndarray,
    order: int = 3,
    min_gap_fraction: float = 1e-3,
    maxiter: int = 1000,
    xtol: float = 1e-8,
    independent_steps: int = INDEPENDENT_STEPS,
    sigma_power: int = 2,
) -> Tuple[np.ndarray, dict]:
    """Minimize :func:`objective` over the interior of ``lam_init`` (endpoints fixed) with trust-constr."""
    from scipy.optimize import LinearConstraint, minimize

    lam_init = np.asarray(lam_init, dtype=np.float64)
    n = lam_init.size - 1
    lo, hi = float(lam_init[0]), float(lam_init[-1])
    terms = {"independent_steps": independent_steps, "sigma_power": sigma_power}
    f_init = float(objective(torch.from_numpy(lam_init), order, **terms))
    if n < 2:
        return lam_init.copy(), {"objective_init": f_init, "objective": f_init, "iterations": 0}
    gap = min_gap_fraction * (hi - lo) / n
    # rows: lambda_1 - lo >= gap; lambda_{i+1} - lambda_i >= gap; hi - lambda_{N-1} >= gap
    a = np.zeros((n, n - 1))
    for i in range(n - 1):
        a[i, i] = 1.0
        a[i + 1, i] = -1.0
    lb = np.full(n, gap)
    lb[0] += lo
    lb[-1] -= hi
    constraint = LinearConstraint(a, lb, np.full(n, np.inf))
    ends = (torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64))

    def fun(x: np.ndarray):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        f = objective(torch.cat([ends[0], xt, ends[1]]), order, **terms)
        (g,) = torch.autograd.grad(f, xt)
        fv = float(f)
        if not np.isfinite(fv) or not torch.isfinite(g).all():  # left the feasible region (crossed nodes): steer back
            return 1e300, np.zeros_like(x)
        return fv, g.numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy's singular-Jacobian / delta_grad notices
        res = minimize(
            fun, lam_init[1:-1].copy(), jac=True, method="trust-constr", constraints=[constraint],
            options={"maxiter": maxiter, "xtol": xtol},
        )
    lam = np.concatenate(([lo], res.x, [hi]))
    f_opt = float(objective(torch.from_numpy(lam), order, **terms))
    info = {
        "objective_init": f_init,
        "objective": f_opt,
        "iterations": int(res.nit),
        "status": int(res.status),
        "message": str(res.message),
    }
    if not np.all(np.diff(lam) > 0) or not np.isfinite(f_opt) or f_opt > f_init:
        # the optimizer ended outside the feasible set or above its start: keep the start (never worse)
        info["fallback"] = "init"
        lam = lam_init.copy()
        info["objective"] = f_init
    return lam, info


def default_order(solver) -> int:
    order = getattr(solver, "order", None)
    if isinstance(order, int) and not isinstance(order, bool) and order >= 1:
        return min(order, 3)
    return 3


def ld3_repo_terms(num_steps: int, pixel: bool) -> dict:
    """The LD3 repository's DMN baseline (vinhsuhi/LD3 ``samplers/general_solver.py``, ``StepOptim``):
    truncNum = 3 for N <= 7 steps, else 0 (every step with k_s > 1 goes into the per-node sums), and
    the node error sigma / alpha for pixel-space models (sigma^2 / alpha, as Xue et al., for latent ones)."""
    return {"independent_steps": INDEPENDENT_STEPS if num_steps <= 7 else 0, "sigma_power": 1 if pixel else 2}


@register_kind("dmn")
def dmn(
    req: Request,
    *,
    order: int | None = None,
    init: str | None = None,
    t_min: TimeLike | None = None,
    t_max: TimeLike | None = None,
    maxiter: int = 1000,
    variant: str = "xue",
    pixel: bool | None = None,
) -> Discretization:
    """Optimized steps of Xue et al. 2024 for a multistep solver of the given order (default: the solver's, max 3).

    ``variant='xue'`` (default): the objective of scxue/DM-NonUniform. ``variant='ld3'``: the LD3
    repository's baseline (:func:`ld3_repo_terms`); ``pixel`` (default: EDM schedule -> pixel, VP ->
    latent, as that repository decides) picks its error weight, ``order`` defaults to 3 and ``init`` to
    logSNR for pixel and time_uniform for latent models (its 'unif' / 'unif_t').
    """
    ns = req.noise_schedule
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; allowed: {list(VARIANTS)}")
    if pixel is not None and not isinstance(pixel, bool):
        raise ValueError(f"pixel must be true, false or null, got {pixel!r}")
    if variant == "xue":
        if pixel is not None:
            raise ValueError(f"pixel={pixel!r} is only read by variant='ld3' (got variant='xue')")
        terms = {"independent_steps": INDEPENDENT_STEPS, "sigma_power": 2}
        order = default_order(req.solver) if order is None else order
        init = "logSNR" if init is None else init
    else:
        pixel = ns.pixel_space_default if pixel is None else pixel
        terms = ld3_repo_terms(req.num_points - 1, pixel)
        order = 3 if order is None else order
        init = ("logSNR" if pixel else "time_uniform") if init is None else init
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order={order!r} is not supported; allowed: integers 1..{MAX_ORDER}")
    if init not in INITS:
        raise ValueError(f"init={init!r} is not supported; allowed: {list(INITS)}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}")
    lo, hi = time_range(ns, t_min, t_max)
    lo, hi = lo.detach(), hi.detach()
    t_init = lookup(init)(req, t_min=lo, t_max=hi)
    lam_init = ns.marginal_lambda(t_init, check=False).numpy()  # increasing: noisiest first
    start = time.perf_counter()
    lam, info = optimize_lambdas(lam_init, order=order, maxiter=maxiter, **terms)
    info["seconds"] = time.perf_counter() - start
    # lambda increases along the grid, so t = lambda^{-1} decreases: already in sampling order
    interior = ns.inverse_lambda(torch.from_numpy(lam[1:-1].copy()))
    t = with_endpoints(interior, hi, lo)
    return Discretization(
        timesteps=t,
        source="dmn",
        solver=req.solver_name,
        nfe=req.nfe,
        metrics={k: v for k, v in info.items() if k != "message"},
        config={
            "order": order,
            "init": init,
            "maxiter": maxiter,
            "variant": variant,
            **({"pixel": pixel} if variant == "ld3" else {}),
            **terms,
            "message": info.get("message", ""),
        },
    )
