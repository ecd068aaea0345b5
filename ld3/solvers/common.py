"""Small helpers shared by the solvers: grid quantities, per-sample times, thresholded predictions.

All functions are pure and differentiable. They assume the grid was validated once by
:meth:`ld3.solvers.base.Solver.sample`, so schedules are evaluated with ``check=False`` (no host sync).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ld3.schedules import NoiseSchedule
from ld3.solvers.thresholding import ThresholdingOptions


@dataclass
class Grid:
    """Schedule quantities at every grid point (1-D tensors of the grid's length).

    alpha, sigma: the marginal coefficients; lam = log(alpha / sigma); edm = sigma / alpha (the EDM
    noise level sigma~ of x / alpha).
    """

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: Optional[torch.Tensor]
    edm: torch.Tensor


def grid_quantities(noise_schedule: NoiseSchedule, timesteps: torch.Tensor, with_lambda: bool = True) -> Grid:
    """Evaluate alpha, sigma, lambda and sigma~ on the whole (already validated) grid at once.

    ``with_lambda=False`` skips lambda (``lam`` is then None) for solvers that only need sigma~.
    """
    log_alpha, sigma = noise_schedule.marginal_log_alpha_and_std(timesteps, check=False)
    alpha = torch.exp(log_alpha)
    lam = log_alpha - torch.log(sigma) if with_lambda else None
    return Grid(t=timesteps, alpha=alpha, sigma=sigma, lam=lam, edm=sigma / alpha)


#: where a data-prediction solver converts the network's noise prediction to x0 when the network is given
#: other times than the grid (``model_timesteps``, LD3's t2): ``network_time`` (LD3's reference solvers:
#: x0 = (x - sigma(t2) eps) / alpha(t2), the noise level the network was told) or ``grid_time``
#: (x0 = (x - sigma(t1) eps) / alpha(t1)). Identical when the two grids are equal.
CONVERT_AT = ("network_time", "grid_time")


def x0_conversion(
    noise_schedule: NoiseSchedule, g: Grid, model_timesteps: torch.Tensor, convert_at: str
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Per grid point (1 / alpha, -sigma / alpha) of x0 = x / alpha - (sigma / alpha) eps (see ``CONVERT_AT``)."""
    if convert_at == "network_time" and model_timesteps is not g.t:
        g = grid_quantities(noise_schedule, model_timesteps, with_lambda=False)
    return list((1.0 / g.alpha).unbind(0)), list((-g.edm).unbind(0))


def per_sample(values: torch.Tensor, batch: int) -> List[torch.Tensor]:
    """Split a 1-D tensor into per-sample time vectors ``values[i].expand(batch)`` (views; grads flow)."""
    column = values.unsqueeze(1)
    if batch != 1:  # (n, 1) already has the shape at batch 1: one dispatch less
        column = column.expand(-1, batch)
    return list(column.unbind(0))


def split(values: torch.Tensor, like: torch.Tensor) -> tuple:
    """Unbind per-step coefficients into 0-dim tensors in the dtype of ``like`` (float32/float64 only).

    The update would compute in ``like``'s dtype anyway (a 0-dim operand never promotes a tensor), so the
    cast changes no result; it makes each mixed-dtype kernel ~40% cheaper. Half types keep the
    coefficients' dtype.
    """
    if like.dtype in (torch.float32, torch.float64) and values.dtype != like.dtype:
        values = values.to(like.dtype)
    return values.unbind(0)


def threshold_noise(
    eps: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    thresholding: Optional[ThresholdingOptions],
) -> torch.Tensor:
    """Apply dynamic thresholding to the data prediction implied by ``eps`` and return the new noise.

    x0 = (x - sigma eps) / alpha is thresholded, then eps = (x - alpha x0) / sigma (as diffusers'
    DDIM does), so noise-form updates see the clipped data prediction. No-op when disabled.
    """
    if thresholding is None or not thresholding.thresholding:
        return eps
    x0 = thresholding((x - sigma * eps) / alpha)
    return (x - alpha * x0) / sigma


def check_choice(name: str, value, allowed) -> None:
    """Raise ``ValueError`` naming ``value`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


def check_int_range(name: str, value, lo: int, hi: int) -> int:
    """Raise ``ValueError`` naming ``value`` unless it is an int in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ValueError(f"{name}={value!r} is out of range; allowed: integers {lo}..{hi}")
    return value
