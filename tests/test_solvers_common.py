"""Contract tests run for every solver configuration in tests/solver_cases.py.

Gradients (gradcheck and a finite-difference check), exact NFE counting, decoupled network time,
bad input, no hidden state, arbitrary tensor shapes, trajectory/callback bookkeeping.
"""

from __future__ import annotations

import math

import pytest
import torch
from solver_cases import CASES, SolverCase

from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleVP
from ld3.solvers import available, get_solver

DT = torch.float64



def valid_nfe(solver, nfe: int, limit: int = 4) -> int:
    """The smallest NFE >= nfe that the solver can spend exactly (heun and pfdiff have parity rules)."""
    for n in range(nfe, nfe + limit):
        try:
            solver.num_timesteps(n)
            return n
        except ValueError:
            continue
    raise AssertionError(f"{solver.name}: no valid NFE in [{nfe}, {nfe + limit})")


def logsnr_grid(ns, n_points: int, t_hi: float, t_lo: float) -> torch.Tensor:
    lam = torch.linspace(
        float(ns.marginal_lambda(torch.tensor(t_hi, dtype=DT))),
        float(ns.marginal_lambda(torch.tensor(t_lo, dtype=DT))),
        n_points,
        dtype=DT,
    )
    ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = t_hi, t_lo
    return ts


@pytest.fixture(scope="module")
def problem():
    ns = NoiseScheduleVP("linear")
    gmm = AnalyticGMM.random(ns, dim=2, n_components=2, seed=0, diagonal=True)
    return ns, gmm


def make(case: SolverCase, ns):
    return get_solver(case.name, ns, **case.options)


def x_T_for(ns, batch: int, dim: int, seed: int = 0, t: float = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = ns.T if t is None else t
    return torch.randn(batch, dim, dtype=DT, generator=g) * float(ns.marginal_std(torch.tensor(t, dtype=DT)))


CASE_IDS = [c.id for c in CASES]


def test_every_registered_solver_has_a_case():
    missing = set(available()) - {c.name for c in CASES}
    assert not missing, f"solvers without a case in tests/solver_cases.py: {sorted(missing)}"


def test_case_ids_unique():
    assert len(set(CASE_IDS)) == len(CASE_IDS)


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_timesteps_model_timesteps_and_x_T(case, problem):
    ns, gmm = problem
    solver = make(case, ns)
    n = solver.num_timesteps(valid_nfe(solver, 3))
    ts = logsnr_grid(ns, n, 0.9, 0.05).requires_grad_(True)
    mts = (ts.detach() * 0.99).requires_grad_(True)  # decoupled, so both inputs are exercised
    x = x_T_for(ns, 2, gmm.D, t=0.9).requires_grad_(True)

    def f(x_, ts_, mts_):
        return solver.sample(gmm.eps, x_, ts_, model_timesteps=mts_)

    assert torch.autograd.gradcheck(f, (x, ts, mts), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_finite_difference_dx0_dtimesteps_nfe4(case, problem):
    ns, _ = problem
    gmm = AnalyticGMM.random(ns, dim=8, n_components=3, seed=1)
    solver = make(case, ns)
    n = solver.num_timesteps(valid_nfe(solver, 4))
    base = logsnr_grid(ns, n, 0.95, 0.02)
    x = x_T_for(ns, 4, gmm.D, seed=3, t=0.95)
    w = torch.randn(4, gmm.D, dtype=DT, generator=torch.Generator().manual_seed(5))

    def loss(ts):
        return (w * solver.sample(gmm.eps, x, ts)).sum()

    ts = base.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(ts), ts)
    step = 1e-6
    fd = torch.empty_like(base)
    for i in range(n):
        e = torch.zeros_like(base)
        e[i] = step
        fd[i] = (loss(base + e) - loss(base - e)) / (2 * step)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-6 * fd.abs().max()), (grad, fd)
    assert grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------- NFE
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nfe_count_matches_documentation(case, problem):
    ns, gmm = problem
    solver = make(case, ns)
    valid = 0
    for nfe in range(2, 11):
        try:
            n = solver.num_timesteps(nfe)
        except ValueError as err:
            assert str(nfe) in str(err)
            continue
        valid += 1
        assert solver.nfe(n) == nfe
        calls = []

        def counting(x, t, calls=calls):
            calls.append(1)
            return gmm.eps(x, t)

        solver.sample(counting, x_T_for(ns, 2, gmm.D), logsnr_grid(ns, n, ns.T, ns.eps))
        assert len(calls) == nfe, f"{case.id}: {len(calls)} calls for documented NFE {nfe} (grid of {n})"
    assert valid >= 4


