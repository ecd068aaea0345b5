"""PFDiff's midpoint rule (``midpoint``) and its order-1 springboard base (``base='dpm_solver_1'``) against an
independent transcription of the reference's singlestep_fixed loop (onefly123/PFDiff, dpm-solver/PFDiff_{k}_{h}.py:
the intermediate point of every DPM-Solver-2 step is ``get_time_steps(skip_type, t, next_t, N=order)[1]``)."""

from __future__ import annotations

import pytest
import torch

from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleVP
from ld3.solvers import get_solver

DT = torch.float64


def time_uniform_grid(ns, n_points: int) -> torch.Tensor:
    return torch.linspace(ns.T, ns.eps, n_points, dtype=DT)


def x_T(ns, batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, dtype=DT, generator=g)


def _inner_points(ns, skip, s, t, n):
    """The reference's get_time_steps(skip_type, t_T=s, t_0=t, N=n)."""
    if skip == "logSNR":
        lam = torch.linspace(float(ns.marginal_lambda(s)), float(ns.marginal_lambda(t)), n + 1, dtype=DT)
        return ns.inverse_lambda(lam)
    if skip == "time_uniform":
        return torch.linspace(float(s), float(t), n + 1, dtype=DT)
    return torch.linspace(float(s) ** 0.5, float(t) ** 0.5, n + 1, dtype=DT) ** 2


def _reference_loop(eps_fn, x, ts, ns, k, h, order, skip):
    B = x.shape[0]

    def ddim(xs, s, t, e):
        h_ = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        ratio = torch.exp(ns.marginal_log_mean_coeff(t) - ns.marginal_log_mean_coeff(s))
        return ratio * xs - ns.marginal_std(t) * torch.expm1(h_) * e

    def step(xs, ia, ib, buffer=None):
        s, t = ts[ia], ts[ib]
        if order == 1:
            e = eps_fn(xs, s.expand(B)) if buffer is None else buffer
            return ddim(xs, s, t, e), e
        inner = _inner_points(ns, skip, s, t, 2)
        lam_i = ns.marginal_lambda(inner)
        hh = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        r1 = (lam_i[1] - lam_i[0]) / hh
        s1 = ns.inverse_lambda(ns.marginal_lambda(s) + r1 * hh)
        if buffer is None:
            e_s = eps_fn(xs, s.expand(B))
            e_s1 = eps_fn(ddim(xs, s, s1, e_s), s1.expand(B))
        else:
            e_s, e_s1 = buffer
        x_t = ddim(xs, s, t, e_s) - (0.5 / r1) * ns.marginal_std(t) * torch.expm1(hh) * (e_s1 - e_s)
        return x_t, (e_s, e_s1)

    x, buf = step(x, 0, 1)
    i = 1
    while i < len(ts) - 1:
        spring, _ = step(x, i, i + k + 1 - h, buffer=buf)  # past outputs, no NFE
        x, buf = step(spring, i + k + 1 - h, i + k + 1)  # fresh step from the springboard
        i += k + 1
    return x


@pytest.fixture(scope="module")
def problem():
    ns = NoiseScheduleVP("linear")
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=5)
    return ns, gmm, x_T(ns, 2, 4)


@pytest.mark.parametrize("skip", ["time_uniform", "time_quadratic", "logSNR"])
@pytest.mark.parametrize("k, h", [(1, 1), (2, 1), (3, 2)])
def test_dpm_solver_2_midpoint_matches_reference_loop(problem, skip, k, h):
    ns, gmm, x = problem
    solver = get_solver("pfdiff", ns, k=k, h=h, base="dpm_solver_2", midpoint=skip)
    for nfe in (2, 4, 6):
        ts = time_uniform_grid(ns, solver.num_timesteps(nfe))
        ours = solver.sample(gmm.eps, x, ts)
        ref = _reference_loop(gmm.eps, x, ts, ns, k, h, 2, skip)
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-11), (skip, k, h, nfe)


