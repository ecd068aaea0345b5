"""EDM-style Euler and Heun solvers (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Alg. 1), on any noise schedule.

With y = x / alpha and the EDM noise level s = sigma / alpha (``NoiseSchedule.edm_sigma``), the
probability-flow ODE of any schedule reads dy/ds = eps(x, t) (Karras et al. Eq. 4 with
D = y - s eps). Between grid points s_i > s_{i+1}, with Delta_i = s_{i+1} - s_i < 0:

    Euler:  y_{i+1} = y_i + Delta_i eps_i
    Heun:   y~ = y_i + Delta_i eps_i,  eps~ = eps(alpha_{i+1} y~, t_{i+1}),
            y_{i+1} = y_i + Delta_i (eps_i + eps~) / 2

Both are computed on x directly: x_{i+1} = (alpha_{i+1} / alpha_i) x_i + alpha_{i+1} Delta_i (...).
Euler is the same method as DDIM (``ddim``), evaluated through sigma~ differences instead of
expm1 of log-SNR differences.

NFE. Euler: one call per step, ``len(timesteps) - 1``. Heun (``final_step='euler'``, the default):
like EDM's Alg. 1, the last step is a plain Euler step (EDM takes it from sigma_min to 0; here it is
the last step of the grid, which keeps the method second order globally because a single
first-order step adds only O(h^2)), so N steps cost 2N - 1 calls and an NFE must be odd:
``len(timesteps) = (nfe + 3) / 2``. ``final_step='heun'`` corrects every step: 2N calls, even NFE,
``len(timesteps) = nfe / 2 + 1``.
"""

from __future__ import annotations

from typing import Any

import torch

from ld3.solvers.base import ModelFn, Solver, StepHook, register_solver
from ld3.solvers.common import check_choice, grid_quantities, per_sample, split, threshold_noise


def edm_step_coefficients(noise_schedule, timesteps: torch.Tensor):
    """Grid quantities and per-step (ratio, delta): x_{i+1} = ratio_i x_i + delta_i * eps (Euler in sigma~)."""
    g = grid_quantities(noise_schedule, timesteps, with_lambda=False)
    ratio = torch.exp(torch.diff(torch.log(g.alpha)))
    delta = g.alpha[1:] * torch.diff(g.edm)
    return g, ratio, delta


class _EDMSolver(Solver):
    """Shared option handling: Imagen thresholding of the implied data prediction."""

    def _thresholded(self, eps: torch.Tensor, x: torch.Tensor, grid, i: int) -> torch.Tensor:
        return threshold_noise(eps, x, grid.alpha[i], grid.sigma[i], self.thresholding)

    def describe(self) -> dict:
        return {"name": self.name, **self.thresholding.describe()}


@register_solver("euler")
class Euler(_EDMSolver):
    """Euler's method in the EDM noise level sigma~ on y = x / alpha (first order, NFE = steps).

    Options: thresholding, dynamic_thresholding_ratio, sample_max_value (Imagen thresholding).
    """

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        g, ratio, delta = edm_step_coefficients(self.noise_schedule, timesteps)
        r, d = split(ratio, x), split(delta, x)
        t_in = per_sample(model_timesteps, x.shape[0])
        thr = self.thresholding.thresholding  # hoisted: the loop runs once per network call
        for i in range(len(r)):
            eps = model_fn(x, t_in[i])
            if thr:
                eps = self._thresholded(eps, x, g, i)
            x = (r[i] * x).addcmul_(d[i], eps)
            if step_done is not None:
                step_done(i + 1, x)
        return x


@register_solver("heun")
class Heun(_EDMSolver):
    """EDM's second-order Heun method (Karras et al. 2022, Alg. 1, deterministic).

    Options:
        final_step: ``'euler'`` (default; EDM's convention, NFE = 2N - 1 for N steps) or ``'heun'``
            (every step corrected, NFE = 2N).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen thresholding.
    """

    FINAL_STEPS = ("euler", "heun")

    def __init__(self, noise_schedule, final_step: str = "euler", **options: Any) -> None:
        super().__init__(noise_schedule, **options)
        check_choice("final_step", final_step, self.FINAL_STEPS)
        self.final_step = final_step

    def nfe(self, num_timesteps: int) -> int:
        steps = num_timesteps - 1
        return 2 * steps - 1 if self.final_step == "euler" else 2 * steps

    def num_timesteps(self, nfe: int) -> int:
        if self.final_step == "euler":
            if nfe < 1 or nfe % 2 == 0:
                raise ValueError(
                    f"nfe={nfe} is not possible for heun with final_step='euler': N steps cost 2N - 1 "
                    f"evaluations, so nfe must be odd and >= 1 (use final_step='heun' for even nfe)"
                )
            return (nfe + 3) // 2
        if nfe < 2 or nfe % 2 == 1:
            raise ValueError(
                f"nfe={nfe} is not possible for heun with final_step='heun': N steps cost 2N "
                f"evaluations, so nfe must be even and >= 2 (use final_step='euler' for odd nfe)"
            )
        return nfe // 2 + 1

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        g, ratio, delta = edm_step_coefficients(self.noise_schedule, timesteps)
        n = ratio.numel()
        flat = split(torch.cat([ratio, delta, 0.5 * delta]), x)  # one dtype cast + unbind instead of three
        r, d, half = flat[:n], flat[n : 2 * n], flat[2 * n :]
        t_in = per_sample(model_timesteps, x.shape[0])
        thr = self.thresholding.thresholding  # hoisted: the loop runs once per network call
        corrected = n if self.final_step == "heun" else n - 1  # steps 0 .. corrected - 1 take Heun's correction
        for i in range(n):
            eps = model_fn(x, t_in[i])
            if thr:
                eps = self._thresholded(eps, x, g, i)
            rx = r[i] * x
            x_euler = torch.addcmul(rx, d[i], eps)
            if i < corrected:
                eps_next = model_fn(x_euler, t_in[i + 1])
                if thr:
                    eps_next = self._thresholded(eps_next, x_euler, g, i + 1)
                x = rx.addcmul_(half[i], eps + eps_next)  # rx is not needed by autograd (mul saves inputs)
            else:
                x = x_euler
            if step_done is not None:
                step_done(i + 1, x)
        return x

    def describe(self) -> dict:
        return {**super().describe(), "final_step": self.final_step}