# ---------------------------------------------------------------------------------------------- decoupled time
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_decoupled_time(case, problem):
    ns, gmm = problem
    solver = make(case, ns)
    if hasattr(solver, "convert_at"):  # data-prediction solvers: x0 conversion at t1 here (network_time below)
        solver = get_solver(case.name, ns, **{**case.options, "convert_at": "grid_time"})
    n = solver.num_timesteps(valid_nfe(solver, 5))
    ts = logsnr_grid(ns, n, 0.9, 0.01)
    x = x_T_for(ns, 3, gmm.D, t=0.9)
    plain = solver.sample(gmm.eps, x, ts)
    same = solver.sample(gmm.eps, x, ts, model_timesteps=ts.clone())
    assert torch.equal(plain, same)

    # shift the network time by a constant in log-SNR: t' = f(t). The decoupled run must equal a
    # plain run whose network applies f itself (coefficients untouched, only the input moves).
    shift = 0.07

    def f(t):
        return ns.inverse_lambda(ns.marginal_lambda(t, check=False) + shift)

    seen = []

    def recording(x_, t_):
        seen.append(t_.detach().clone())
        return gmm.eps(x_, t_)

    decoupled = solver.sample(recording, x, ts, model_timesteps=f(ts))
    moved = solver.sample(lambda x_, t_: gmm.eps(x_, f(t_)), x, ts)
    assert torch.allclose(decoupled, moved, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(decoupled, plain, rtol=1e-6, atol=0)
    # every network time at a grid point is the shifted one, never the integration time
    grid_shifted = f(ts)
    for t_ in seen:
        assert t_.shape == (x.shape[0],)
        assert (t_ == t_[0]).all()
        assert not torch.isclose(ts, t_[0], rtol=1e-12, atol=0).any()
    hits = sum(bool(torch.isclose(grid_shifted, t_[0], rtol=1e-12, atol=0).any()) for t_ in seen)
    assert hits >= len(seen) // 2


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_timesteps(case, problem):
    ns, gmm = problem
    solver = make(case, ns)
    n = solver.num_timesteps(valid_nfe(solver, 4))
    ts = logsnr_grid(ns, n, 0.9, 0.01)
    x = x_T_for(ns, 2, gmm.D)
    bad = ts.clone()
    bad[1], bad[2] = ts[2], ts[1]
    with pytest.raises(ValueError, match="descending"):
        solver.sample(gmm.eps, x, bad)
    nan = ts.clone()
    nan[2] = math.nan
    with pytest.raises(ValueError, match="nan"):
        solver.sample(gmm.eps, x, nan)
    with pytest.raises(ValueError, match="nan"):
        mt = ts.clone()
        mt[1] = math.nan
        solver.sample(gmm.eps, x, ts, model_timesteps=mt)
    with pytest.raises(ValueError, match="model_timesteps"):
        solver.sample(gmm.eps, x, ts, model_timesteps=ts[:-1])
    with pytest.raises(ValueError, match="1-D"):
        solver.sample(gmm.eps, x, ts[None])
    with pytest.raises(ValueError, match="outside"):
        solver.sample(gmm.eps, x, torch.cat([torch.tensor([1.5], dtype=DT), ts[1:]]))
    with pytest.raises(ValueError, match="at least 2"):
        solver.sample(gmm.eps, x, ts[:1])


def test_wrong_length_grid_is_rejected(problem):
    ns, gmm = problem
    s = get_solver("pfdiff", ns, k=2, h=1)
    with pytest.raises(ValueError, match="length 6"):
        s.sample(gmm.eps, x_T_for(ns, 2, gmm.D), logsnr_grid(ns, 6, 0.9, 0.01))
    with pytest.raises(ValueError, match="nfe=3"):
        get_solver("pfdiff", ns, base="dpm_solver_2").num_timesteps(3)
    with pytest.raises(ValueError, match="nfe=4"):
        get_solver("heun", ns).num_timesteps(4)
    with pytest.raises(ValueError, match="got 0"):
        get_solver("ddim", ns).num_timesteps(0)


@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("no_such_solver", {}, "no_such_solver"),
        ("ddim", {"eta": -0.1}, "-0.1"),
        ("ddim", {"eta": 1.5}, "1.5"),
        ("ddim", {"eta": "x"}, "'x'"),
        ("ddim", {"seed": 1.5}, "1.5"),
        ("ddim", {"seed": 1, "generator": torch.Generator()}, "at most one"),
        ("ddim", {"dynamic_thresholding_ratio": 1.5}, "1.5"),
        ("ddim", {"sample_max_value": 0.5}, "0.5"),
        ("ddim", {"thresholding": "yes"}, "'yes'"),
        ("ddim", {"bogus": 1}, "bogus"),
        ("euler", {"bogus": 1}, "bogus"),
        ("heun", {"final_step": "rk4"}, "rk4"),
        ("ipndm", {"order": 0}, "order=0"),
        ("ipndm", {"order": 5}, "order=5"),
        ("ipndm", {"order": 2.0}, "order=2.0"),
        ("ipndm", {"variable_step": 1}, "variable_step"),
        ("pfdiff", {"k": 4}, "k=4"),
        ("pfdiff", {"k": 0}, "k=0"),
        ("pfdiff", {"k": 1, "h": 2}, "h=2"),
        ("pfdiff", {"h": 0}, "h=0"),
        ("pfdiff", {"base": "rk4"}, "rk4"),
    ],
)
def test_bad_options(name, options, needle, problem):
    ns, _ = problem
    with pytest.raises(ValueError) as err:
        get_solver(name, ns, **options)
    assert needle in str(err.value)


