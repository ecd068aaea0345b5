"""iPNDM and PFDiff against independent re-implementations of their reference algorithms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP, ddpm_linear_betas
from ld3.solvers import get_solver
from ld3.solvers.ipndm import AB_COEFFICIENTS, variable_step_ab_coefficients

DT = torch.float64



def logsnr_grid(ns, n_points: int) -> torch.Tensor:
    lam = torch.linspace(ns.lambda_min, ns.lambda_max, n_points, dtype=DT)
    ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = ns.T, ns.eps
    return ts


def x_T(ns, batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, dtype=DT, generator=g) * float(ns.marginal_std(torch.tensor(ns.T, dtype=DT)))


# ---------------------------------------------------------------------------------------------- iPNDM coefficients
def _np_ab_weights(nodes, s_next):
    """Exact integral of each Lagrange basis polynomial over [nodes[0], s_next] / step (numpy polyint)."""
    nodes = np.asarray(nodes, dtype=np.float64)
    out = []
    for j in range(len(nodes)):
        others = np.delete(nodes, j)
        poly = np.poly1d(np.poly(others)) / np.prod(nodes[j] - others) if len(others) else np.poly1d([1.0])
        prim = np.polyint(poly)
        out.append((prim(s_next) - prim(nodes[0])) / (s_next - nodes[0]))
    return np.array(out)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_fixed_ab_coefficients_are_the_uniform_step_weights(order):
    nodes = [0.0 - j for j in range(order)]  # equal steps, newest first, integrate to +1
    np.testing.assert_allclose(_np_ab_weights(nodes, 1.0), AB_COEFFICIENTS[order], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_variable_step_coefficients_against_numpy(order):
    rng = np.random.default_rng(order)
    for _ in range(5):
        s = np.sort(rng.uniform(0.01, 5.0, order + 1))  # descending integration: newest node is the smallest
        nodes, s_next = list(s[1:]), s[0]
        ours = variable_step_ab_coefficients([torch.tensor(v, dtype=DT) for v in nodes], torch.tensor(s_next, dtype=DT))
        np.testing.assert_allclose([float(c) for c in ours], _np_ab_weights(nodes, s_next), rtol=1e-9)


def test_variable_step_equals_fixed_on_a_uniform_sigma_grid():
    ns = NoiseScheduleEDM(sigma_min=0.5, sigma_max=4.0)
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=0)
    x = x_T(ns, 3, 4)
    ts = torch.linspace(4.0, 0.5, 12, dtype=DT)  # equal steps in sigma~ = sigma
    for order in (2, 3, 4):
        a = get_solver("ipndm", ns, order=order).sample(gmm.eps, x, ts)
        b = get_solver("ipndm", ns, order=order, variable_step=True).sample(gmm.eps, x, ts)
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["edm", "vp_discrete"])
def test_ipndm_matches_edm_sampler_loop(order, kind):
    """The zju-pi/diff-sampler ``ipndm_sampler`` loop, rewritten on y = x / alpha in sigma~."""
    ns = NoiseScheduleEDM() if kind == "edm" else NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    gmm = AnalyticGMM.random(ns, dim=5, n_components=3, seed=3)
    x = x_T(ns, 2, 5)
    ts = logsnr_grid(ns, 9)
    alpha = ns.marginal_alpha(ts)
    sig = ns.edm_sigma(ts)
    y = x / alpha[0]
    history = []
    for i in range(len(ts) - 1):
        d = gmm.eps(alpha[i] * y, ts[i].expand(2))
        q = min(order, i + 1)
        c = AB_COEFFICIENTS[q]
        comb = c[0] * d + sum(c[j] * history[-j] for j in range(1, q))
        y = y + (sig[i + 1] - sig[i]) * comb
        history.append(d)
    ref = alpha[-1] * y
    ours = get_solver("ipndm", ns, order=order).sample(gmm.eps, x, ts)
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------- PFDiff
def _pfdiff_reference_ddim(eps_fn, x, ts, ns, k, h):
    """The onefly123/PFDiff ``denoising_PFDiff_{k}_{h}`` loop (index skipping over the fine grid)."""
    a = ns.marginal_alpha(ts).pow(2)  # alphas_cumprod
    B = x.shape[0]

    def p_theta(e, xt, i, j):
        x0 = (xt - e * (1 - a[i]).sqrt()) / a[i].sqrt()
        return a[j].sqrt() * x0 + (1 - a[j]).sqrt() * e

    last = len(ts) - 1
    buffered = None
    for index in range(last):
        if index != 0 and (index - 1) % (k + 1) != 0:
            continue
        if buffered is None:
            buffered = eps_fn(x, ts[index].expand(B))
            x = p_theta(buffered, x, index, index + 1)
        else:
            spring = p_theta(buffered, x, index, index + h)
            buffered = eps_fn(spring, ts[index + h].expand(B))
            x = p_theta(buffered, x, index, index + k + 1)
    return x


@pytest.mark.parametrize("k, h", [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
def test_pfdiff_ddim_matches_reference_loop(k, h):
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    gmm = AnalyticGMM.random(ns, dim=5, n_components=3, seed=2)
    x = x_T(ns, 3, 5)
    solver = get_solver("pfdiff", ns, k=k, h=h)
    for nfe in (1, 2, 4):
        ts = logsnr_grid(ns, solver.num_timesteps(nfe))
        assert len(ts) == (k + 1) * nfe - k + 1  # the reference's --timesteps (k+1)N - k, plus t_min
        ours = solver.sample(gmm.eps, x, ts)
        ref = _pfdiff_reference_ddim(gmm.eps, x, ts, ns, k, h)
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def _pfdiff_reference_dpm2(eps_fn, x, ts, ns, k, h):
    """PFDiff's singlestep DPM-Solver-2 path (dpm-solver/PFDiff_{k}_{h}.py, noise prediction, r1 = 1/2)."""
    B = x.shape[0]
    lam = ns.marginal_lambda(ts)

    def first_order(xs, s, t, lam_s, lam_t, e):
        la_s, la_t = ns.marginal_log_mean_coeff(s), ns.marginal_log_mean_coeff(t)
        return torch.exp(la_t - la_s) * xs - ns.marginal_std(t) * torch.expm1(lam_t - lam_s) * e

    def dpm2(xs, ia, ib, buffer=None):
        s, t = ts[ia], ts[ib]
        lam_s1 = lam[ia] + 0.5 * (lam[ib] - lam[ia])
        s1 = ns.inverse_lambda(lam_s1)
        if buffer is None:
            e_s = eps_fn(xs, s.expand(B))
            x_s1 = first_order(xs, s, s1, lam[ia], lam_s1, e_s)
            e_s1 = eps_fn(x_s1, s1.expand(B))
        else:
            e_s, e_s1 = buffer
        # 'dpmsolver' second-order update with r1 = 0.5
        x_t = first_order(xs, s, t, lam[ia], lam[ib], e_s) - ns.marginal_std(t) * torch.expm1(lam[ib] - lam[ia]) * (
            e_s1 - e_s
        )
        return x_t, (e_s, e_s1)

    x, buf = dpm2(x, 0, 1)
    i = 1
    while i < len(ts) - 1:
        spring, _ = dpm2(x, i, i + k + 1 - h, buffer=buf)
        x, buf = dpm2(spring, i + k + 1 - h, i + k + 1)
        i += k + 1
    return x


