"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", arXiv 2302.04867), multistep, data prediction, B(h) variants bh1 / bh2.
Reference implementation: wl-zhao/UniPC ``uni_pc.py`` (``multistep_uni_pc_bh_update``); this is an
independent re-implementation: coefficients precomputed on the whole grid (differentiable in the
timesteps -- the reference builds r_k with ``torch.tensor`` and cuts that gradient), any tensor
shape (the reference assumes 4-D), no network call after the last step.

Step i: s = t_i -> t = t_{i+1}, h = lambda_t - lambda_s, hh = -h, phi = expm1(hh),
B(h) = hh (bh1) or expm1(hh) (bh2), previous points r_k = (lambda_{i-k} - lambda_i) / h < 0,
D_k = (m_{i-k} - m_i) / r_k, with m the data predictions. Order conditions (UniPC Eq. 8):
g_1 = phi / hh - 1, g_{n+1} = g_n / hh - 1 / (n+1)!, b_n = n! g_n / B(h).

    UniP-p (predictor): x_t^p = (sigma_t / sigma_s) x_s - alpha_t phi m_s - alpha_t B(h) sum_k rho^p_k D_k
        p = 1: no sum; p = 2: rho^p = 1/2 (the reference's simplification); p = 3: sum_k rho_k r_k^{n-1}
        = b_n for n = 1, 2 over the two previous points.
    UniC-p (corrector): m_t = x0(x_t^p, t) (the next step's evaluation, reused), D_t = m_t - m_s;
        x_t^c = (sigma_t / sigma_s) x_s - alpha_t phi m_s - alpha_t B(h) (sum_k rho^c_k D_k + rho^c_t D_t)
        with sum rho^c_k r_k^{n-1} + rho^c_t = b_n for n = 1..p (r_t = 1); p = 1: rho^c_t = 1/2.

The corrected x_t^c replaces x_t^p; m_t (computed at x_t^p) is stored for the following steps.
Warm-up: step i uses p = min(order, i + 1); ``lower_order_final`` (as in the reference and
diffusers, for any number of steps) also caps it at N - i, so the last step is UniP-1. The
corrector is skipped at the last step (its evaluation would be an extra call), so
NFE = N = len(timesteps) - 1. With the corrector, UniPC-p is of order p + 1.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ld3.solvers._multistep import check_bool, lagrange_weights, multistep_orders, select_rows, shifted
from ld3.solvers.base import ModelFn, Solver, StepHook, register_solver
from ld3.solvers.common import CONVERT_AT, check_choice, check_int_range, grid_quantities, per_sample, x0_conversion

VARIANTS = ("bh1", "bh2")


@register_solver("uni_pc")
class UniPC(Solver):
    """UniPC multistep predictor-corrector (data prediction).

    Options:
        order: predictor order p in 1..3 (default 2); with the corrector the method is of order p + 1.
        variant: 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1) (default 'bh1', LD3's CIFAR-10
            config; diffusers' UniPCMultistepScheduler defaults to 'bh2').
        lower_order_final: cap the order of the last steps at the number of steps left (default True).
        corrector: apply UniC after every step but the last (default True); False gives plain UniP.
        convert_at: where the network's noise prediction becomes x0 when the network is given other
            times than the grid (``model_timesteps``, LD3's t2): 'network_time' (default; LD3's
            reference solvers, x0 = (x - sigma(t2) eps) / alpha(t2)) or 'grid_time' (at t1). No
            effect when the network sees the grid's own times.
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen dynamic thresholding of
            every data prediction (see :mod:`ld3.solvers.thresholding`).
    """

    def __init__(
        self,
        noise_schedule,
        order: int = 2,
        variant: str = "bh1",
        lower_order_final: bool = True,
        corrector: bool = True,
        convert_at: str = "network_time",
        **options: Any,
    ) -> None:
        super().__init__(noise_schedule, **options)
        self.order = check_int_range("order", order, 1, 3)
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.corrector = check_bool("corrector", corrector)
        check_choice("convert_at", convert_at, CONVERT_AT)
        self.convert_at = convert_at

    def step_orders(self, n_steps: int) -> List[int]:
        """The predictor (and corrector) order of every step."""
        return multistep_orders(n_steps, self.order, self.lower_order_final)

    def coefficients(self, timesteps: torch.Tensor):
        """Per step i: c_i, predictor weights over (m_i, m_{i-1}, ..) and corrector weights over
        (m_{i+1}, m_i, m_{i-1}, ..), as lists of 0-dim tensors (length = that step's order (+1))."""
        g = grid_quantities(self.noise_schedule, timesteps)
        n_steps = g.t.shape[0] - 1
        orders = self.step_orders(n_steps)
        h = g.lam[1:] - g.lam[:-1]
        hh = -h
        phi = torch.expm1(hh)
        B = hh if self.variant == "bh1" else phi
        aB = g.alpha[1:] * B
        base = -g.alpha[1:] * phi  # weight of m_i in x_t_ = c x_s - alpha_t phi m_s
        # b_n = n! g_n / B(h)
        g1 = phi / hh - 1.0
        g2 = g1 / hh - 0.5
        g3 = g2 / hh - 1.0 / 6.0
        b = [g1 / B, 2.0 * g2 / B, 6.0 * g3 / B]
        hp1, hp2 = shifted(h, 1), shifted(h, 2)
        rk = [-hp1 / h, -(hp1 + hp2) / h]  # r_1, r_2 (placeholders where a step has fewer points)

        def from_rhos(rhos_prev: list, rho_t=None) -> list:
            """Weights over (m_t?, m_s, m_{s-1}, ..) of -alpha B (sum rho_k D_k + rho_t D_t)."""
            prev = [-aB * r / rk[k] for k, r in enumerate(rhos_prev)]
            w_s = base + aB * sum(r / rk[k] for k, r in enumerate(rhos_prev))
            if rho_t is None:
                return [w_s] + prev
            return [-aB * rho_t, w_s + aB * rho_t] + prev

        pred = [from_rhos([])]
        corr = [from_rhos([], 0.5 * torch.ones_like(h))]
        if self.order >= 2:
            pred.append(from_rhos([0.5 * torch.ones_like(h)]))
            *rp, rt = lagrange_weights([rk[0], 1.0], b[:2])
            corr.append(from_rhos(rp, rt))
        if self.order >= 3:
            pred.append(from_rhos(lagrange_weights([rk[0], rk[1]], b[:2])))
            *rp, rt = lagrange_weights([rk[0], rk[1], 1.0], b[:3])
            corr.append(from_rhos(rp, rt))
        c = (g.sigma[1:] / g.sigma[:-1]).unbind(0)
        return c, select_rows(pred, orders), select_rows(corr, orders), g

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        c, wp, wc, g = self.coefficients(timesteps)
        n_steps = len(c)
        inv_alpha, neg_edm = x0_conversion(self.noise_schedule, g, model_timesteps, self.convert_at)
        t_in = per_sample(model_timesteps, x.shape[0])
        thr = self.thresholding if self.thresholding.thresholding else None

        def data_pred(xi: torch.Tensor, i: int) -> torch.Tensor:
            x0 = (inv_alpha[i] * xi).addcmul_(neg_edm[i], model_fn(xi, t_in[i]))
            return thr(x0) if thr is not None else x0

        ms = [data_pred(x, 0)]  # ms[-1] = m_i, ms[-2] = m_{i-1}, ...
        for i in range(n_steps):
            w = wp[i]
            x_pred = c[i] * x
            for k, wk in enumerate(w):
                x_pred.addcmul_(wk, ms[-1 - k])  # x_pred is fresh (c * x)
            if i == n_steps - 1:
                x = x_pred
            else:
                m_new = data_pred(x_pred, i + 1)
                if self.corrector:
                    w = wc[i]
                    x = (c[i] * x).addcmul_(w[0], m_new)
                    for k, wk in enumerate(w[1:]):
                        x.addcmul_(wk, ms[-1 - k])
                else:
                    x = x_pred
                ms = (ms + [m_new])[-self.order :]
            if step_done is not None:
                step_done(i + 1, x)
        return x

    def describe(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "order": self.order,
            "variant": self.variant,
            "lower_order_final": self.lower_order_final,
            "corrector": self.corrector,
            "convert_at": self.convert_at,
            **self.thresholding.describe(),
        }