# ---------------------------------------------------------------------------------------------- purity, shapes
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_hidden_state_and_any_shape(case, problem):
    ns = problem[0]
    gmm = AnalyticGMM.random(ns, dim=12, n_components=2, seed=2, diagonal=True)
    solver = make(case, ns)
    n = solver.num_timesteps(valid_nfe(solver, 6))
    ts = logsnr_grid(ns, n, ns.T, ns.eps)
    x = x_T_for(ns, 3, gmm.D)
    a = solver.sample(gmm.eps, x, ts)
    b = solver.sample(gmm.eps, x, ts)
    assert torch.equal(a, b)
    # any (B, ...) shape: a 4-D and a 3-D view of the same data give the same numbers
    four_d = solver.sample(gmm.eps, x.reshape(3, 1, 4, 3), ts)
    three_d = solver.sample(gmm.eps, x.reshape(3, 2, 6), ts)
    assert four_d.shape == (3, 1, 4, 3) and three_d.shape == (3, 2, 6)
    assert torch.allclose(four_d.reshape(3, 12), a, rtol=1e-12, atol=1e-12)
    assert torch.allclose(three_d.reshape(3, 12), a, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(a).all()


#: solvers whose every step starts with a network call at (x_i, t_i); the others evaluate elsewhere
#: (uni_pc: at the predictor, reused by the corrector; pfdiff: springboards and midpoints)
CALLS_AT_GRID_POINTS = ("ddim", "euler", "heun", "ipndm", "dpm_solver++", "deis")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_trajectory_and_callback(case, problem):
    ns, gmm = problem
    solver = make(case, ns)
    n = solver.num_timesteps(valid_nfe(solver, 5))
    ts = logsnr_grid(ns, n, ns.T, ns.eps)
    x = x_T_for(ns, 2, gmm.D)
    seen = []
    out, traj = solver.sample(gmm.eps, x, ts, return_trajectory=True, callback=seen.append)
    assert traj[0] is x and torch.equal(traj[-1], out)
    assert len(traj) == len(seen) + 1
    idx = [info["i"] for info in seen]
    assert idx[0] == 0 and idx == sorted(idx) and seen[-1]["t_next"] == ts[-1]
    for k, info in enumerate(seen):  # k-diffusion's keys: the step's start point and the prediction there
        assert float(info["t"]) == float(ts[info["i"]])
        assert info["x"] is traj[k] and torch.equal(info["x_next"], traj[k + 1])
        if k + 1 < len(seen):
            assert seen[k + 1]["i"] > info["i"] and float(info["t_next"]) == float(ts[seen[k + 1]["i"]])
        d = info["denoised"]
        if case.name in CALLS_AT_GRID_POINTS or d is not None:
            assert d is not None and d.shape == x.shape and torch.isfinite(d).all()
        if case.name in CALLS_AT_GRID_POINTS and not case.options.get("thresholding"):
            exact = gmm.x0(info["x"], ts[info["i"]])  # the mixture's exact E[x_0 | x_t]
            assert torch.allclose(d, exact, rtol=1e-9, atol=1e-9)
    # the same result with and without bookkeeping (stochastic cases re-seed per call)
    assert torch.equal(solver.sample(gmm.eps, x, ts), out)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_input_keeps_dtype(case, problem):
    ns, gmm = problem
    solver = make(case, ns)
    n = solver.num_timesteps(valid_nfe(solver, 4))
    ts = logsnr_grid(ns, n, ns.T, ns.eps)
    x = x_T_for(ns, 2, gmm.D).float()
    out = solver.sample(lambda x_, t_: gmm.eps(x_, t_).float(), x, ts)
    ref = solver.sample(gmm.eps, x.double(), ts)
    assert out.dtype == torch.float32
    # float32 rounding is amplified by alpha_t / alpha_s (up to ~150 on this grid): loose tolerance
    assert torch.allclose(out.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_describe_rebuilds_the_same_solver(case, problem):
    """``describe()`` holds the name and every option: building from it gives an equal solver (same
    description, same samples), so a description stored in a manifest or discretization file is enough."""
    ns, gmm = problem
    solver = make(case, ns)
    desc = solver.describe()
    opts = {k: v for k, v in desc.items() if k != "name"}
    rebuilt = get_solver(desc["name"], ns, **opts)
    assert type(rebuilt) is type(solver) and rebuilt.describe() == desc
    n = solver.num_timesteps(valid_nfe(solver, 6))
    ts = logsnr_grid(ns, n, ns.T, ns.eps)
    x = x_T_for(ns, 2, gmm.D)
    assert torch.equal(rebuilt.sample(gmm.eps, x, ts), solver.sample(gmm.eps, x, ts))
    for k, v in case.options.items():  # the options the case set are recorded as given
        assert desc[k] == v, (k, desc)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("uni_pc", "dpm_solver++")], ids=lambda c: c.id)