@pytest.mark.parametrize("k, h", [(1, 1), (2, 1), (2, 2), (3, 1), (3, 3)])
def test_dpm_solver_1_base_matches_reference_loop(problem, k, h):
    ns, gmm, x = problem
    solver = get_solver("pfdiff", ns, k=k, h=h, base="dpm_solver_1")
    for nfe in (1, 3, 5):
        ts = time_uniform_grid(ns, solver.num_timesteps(nfe))
        assert len(ts) == (k + 1) * nfe - k + 1
        assert solver.nfe(len(ts)) == nfe
        ours = solver.sample(gmm.eps, x, ts)
        ref = _reference_loop(gmm.eps, x, ts, ns, k, h, 1, "time_uniform")
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
    # the fresh step starts at the springboard, unlike base='ddim' (look-ahead jump from x_i)
    ts = time_uniform_grid(ns, solver.num_timesteps(4))
    ddim_base = get_solver("pfdiff", ns, k=k, h=h).sample(gmm.eps, x, ts)
    assert not torch.allclose(solver.sample(gmm.eps, x, ts), ddim_base, rtol=1e-3)


def test_time_midpoint_is_the_hand_written_two_stage_update(problem):
    """NFE 2 = one DPM-Solver-2 step T -> eps with s1 = (T + eps)/2, written out by hand."""
    ns, gmm, x = problem
    T, e = torch.tensor(ns.T, dtype=DT), torch.tensor(ns.eps, dtype=DT)
    s1 = (T + e) / 2
    lam = ns.marginal_lambda
    la, sd = ns.marginal_log_mean_coeff, ns.marginal_std
    eps_T = gmm.eps(x, T.expand(2))
    x_s1 = torch.exp(la(s1) - la(T)) * x - sd(s1) * torch.expm1(lam(s1) - lam(T)) * eps_T
    eps_s1 = gmm.eps(x_s1, s1.expand(2))
    r1 = (lam(s1) - lam(T)) / (lam(e) - lam(T))
    assert abs(float(r1) - 0.5) > 0.1  # a real test: the time midpoint is far from the log-SNR one here
    d = eps_T + (eps_s1 - eps_T) / (2 * r1)
    expected = torch.exp(la(e) - la(T)) * x - sd(e) * torch.expm1(lam(e) - lam(T)) * d
    solver = get_solver("pfdiff", ns, base="dpm_solver_2", midpoint="time_uniform")
    assert torch.allclose(solver.sample(gmm.eps, x, torch.stack([T, e])), expected, rtol=1e-12, atol=1e-12)


def test_midpoint_options_differ_on_a_time_uniform_grid(problem):
    ns, gmm, x = problem
    ts = time_uniform_grid(ns, get_solver("pfdiff", ns, base="dpm_solver_2").num_timesteps(6))
    outs = {
        m: get_solver("pfdiff", ns, base="dpm_solver_2", midpoint=m).sample(gmm.eps, x, ts)
        for m in ("logSNR", "time_uniform", "time_quadratic")
    }
    for a in outs:
        for b in outs:
            if a < b:
                assert (outs[a] - outs[b]).norm() > 0.05 * outs[a].norm(), (a, b)


def test_midpoint_and_base_options_are_checked():
    ns = NoiseScheduleVP("linear")
    with pytest.raises(ValueError, match="midpoint='middle'"):
        get_solver("pfdiff", ns, base="dpm_solver_2", midpoint="middle")
    with pytest.raises(ValueError, match="needs base='dpm_solver_2'"):
        get_solver("pfdiff", ns, base="ddim", midpoint="time_uniform")
    with pytest.raises(ValueError, match="base='dpm_solver_3'"):
        get_solver("pfdiff", ns, base="dpm_solver_3")
    assert get_solver("pfdiff", ns, base="dpm_solver_2", midpoint="time_uniform").describe()["midpoint"] == (
        "time_uniform"
    )


@pytest.mark.parametrize("opts", [{"base": "dpm_solver_2", "midpoint": "time_uniform"}, {"base": "dpm_solver_1"}])
def test_gradients_flow_to_the_grid_and_model_times(problem, opts):
    ns, gmm, x = problem
    solver = get_solver("pfdiff", ns, **opts)
    ts = time_uniform_grid(ns, solver.num_timesteps(4 if opts["base"] == "dpm_solver_2" else 2))
    inner = ts[1:-1].clone().requires_grad_(True)

    def f(inner_ts, model_inner):
        grid = torch.cat([ts[:1], inner_ts, ts[-1:]])
        mgrid = torch.cat([ts[:1], model_inner, ts[-1:]])
        return solver.sample(gmm.eps, x, grid, model_timesteps=mgrid)

    assert torch.autograd.gradcheck(f, (inner, inner.detach().clone().requires_grad_(True)), eps=1e-6, atol=1e-5)