@pytest.mark.parametrize("k, h", [(1, 1), (2, 1), (3, 2)])
def test_pfdiff_dpm_solver_2_matches_reference_loop(k, h):
    ns = NoiseScheduleVP("linear")
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=5)
    x = x_T(ns, 2, 4)
    solver = get_solver("pfdiff", ns, k=k, h=h, base="dpm_solver_2")
    for nfe in (2, 4, 6):
        ts = logsnr_grid(ns, solver.num_timesteps(nfe))
        assert len(ts) == (k + 1) * (nfe // 2) - k + 1
        ours = solver.sample(gmm.eps, x, ts)
        ref = _pfdiff_reference_dpm2(gmm.eps, x, ts, ns, k, h)
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_pfdiff_beats_ddim_at_equal_low_nfe():
    ns = NoiseScheduleEDM()
    gmm = AnalyticGMM.random(ns, dim=8, n_components=3, seed=0)
    x = x_T(ns, 16, 8)
    ref = gmm.ode_solution(x, ns.T, ns.eps)
    for nfe in (6, 10):
        ddim = get_solver("ddim", ns)
        pf = get_solver("pfdiff", ns, k=1, h=1)
        e_ddim = (ddim.sample(gmm.eps, x, logsnr_grid(ns, ddim.num_timesteps(nfe))) - ref).norm()
        e_pf = (pf.sample(gmm.eps, x, logsnr_grid(ns, pf.num_timesteps(nfe))) - ref).norm()
        assert e_pf < 0.7 * e_ddim
