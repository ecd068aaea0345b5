"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12), deterministic and stochastic.

With lambda = log(alpha / sigma) and h = lambda_t - lambda_s > 0 for a step s -> t (t < s), the
deterministic DDIM step (eta = 0) is the first-order DPM-Solver (Lu et al. 2022, Eq. 3.7):

    x_t = (alpha_t / alpha_s) x_s - sigma_t expm1(h) eps_s                      (noise form)
        = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0_s                      (data form, DPM-Solver++ 1)

which is also exactly Euler's method for y = x / alpha in the EDM noise level sigma~ = sigma / alpha
(dy/dsigma~ = eps). The stochastic DDIM (eta > 0, DDIM Eq. 16) adds fresh noise of standard deviation

    std = eta * sigma_t * sqrt(1 - exp(-2h))     (= eta sqrt((1-a_t')/(1-a_s')) sqrt(1 - a_s'/a_t') with
                                                  a' = alpha^2 for VP models)

    x_t = alpha_t x0_s + sqrt(sigma_t^2 - std^2) eps_s + std z,   z ~ N(0, I);

eta = 1 is DDPM's ancestral sampler. NFE = number of steps = len(timesteps) - 1.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ld3.solvers.base import ModelFn, Solver, StepHook, register_solver
from ld3.solvers.common import grid_quantities, per_sample, split, threshold_noise


def check_eta(eta: Any) -> float:
    """``eta`` as a float in [0, 1] (the one check of DDIM's stochasticity, also used by TimeTuner)."""
    try:
        eta_f = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}") from None
    if not (0.0 <= eta_f <= 1.0):
        raise ValueError(f"eta={eta!r} is out of range; allowed: 0 <= eta <= 1")
    return eta_f


@register_solver("ddim")
class DDIM(Solver):
    """DDIM / DPM-Solver-1.

    Options:
        eta: stochasticity in [0, 1] (0: the probability-flow ODE; 1: DDPM ancestral sampling).
        seed: for eta > 0, every ``sample`` call draws its noise from a fresh ``torch.Generator``
            seeded with ``seed`` on the device of ``x_T``, so repeated calls give identical results.
        generator: for eta > 0, a user-owned ``torch.Generator`` (its state advances across calls,
            as in diffusers). Give at most one of ``seed`` and ``generator``; with neither, the
            global RNG is used.
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen dynamic thresholding
            of the data prediction (see :mod:`ld3.solvers.thresholding`).
    """

    def __init__(
        self,
        noise_schedule,
        eta: float = 0.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        **options: Any,
    ) -> None:
        super().__init__(noise_schedule, **options)
        eta_f = check_eta(eta)
        if seed is not None and generator is not None:
            raise ValueError("give at most one of seed and generator")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.eta = eta_f
        self.seed = seed
        self.generator = generator

    def _noise_generator(self, x: torch.Tensor) -> Optional[torch.Generator]:
        if self.generator is not None:
            return self.generator
        if self.seed is not None:
            return torch.Generator(device=x.device).manual_seed(self.seed)
        return None

    def step_coefficients(self, timesteps: torch.Tensor):
        """Per-step (c_x, c_eps, std) with x_t = c_x x_s + c_eps eps_s + std z (std None when eta = 0)."""
        g = grid_quantities(self.noise_schedule, timesteps)
        h = g.lam[1:] - g.lam[:-1]
        c_x = g.alpha[1:] / g.alpha[:-1]
        if self.eta == 0.0:
            return c_x, -g.sigma[1:] * torch.expm1(h), None
        # u = eta^2 (1 - e^{-2h}); sqrt(1 - u) - e^h = -(expm1(h) + u / (1 + sqrt(1 - u))) (no cancellation)
        u = -(self.eta**2) * torch.expm1(-2.0 * h)
        c_eps = -g.sigma[1:] * (torch.expm1(h) + u / (1.0 + torch.sqrt(1.0 - u)))
        return c_x, c_eps, g.sigma[1:] * torch.sqrt(u)

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        c_x, c_eps, std = self.step_coefficients(timesteps)
        thr = self.thresholding if self.thresholding.thresholding else None
        if thr is not None:
            g = grid_quantities(self.noise_schedule, timesteps)
            alphas, sigmas = g.alpha.unbind(0), g.sigma.unbind(0)
        gen = self._noise_generator(x) if std is not None else None
        t_in = per_sample(model_timesteps, x.shape[0])
        cx, ce = split(c_x, x), split(c_eps, x)
        sd = split(std, x) if std is not None else None
        for i in range(len(cx)):
            eps = model_fn(x, t_in[i])
            if thr is not None:
                eps = threshold_noise(eps, x, alphas[i], sigmas[i], thr)
            x = (cx[i] * x).addcmul_(ce[i], eps)  # two kernels; in place on a fresh tensor (autograd-safe)
            if sd is not None:
                x = x + sd[i] * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            if step_done is not None:
                step_done(i + 1, x)
        return x

    def describe(self) -> dict:
        out = {"name": self.name, "eta": self.eta, **self.thresholding.describe()}
        if self.seed is not None:
            out["seed"] = self.seed
        return out
