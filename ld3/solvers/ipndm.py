"""iPNDM: Adams-Bashforth on the noise prediction in the EDM view (Zhang & Chen 2023, DEIS,
App. "iPNDM", ``get_sampler_ipndm`` in qsh-zh/deis; the same sampler as ``ipndm_sampler`` of
zju-pi/diff-sampler, used by LD3 and GITS).

With y = x / alpha and s = sigma / alpha the ODE is dy/ds = eps(x, t) (see :mod:`ld3.solvers.euler`).
Step i (s_i -> s_{i+1}, Delta_i = s_{i+1} - s_i) with the current and up to three past evaluations:

    y_{i+1} = y_i + Delta_i * sum_j c_j eps_{i-j},     q = min(order, i + 1)  (lower-order warm-up)
    q = 1: (1)      q = 2: (3, -1) / 2      q = 3: (23, -16, 5) / 12      q = 4: (55, -59, 37, -9) / 24

These fixed coefficients are exact for equal steps in s. On any other grid (EDM's rho = 7, logSNR,
learned ones: equal steps in s are never used in practice) they are still consistent, but for orders 3
and 4 the step-size variation adds an O(h^3) local error, so the global order is min(order, 2) unless
the grid is uniform in s (see docs/solvers.md; the warm-up with lower orders has the same effect,
mitigated because the ODE is nearly linear at large s).

``variable_step=True`` uses the variable-step Adams-Bashforth coefficients instead (the
``ipndm_v_sampler`` of zju-pi/diff-sampler): c_j = (1 / Delta_i) int_{s_i}^{s_{i+1}} L_j(s) ds, with L_j
the Lagrange basis on the nodes s_i, ..., s_{i-q+1}. They equal the fixed ones on uniform grids and
give the full order on any smooth grid. Computed once per call from the grid (differentiable).

NFE = steps = ``len(timesteps) - 1``; no evaluation is wasted (the last step reuses the buffer).
"""

from __future__ import annotations

import functools
import math
from typing import Any, List, Tuple

import torch

from ld3.solvers.base import ModelFn, Solver, StepHook, register_solver
from ld3.solvers.common import check_int_range, per_sample, split, threshold_noise
from ld3.solvers.euler import edm_step_coefficients

#: fixed Adams-Bashforth coefficients for equal steps, newest evaluation first
AB_COEFFICIENTS = {
    1: (1.0,),
    2: (3.0 / 2.0, -1.0 / 2.0),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}

# 2-point Gauss-Legendre on [0, 1]: exact for the cubic Lagrange polynomials of order <= 4
_GL_NODES = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))


def variable_step_ab_coefficients(nodes: List[torch.Tensor], s_next: torch.Tensor) -> List[torch.Tensor]:
    """Adams-Bashforth weights for the nodes ``[s_i, s_{i-1}, ...]`` (newest first), step to ``s_next``.

    c_j = mean over [s_i, s_next] of the Lagrange basis polynomial L_j (exact by Gauss-Legendre).
    """
    s0 = nodes[0]
    coeffs = []
    for j, sj in enumerate(nodes):
        total = 0.0
        for u in _GL_NODES:
            point = s0 + u * (s_next - s0)
            prod = torch.ones_like(s0)
            for m, sm in enumerate(nodes):
                if m != j:
                    prod = prod * (point - sm) / (sj - sm)
            total = total + prod
        coeffs.append(total / len(_GL_NODES))
    return coeffs


@functools.lru_cache(maxsize=64)
def _ab_table(n: int, order: int) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Fixed-step Adams-Bashforth weights of n steps with warm-up (row i: order min(order, i + 1)),
    zero-padded to ``order`` columns (float64, CPU; cached: building it is most of the per-call cost)."""
    rows = [list(AB_COEFFICIENTS[min(order, i + 1)]) for i in range(n)]
    table = torch.tensor([r + [0.0] * (order - len(r)) for r in rows], dtype=torch.float64)
    return table, tuple(len(r) for r in rows)


@register_solver("ipndm")
class IPNDM(Solver):
    """iPNDM (fixed-coefficient Adams-Bashforth in sigma~ on the noise prediction).

    Options:
        order: 1..4 (default 4); lower orders are used while the buffer fills.
        variable_step: use the variable-step coefficients (default False: the DEIS / EDM-sampler ones).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen thresholding.
    """

    def __init__(self, noise_schedule, order: int = 4, variable_step: bool = False, **options: Any) -> None:
        super().__init__(noise_schedule, **options)
        self.order = check_int_range("order", order, 1, 4)
        if not isinstance(variable_step, bool):
            raise ValueError(f"variable_step must be True or False, got {variable_step!r}")
        self.variable_step = variable_step

    def step_weights(self, edm: torch.Tensor) -> List[List[Any]]:
        """Per step, the weights of eps_i, eps_{i-1}, ... (floats or 0-dim tensors)."""
        s = edm.unbind(0)
        weights = []
        for i in range(len(s) - 1):
            q = min(self.order, i + 1)
            if self.variable_step and q > 1:
                weights.append(variable_step_ab_coefficients([s[i - j] for j in range(q)], s[i + 1]))
            else:
                weights.append(list(AB_COEFFICIENTS[q]))
        return weights

    def _step_coefficients(self, edm: torch.Tensor, delta: torch.Tensor, like: torch.Tensor) -> List[tuple]:
        """Per step, the tuple of delta_i * c_j (0-dim tensors, dtype of ``like``), newest evaluation first."""
        n = delta.numel()
        if self.variable_step:
            return [split(torch.stack([delta[i] * w for w in ws]), like) for i, ws in enumerate(self.step_weights(edm))]
        table, lengths = _ab_table(n, self.order)
        flat = split((delta[:, None] * table.to(dtype=delta.dtype, device=delta.device)).reshape(-1), like)
        return [flat[i * self.order : i * self.order + lengths[i]] for i in range(n)]

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        g, ratio, delta = edm_step_coefficients(self.noise_schedule, timesteps)
        r = split(ratio, x)
        coeffs = self._step_coefficients(g.edm, delta, x)
        t_in = per_sample(model_timesteps, x.shape[0])
        thr = self.thresholding.thresholding  # hoisted: the loop runs once per network call
        buffer: List[torch.Tensor] = []  # newest first, at most order - 1 past evaluations kept
        for i in range(len(r)):
            eps = model_fn(x, t_in[i])
            if thr:
                eps = threshold_noise(eps, x, g.alpha[i], g.sigma[i], self.thresholding)
            buffer.insert(0, eps)
            x = r[i] * x
            for c, e in zip(coeffs[i], buffer, strict=True):
                x = x.addcmul_(c, e)
            del buffer[self.order - 1 :]
            if step_done is not None:
                step_done(i + 1, x)
        return x

    def describe(self) -> dict:
        return {"name": self.name, "order": self.order, "variable_step": self.variable_step,
                **self.thresholding.describe()}
