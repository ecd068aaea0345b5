"""diffusers' ``timestep_spacing``: ``linspace`` and ``trailing`` as discretizations, ``leading`` for LD3Scheduler.

For a model trained on N discrete steps (training step k at t = (k + 1) / N), the M = ``num_points - 1``
integer steps of diffusers' multistep schedulers (DPMSolverMultistep, DEISMultistep, UniPCMultistep; the
spacings of Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2):

* ``linspace``: round(linspace(0, N - 1, M + 1)) without its last point;
* ``leading``:  k_i = i * (N // (M + 1)) + ``steps_offset``, i = M..1 (the multistep schedulers' stride);
* ``trailing``: round(arange(N, 0, -N / M)) - 1,

followed by the end point t = 1 / N (diffusers' ``final_sigmas_type='sigma_min'``). Only for schedules with
training steps (``noise_schedule.discrete_steps``). ``linspace`` and ``trailing`` start at k = N - 1 (t = T) and
are registered discretization kinds; ``leading`` starts below T (at M * (N // (M + 1)) + offset), which a
discretization kind may not, so it is offered only through :func:`spacing_grid` (LD3Scheduler's
``timestep_spacing``). With ``steps_offset=0`` its last step is k = 0, the end point itself (an error here).

``karras_sigmas`` is the grid of diffusers' ``use_karras_sigmas=True`` (DEISMultistep, DPMSolverMultistep,
UniPCMultistep, EulerDiscrete): the EDM noise levels sigma~ = sigma / alpha of the M + 1 points follow Karras et
al.'s rho = 7 law from sigma~(T) to sigma~(1 / N) (the integration times are those of the ``edm`` kind), and the
network gets the nearest integer step, found as diffusers' ``_sigma_to_t`` does (log sigma~ interpolated
linearly over k) and rounded; these rounded steps are the ``model_timesteps``. diffusers runs the same grid
with ``set_timesteps(M + 1)``: its last two sigmas are equal, so it spends one more network call on a
zero-length final step that changes nothing. Here NFE = M.
"""

from __future__ import annotations

import numpy as np
import torch

from ld3.discretizations.base import Discretization, Request, register_kind
from ld3.discretizations.handcrafted import edm

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def spacing_train_steps(spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int = 0) -> np.ndarray:
    """The ``num_steps`` integer training steps (descending) of ``timestep_spacing`` = ``spacing``."""
    n, m = int(num_train_timesteps), int(num_steps)
    if m < 1:
        raise ValueError(f"the number of steps must be >= 1, got {m}")
    if spacing == "linspace":
        ks = np.linspace(0, n - 1, m + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ks = (np.arange(0, m + 1) * (n // (m + 1))).round()[::-1][:-1] + int(steps_offset)
    elif spacing == "trailing":
        ks = np.arange(n, 0, -n / m).round() - 1
    else:
        raise ValueError(f"timestep_spacing={spacing!r} is not supported; allowed: {list(TIMESTEP_SPACINGS)}")
    return ks.astype(np.int64)


def spacing_grid(spacing: str, num_train_timesteps: int, num_points: int, steps_offset: int = 0) -> torch.Tensor:
    """The grid t of ``num_points`` points: the spacing's steps at (k + 1) / N, then 1 / N (float64)."""
    n = int(num_train_timesteps)
    ks = torch.as_tensor(spacing_train_steps(spacing, n, num_points - 1, steps_offset), dtype=torch.float64)
    ts = torch.cat([(ks + 1.0) / n, torch.tensor([1.0 / n], dtype=torch.float64)])
    if not bool((ts[1:] < ts[:-1]).all()) or int(ks.min()) < 0 or int(ks.max()) > n - 1:
        raise ValueError(
            f"{spacing} spacing of {num_points - 1} steps over N = {n} training steps (steps_offset={steps_offset}) "
            f"gives steps {ks.long().tolist()}: they must be distinct, in [1, {n - 1}] (k = 0 is the end point)"
        )
    return ts


def _steps(req: Request, spacing: str) -> int:
    n = req.noise_schedule.discrete_steps
    if n is None:
        raise ValueError(
            f"discretization kind {spacing!r} needs a model trained on discrete steps; the {req.noise_schedule.kind} "
            f"schedule has none (use time_uniform / logSNR / edm)"
        )
    return n


@register_kind("linspace")
def linspace(req: Request) -> torch.Tensor:
    """diffusers' ``timestep_spacing='linspace'``."""
    return spacing_grid("linspace", _steps(req, "linspace"), req.num_points)


@register_kind("trailing")
def trailing(req: Request) -> torch.Tensor:
    """diffusers' ``timestep_spacing='trailing'``."""
    return spacing_grid("trailing", _steps(req, "trailing"), req.num_points)


def karras_train_steps(noise_schedule, sigmas: torch.Tensor) -> np.ndarray:
    """diffusers' ``_sigma_to_t``: the fractional training step of each EDM noise level (log sigma~ linear in k)."""
    log_table = (-noise_schedule.marginal_lambda(noise_schedule.t_array.to(torch.float64), check=False)).numpy()
    log_s = np.log(np.maximum(sigmas.detach().to("cpu", torch.float64).numpy(), 1e-10))
    return np.interp(log_s, log_table, np.arange(log_table.size, dtype=np.float64))


@register_kind("karras_sigmas")
def karras_sigmas(req: Request, *, round_model_timesteps: bool = True) -> Discretization:
    """diffusers' ``use_karras_sigmas=True`` grid: Karras rho = 7 noise levels, integer network steps."""
    n = _steps(req, "karras_sigmas")
    if not isinstance(round_model_timesteps, bool):
        raise ValueError(f"round_model_timesteps must be True or False, got {round_model_timesteps!r}")
    ns = req.noise_schedule
    t = edm(req, rho=7.0)
    model_t = None
    if round_model_timesteps:
        ks = karras_train_steps(ns, ns.edm_sigma(t, check=False)).round()
        model_t = torch.as_tensor((ks + 1.0) / n, dtype=torch.float64)
    return Discretization(timesteps=t, model_timesteps=model_t, source="handcrafted:karras_sigmas")
