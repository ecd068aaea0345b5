"""DEIS multistep (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR, arXiv 2204.13902): an exponential integrator with an Adams-Bashforth (Lagrange) extrapolation
of the noise prediction. References: qsh-zh/deis (``th_deis/multistep.py``: tAB by numerical
quadrature) and diffusers' ``DEISMultistepScheduler`` (closed-form log-rho coefficients).

With y = x / alpha and rho = sigma / alpha (the EDM noise level) the PF-ODE is dy = eps d rho, so a
step s = t_i -> t = t_{i+1} is exactly

    x_t = alpha_t ( x_s / alpha_s + int_{rho_s}^{rho_t} eps d rho ),

and DEIS replaces eps by the Lagrange polynomial P through the last p predictions
eps_i, eps_{i-1}, ..: x_t = (alpha_t / alpha_s) x_s + sum_j C_j eps_{i-j},
C_j = alpha_t int_{rho_s}^{rho_t} l_j d rho. Variants:

* ``logrho``: P is a polynomial in log rho = -lambda (diffusers' DEIS, "logrho"). With
  theta = (lambda - lambda_s) / h, h = lambda_t - lambda_s, nodes theta_j = (lambda_{i-j} - lambda_i) / h
  and Psi_k = h int_0^1 e^{-h theta} theta^k d theta (Psi_0 = -expm1(-h), Psi_k = k Psi_{k-1} / h - e^{-h}):
  C_j = -alpha_t rho_s sum_k L_jk Psi_k, with l_j(theta) = sum_k L_jk theta^k. Closed form.
* ``tab``: P is a polynomial in t (the paper's tAB; rhoAB for EDM schedules, where t = rho). The
  integral is taken in theta as well: C_j = -alpha_t rho_s h int_0^1 e^{-h theta}
  l_j(t(lambda_s + h theta)) d theta with t(.) = inverse_lambda, by fixed Gauss-Legendre quadrature
  (``quadrature_points`` nodes; exact to rounding for smooth schedules, slightly less for the
  piecewise-linear discrete VP schedule). Every quadrature node depends smoothly on t_s and t_t, so
  the coefficients are differentiable in the timesteps (qsh-zh/deis uses a 10,000-point Riemann sum).

``order`` p counts the points of the polynomial (p = 1 is DDIM for both variants); the DEIS paper
calls this tAB(p - 1) / rhoAB(p - 1). Warm-up: step i uses min(order, i + 1); ``lower_order_final``
also caps the order at N - i when N < ``lower_order_final_below`` (default 15, diffusers' rule;
qsh-zh/deis has no lower-order final steps). NFE = N = len(timesteps) - 1.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ld3.solvers._multistep import (
    check_bool,
    lagrange_weights,
    multistep_orders,
    run_plan,
    select_rows,
    shifted,
)
from ld3.solvers.base import ModelFn, Solver, StepHook, register_solver
from ld3.solvers.common import Grid, check_choice, check_int_range, grid_quantities, per_sample, threshold_noise

VARIANTS = ("logrho", "tab")
#: diffusers' DEISMultistepScheduler ``solver_type`` values (its only one; = variant 'logrho')
DIFFUSERS_SOLVER_TYPES = {"logrho": "logrho"}


def _one_of(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """``value`` or its diffusers-named ``alias``; both given must agree."""
    if alias_value is not None:
        alias_value = DIFFUSERS_SOLVER_TYPES.get(alias_value, alias_value)
        if value is not None and value != alias_value:
            raise ValueError(f"{name}={value!r} and {alias}={alias_value!r} disagree; give one of them")
        return alias_value
    return default if value is None else value


#: rho of the grid that ``use_karras_sigmas=True`` asks for, and the tolerance of that check (relative to the
#: spread of sigma~^(1/rho); float32 noise levels from diffusers are well inside it)
KARRAS_RHO = 7.0
KARRAS_RTOL = 1e-5


def check_karras_grid(noise_schedule, timesteps: torch.Tensor, rho: float = KARRAS_RHO) -> None:
    """Raise unless sigma~(t)^(1/rho), sigma~ = sigma / alpha, is equally spaced on ``timesteps`` (Karras et al.
    2022, Eq. 5): what diffusers' ``use_karras_sigmas=True`` integrates on, whatever its end points."""
    td = timesteps.detach().to("cpu", torch.float64)
    if td.numel() < 3:
        return
    s = noise_schedule.edm_sigma(td, check=False) ** (1.0 / rho)
    expected = s[0] + (s[-1] - s[0]) * torch.linspace(0.0, 1.0, s.numel(), dtype=torch.float64)
    err = float((s - expected).abs().max() / (s[0] - s[-1]).abs())
    if not err <= KARRAS_RTOL:
        raise ValueError(
            f"use_karras_sigmas=True, but the grid is not a Karras (rho = {rho:g}) grid: (sigma / alpha)^(1/rho) "
            f"deviates from equal spacing by {err:.3g} of its range (allowed {KARRAS_RTOL:g}). Use the discretization "
            f"'karras_sigmas' (diffusers' grid) or 'edm' with rho = 7, or use_karras_sigmas=False for any grid"
        )


