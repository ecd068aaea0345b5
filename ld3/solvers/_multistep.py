"""Shared machinery of the multistep exponential integrators (DPM-Solver++, UniPC, DEIS).

All three advance the probability-flow ODE with updates that are *linear* in the state and in the
stored model predictions:

    x_j = c_j * x_{b(j)} + sum_l W_{j,l} * m_l,

where m_l is the (data or noise) prediction at grid point l, b(j) = j - 1 for multistep methods
and the start of the current block for singlestep ones. The coefficients depend only on the time
grid, so every solver computes them once per ``sample`` call, vectorised over the steps and
differentiable in the timesteps, and the step loop is a few tensor products per network call
(no host syncs, no Python scalar maths).

Helpers here are pure functions of tensors and Python ints.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ld3.solvers.base import StepHook

Scalar = Union[torch.Tensor, float]


def multistep_orders(n_steps: int, order: int, lower_order_final: bool, final_below: Optional[int] = None) -> List[int]:
    """Order used by each step of a multistep method with lower-order warm-up.

    Step i (0-based) uses min(order, i + 1) (only i + 1 predictions exist yet). With
    ``lower_order_final`` the last steps also use min(order, n_steps - i) (so the final step is first
    order), but only when ``final_below`` is None or ``n_steps < final_below`` (DPM-Solver's reference
    applies it for fewer than 10 steps, diffusers for fewer than 15; UniPC always).
    """
    use_final = lower_order_final and (final_below is None or n_steps < final_below)
    out = []
    for i in range(n_steps):
        k = min(order, i + 1)
        if use_final:
            k = min(k, n_steps - i)
        out.append(k)
    return out


def shifted(v: torch.Tensor, k: int) -> torch.Tensor:
    """u[i] = v[i - k] for i >= k; the first k entries repeat v[0] (a finite placeholder).

    Used for "the step size k steps back": the placeholders feed coefficients of orders a step
    cannot use yet; they are never selected, but must stay finite so that their (zero) gradients
    do not turn into NaN.
    """
    n = v.shape[0]
    if k == 0:
        return v
    head = v[:1].expand(min(k, n))
    return torch.cat([head, v[: max(n - k, 0)]])


def lagrange_weights(nodes: Sequence[Scalar], moments: Sequence[Scalar]) -> List[Scalar]:
    """Weights w_j = sum_k c_jk M_k, where l_j(x) = sum_k c_jk x^k is the Lagrange basis of ``nodes``.

    Equivalently the solution of the transposed Vandermonde system sum_j w_j x_j^k = M_k
    (k < p): the quadrature weights that reproduce the given moments. Closed form for p <= 3
    nodes; works elementwise on tensors (vectorised over steps) and is differentiable.
    """
    p = len(nodes)
    if p != len(moments) or not 1 <= p <= 3:
        raise ValueError(f"need 1 to 3 nodes and as many moments, got {p} nodes and {len(moments)} moments")
    if p == 1:
        return [moments[0]]
    if p == 2:
        x0, x1 = nodes
        m0, m1 = moments
        return [(m1 - x1 * m0) / (x0 - x1), (m1 - x0 * m0) / (x1 - x0)]
    x0, x1, x2 = nodes
    m0, m1, m2 = moments
    out = []
    for xj, xa, xb in ((x0, x1, x2), (x1, x0, x2), (x2, x0, x1)):
        # l_j(x) = (x^2 - (xa + xb) x + xa xb) / ((xj - xa)(xj - xb))
        out.append((m2 - (xa + xb) * m1 + xa * xb * m0) / ((xj - xa) * (xj - xb)))
    return out


def select_rows(per_order: Sequence[Sequence[torch.Tensor]], orders: Sequence[int]) -> List[List[torch.Tensor]]:
    """Pick, for every step i, the coefficient list of its order.

    ``per_order[k - 1]`` is a list of 1-D tensors (one per slot, length n_steps) holding the
    order-k coefficients of all steps. Returns rows[i] = [slot values of step i] (0-dim tensors),
    built with one ``unbind`` per slot, not one indexing op per step.
    """
    unbound = [[w.unbind(0) for w in slots] for slots in per_order]
    return [[col[i] for col in unbound[k - 1]] for i, k in enumerate(orders)]


def linear_combination(terms: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum_j c_j * v_j for (0-dim coefficient, tensor) pairs."""
    out = terms[0][0] * terms[0][1]  # a fresh tensor: the in-place updates below are autograd-safe
    for c, v in terms[1:]:
        out.addcmul_(c, v)  # one fused kernel per term (its backward needs c and v, not out)
    return out


PlanStep = Tuple[int, torch.Tensor, List[Tuple[int, torch.Tensor]]]


def run_plan(
    pred: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    plan: Sequence[PlanStep],
    step_done: StepHook,
) -> torch.Tensor:
    """Run an explicit plan: plan[j - 1] = (b, c, [(l, W), ...]) gives x_j = c x_b + sum W m_l.

    ``pred(x_i, i)`` is called exactly once for every grid point i = 0 .. n - 2 (just before x_{i+1}
    is formed), never for the last point: NFE = n - 1. Predictions are kept only while a later
    step still refers to them.
    """
    n = len(plan) + 1
    x_last, m_last = {}, {}
    for j, (b, _, terms) in enumerate(plan, start=1):
        x_last[b] = max(x_last.get(b, 0), j)
        x_last[j - 1] = max(x_last.get(j - 1, 0), j)  # pred(x_{j-1}) is taken at step j
        for lidx, _ in terms:
            m_last[lidx] = max(m_last.get(lidx, 0), j)
    xs = {0: x}
    ms = {}
    for j in range(1, n):
        ms[j - 1] = pred(xs[j - 1], j - 1)
        b, c, terms = plan[j - 1]
        xj = linear_combination([(c, xs[b])] + [(w, ms[lidx]) for lidx, w in terms])
        xs[j] = xj
        for key in [k for k in ms if m_last.get(k, 0) <= j]:
            del ms[key]
        for key in [k for k in xs if k != j and x_last.get(k, 0) <= j]:
            del xs[key]
        if step_done is not None:
            step_done(j, xj)
    return xs[n - 1]


def check_bool(name: str, value) -> bool:
    """Raise ``ValueError`` naming ``value`` unless it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
