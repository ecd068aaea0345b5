"""Convergence order against the exact probability-flow ODE solution of an analytic mixture.

For every case in tests/solver_cases.py with an expected order, the final error ||x_0 - x_0*|| is
computed on logSNR-uniform grids and the log-log slope of error versus NFE is fitted over the
case's ``fit_nfe`` window; it must match the theoretical order within 0.3. The reference solution
(solve_ivp DOP853, rtol 1e-12) is computed once per schedule. Two schedules (VP linear, EDM) are
used; in (x / alpha, sigma~) coordinates their ODEs coincide, so they differ only through the
log-SNR range and the arithmetic path (alpha != 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from solver_cases import CASES

from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP
from ld3.solvers import get_solver

DT = torch.float64
TOLERANCE = 0.3
ORDER_CASES = [c for c in CASES if c.order is not None]



def _setup(kind: str):
    ns = NoiseScheduleVP("linear") if kind == "vp_linear" else NoiseScheduleEDM()
    gmm = AnalyticGMM.random(ns, dim=4, n_components=3, seed=0)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(8, 4, dtype=DT, generator=g) * float(ns.marginal_std(torch.tensor(ns.T, dtype=DT)))
    ref = gmm.ode_solution(x_T, ns.T, ns.eps, rtol=1e-12, atol=1e-13)
    return ns, gmm, x_T, ref


@pytest.fixture(scope="module", params=["vp_linear", "edm"])
def reference(request):
    return _setup(request.param)


def logsnr_grid(ns, n_points: int) -> torch.Tensor:
    lam = torch.linspace(ns.lambda_min, ns.lambda_max, n_points, dtype=DT)
    ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = ns.T, ns.eps
    return ts


def measured_order(case, ns, gmm, x_T, ref):
    solver = get_solver(case.name, ns, **case.options)
    nfes, errs = [], []
    for nfe in case.fit_nfe:
        for n in range(nfe, nfe + 4):  # move to the next NFE this solver can spend exactly
            try:
                length = solver.num_timesteps(n)
                break
            except ValueError:
                continue
        out = solver.sample(gmm.eps, x_T, logsnr_grid(ns, length))
        nfes.append(n)
        errs.append(float((out - ref).norm() / ref.norm()))
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    return slope, nfes, errs


@pytest.mark.parametrize("case", ORDER_CASES, ids=[c.id for c in ORDER_CASES])
def test_convergence_order(case, reference):
    ns, gmm, x_T, ref = reference
    slope, nfes, errs = measured_order(case, ns, gmm, x_T, ref)
    detail = ", ".join(f"{n}:{e:.2e}" for n, e in zip(nfes, errs, strict=True))
    assert abs(slope - case.order) <= TOLERANCE, (
        f"{case.id} on {ns.kind}: slope {slope:.2f}, expected {case.order} ({case.note}); errors {detail}"
    )
    assert errs[-1] < errs[0]