@register_solver("deis")
class DEIS(Solver):
    """DEIS multistep (noise prediction).

    Options:
        order: number of interpolation points, 1..3 (default 3).
        variant: 'logrho' (closed form, diffusers) or 'tab' (polynomial in t, quadrature) (default 'tab').
        lower_order_final: lower the order of the last steps (default True).
        lower_order_final_below: apply lower_order_final only when the number of steps is below this
            (default 15, as diffusers).
        quadrature_points: Gauss-Legendre nodes per step for 'tab' (default 16).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen dynamic thresholding of
            the data prediction implied by each noise prediction (as diffusers' DEIS).

    diffusers' ``DEISMultistepScheduler`` option names are accepted with its meanings: ``solver_order``
    (= order), ``solver_type='logrho'`` (= variant 'logrho'), ``algorithm_type='deis'`` (the only one),
    ``lower_order_final`` and the thresholding options (same names), and ``use_karras_sigmas``. The last one
    chooses diffusers' *grid*, which an ld3 solver receives rather than makes: with ``use_karras_sigmas=True``
    the solver checks that its grid follows Karras et al.'s rho = 7 law on the EDM noise level sigma / alpha
    (:func:`check_karras_grid`), as the ``karras_sigmas`` discretization (diffusers' grid, including its
    integer network times) and ``edm`` (rho = 7) produce, and raises otherwise; ``LD3Scheduler`` picks the
    ``karras_sigmas`` grid for it. An option and its alias given together must agree.
    """

    def __init__(
        self,
        noise_schedule,
        order: Optional[int] = None,
        variant: Optional[str] = None,
        lower_order_final: bool = True,
        lower_order_final_below: int = 15,
        quadrature_points: int = 16,
        solver_order: Optional[int] = None,
        solver_type: Optional[str] = None,
        algorithm_type: str = "deis",
        use_karras_sigmas: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(noise_schedule, **options)
        order = _one_of("order", order, "solver_order", solver_order, 3)
        self.order = check_int_range("order", order, 1, 3)
        if solver_type is not None and solver_type not in DIFFUSERS_SOLVER_TYPES:
            raise ValueError(
                f"solver_type={solver_type!r} is not supported; diffusers' DEIS has {list(DIFFUSERS_SOLVER_TYPES)} "
                f"(= variant='logrho'); use variant='tab' for the DEIS paper's tAB"
            )
        variant = _one_of("variant", variant, "solver_type", solver_type, "tab")
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        if algorithm_type != "deis":
            raise ValueError(
                f"algorithm_type={algorithm_type!r} is not supported by deis; allowed: ['deis'] (diffusers' DEIS "
                f"silently runs 'deis' for 'dpmsolver' / 'dpmsolver++'; here use the dpm_solver++ solver instead)"
            )
        self.use_karras_sigmas = check_bool("use_karras_sigmas", use_karras_sigmas)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.lower_order_final_below = check_int_range("lower_order_final_below", lower_order_final_below, 1, 10**9)
        self.quadrature_points = check_int_range("quadrature_points", quadrature_points, 1, 256)
        nodes, weights = np.polynomial.legendre.leggauss(self.quadrature_points)
        # on [0, 1]
        self._gl_nodes = (0.5 * (nodes + 1.0)).tolist()
        self._gl_weights = (0.5 * weights).tolist()

    def step_orders(self, n_steps: int) -> List[int]:
        """The order of every step.

        With ``use_karras_sigmas`` the warm-down counts the zero-length final step that diffusers spends on
        this grid (see :mod:`ld3.discretizations.spacing`), as DEISMultistepScheduler does: the last real step
        has order min(order, 2), not 1.
        """
        if self.use_karras_sigmas:
            return multistep_orders(n_steps + 1, self.order, self.lower_order_final,
                                    self.lower_order_final_below)[:n_steps]
        return multistep_orders(n_steps, self.order, self.lower_order_final, self.lower_order_final_below)

    # ------------------------------------------------------------------ coefficients
    def _logrho_weights(self, g: Grid, h: torch.Tensor, scale: torch.Tensor) -> list:
        hp1, hp2 = shifted(h, 1), shifted(h, 2)
        nodes = [torch.zeros_like(h), -hp1 / h, -(hp1 + hp2) / h]
        em = torch.exp(-h)
        psi = [-torch.expm1(-h)]
        for k in range(1, self.order):
            psi.append(k * psi[-1] / h - em)
        moments = [scale * p for p in psi]
        return [lagrange_weights(nodes[:p], moments[:p]) for p in range(1, self.order + 1)]

    def _tab_weights(self, g: Grid, h: torch.Tensor, scale: torch.Tensor) -> list:
        t = g.t
        ts = t[:-1]
        # previous grid times; placeholders (never selected) extrapolate the grid so nodes stay distinct
        dt0 = t[0] - t[1]
        tp1 = torch.cat([(t[0] + dt0).reshape(1), ts[:-1]])
        tp2 = torch.cat([(t[0] + 2 * dt0).reshape(1), tp1[:-1]])
        theta = torch.tensor(self._gl_nodes, dtype=t.dtype, device=t.device)
        wq = torch.tensor(self._gl_weights, dtype=t.dtype, device=t.device)
        lam_q = g.lam[:-1, None] + h[:, None] * theta[None, :]  # (N, Q)
        tau = self.noise_schedule.inverse_lambda(lam_q)
        kern = wq[None, :] * torch.exp(-h[:, None] * theta[None, :])  # (N, Q)
        out = []
        nodes_all = [ts, tp1, tp2]
        for p in range(1, self.order + 1):
            nodes = [v[:, None] for v in nodes_all[:p]]
            ws = []
            for j in range(p):
                ell = torch.ones_like(tau)
                for m in range(p):
                    if m != j:
                        ell = ell * (tau - nodes[m]) / (nodes[j] - nodes[m])
                ws.append(scale * h * (kern * ell).sum(-1))
            out.append(ws)
        return out

    def _plan(self, g: Grid) -> list:
        n_steps = g.t.shape[0] - 1
        h = g.lam[1:] - g.lam[:-1]
        scale = -g.alpha[1:] * g.edm[:-1]  # -alpha_t rho_s
        per_order = self._logrho_weights(g, h, scale) if self.variant == "logrho" else self._tab_weights(g, h, scale)
        orders = self.step_orders(n_steps)
        rows = select_rows(per_order, orders)
        c = (g.alpha[1:] / g.alpha[:-1]).unbind(0)
        return [(i, c[i], [(i - k, w) for k, w in enumerate(rows[i])]) for i in range(n_steps)]

    # ------------------------------------------------------------------ sampling
    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        if self.use_karras_sigmas:
            check_karras_grid(self.noise_schedule, timesteps)
        g = grid_quantities(self.noise_schedule, timesteps)
        plan = self._plan(g)
        t_in = per_sample(model_timesteps, x.shape[0])
        thr = self.thresholding if self.thresholding.thresholding else None
        if thr is not None:
            alphas, sigmas = g.alpha.unbind(0), g.sigma.unbind(0)

        def noise_pred(xi: torch.Tensor, i: int) -> torch.Tensor:
            eps = model_fn(xi, t_in[i])
            if thr is not None:
                eps = threshold_noise(eps, xi, alphas[i], sigmas[i], thr)
            return eps

        return run_plan(noise_pred, x, plan, step_done)

    def describe(self) -> Dict[str, Any]:
        out = {
            "name": self.name,
            "order": self.order,
            "variant": self.variant,
            "lower_order_final": self.lower_order_final,
            "lower_order_final_below": self.lower_order_final_below,
            **self.thresholding.describe(),
        }
        if self.variant == "tab":
            out["quadrature_points"] = self.quadrature_points
        if self.use_karras_sigmas:
            out["use_karras_sigmas"] = True
        return out