def test_decoupled_time_converts_at_network_time(case, problem):
    """convert_at='network_time' (LD3's reference solvers): the data prediction at grid point t1 with network
    time t2 is x0 = (x - sigma(t2) eps(x, t2)) / alpha(t2). Equivalent plain run: a network that returns, at
    t1, the noise eps' = (x - alpha(t1) x0) / sigma(t1) that the grid-time conversion turns into that x0."""
    ns, gmm = problem
    solver = get_solver(case.name, ns, **{**case.options, "convert_at": "network_time"})
    assert get_solver(case.name, ns, **case.options).convert_at == "network_time"  # the default
    n = solver.num_timesteps(valid_nfe(solver, 5))
    ts = logsnr_grid(ns, n, 0.9, 0.01)
    x = x_T_for(ns, 3, gmm.D, t=0.9)

    def f(t):
        return ns.inverse_lambda(ns.marginal_lambda(t, check=False) + 0.07)

    def eps_equivalent(x_, t_):
        t2 = f(t_)
        a2, s2 = ns.marginal_alpha(t2)[:, None], ns.marginal_std(t2)[:, None]
        a1, s1 = ns.marginal_alpha(t_)[:, None], ns.marginal_std(t_)[:, None]
        x0 = (x_ - s2 * gmm.eps(x_, t2)) / a2
        return (x_ - a1 * x0) / s1

    decoupled = solver.sample(gmm.eps, x, ts, model_timesteps=f(ts))
    reference = solver.sample(eps_equivalent, x, ts)
    assert torch.allclose(decoupled, reference, rtol=1e-9, atol=1e-11)
    grid_time = get_solver(case.name, ns, **{**case.options, "convert_at": "grid_time"})
    assert not torch.allclose(decoupled, grid_time.sample(gmm.eps, x, ts, model_timesteps=f(ts)), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="convert_at"):
        get_solver(case.name, ns, convert_at="t2")
