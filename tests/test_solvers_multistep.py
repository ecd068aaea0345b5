"""Exactness checks of dpm_solver++, uni_pc and deis beyond the diffusers comparison.

* Polynomial exactness of every step formula against quadrature of the exact variation-of-constants
  integral (scipy.integrate.quad): a step that is exact for data (or noise) predictions polynomial of
  degree d in lambda (or t) has local error O(h^{d+2}). This checks each formula's order
  independently of warm-up and of the ODE, and documents which simplified forms are not exact
  (midpoint 2M, the reference's 3M, UniP-2 / UniC-1 with their fixed rho = 1/2).
* First-order variants equal DDIM on the same grid; thresholded first-order variants equal
  thresholded DDIM.
* 'taylor' and 'midpoint' coincide at first order and differ by O(h^2) globally at 2M.
* DEIS 'tab' and 'logrho' coincide at first order and converge to each other on fine grids.
* Exact NFE, every network call influences the result (no evaluation thrown away).
* Order schedules (warm-up, lower_order_final rules, singlestep blocks), option validation and the
  Hydra configs.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP, ddpm_linear_betas
from ld3.solvers import get_solver
from ld3.solvers.common import grid_quantities
from ld3.solvers.dpm_solver_pp import singlestep_blocks

DT = torch.float64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a deliberately non-uniform grid on the (smooth) continuous VP-linear schedule
NS = NoiseScheduleVP("linear")
TS = torch.tensor([0.95, 0.8, 0.62, 0.5, 0.37, 0.3, 0.2, 0.12, 0.05], dtype=DT)
G = grid_quantities(NS, TS)
LAM, SIG, ALPHA = G.lam.tolist(), G.sigma.tolist(), G.alpha.tolist()
C0 = LAM[0] - 1.0  # polynomial centre outside the range: q > 0 everywhere


def q_lambda(d):
    return lambda lam: (lam - C0) ** d


def exact_data_increment(b: int, j: int, q) -> float:
    """x_j - (sigma_j / sigma_b) x_b for data prediction x0(lambda) = q(lambda) (DPM-Solver++ Eq. 9)."""
    return SIG[j] * quad(lambda lam: math.exp(lam) * q(lam), LAM[b], LAM[j], epsabs=0, epsrel=1e-13)[0]


def exact_noise_increment(b: int, j: int, q_of_lambda) -> float:
    """x_j - (alpha_j / alpha_b) x_b for eps = q along the path: alpha_j int eps d rho, rho = e^{-lambda}."""
    val = quad(lambda lam: -math.exp(-lam) * q_of_lambda(lam), LAM[b], LAM[j], epsabs=0, epsrel=1e-13)[0]
    return ALPHA[j] * val


def plan_errors(plan, point_orders, exact, q_at_point):
    """Max relative error of sum_l W_l q(l) vs the exact increment, per formula order."""
    errs = {}
    for j, (b, _, terms) in enumerate(plan, start=1):
        ex = exact(b, j)
        approx = sum(float(w) * q_at_point(lidx) for lidx, w in terms)
        k = point_orders[j - 1]
        errs[k] = max(errs.get(k, 0.0), abs(approx - ex) / abs(ex))
    return errs


def singlestep_point_orders(solver, n_steps):
    return [o for k in solver.step_orders(n_steps) for o in range(1, k + 1)]


# ---------------------------------------------------------------------------------------------- exactness
DPM_EXACT = [
    # (options, {formula order: highest degree integrated exactly}, {formula order: degree NOT exact})
    ({"order": 2, "solver_type": "taylor", "lower_order_final": False}, {1: 0, 2: 1}, {1: 1, 2: 2}),
    ({"order": 2, "solver_type": "midpoint", "lower_order_final": False}, {1: 0, 2: 0}, {2: 1}),
    ({"order": 3, "lower_order_final": False}, {3: 1}, {3: 2}),
    ({"order": 3, "order3_form": "consistent", "lower_order_final": False}, {3: 2}, {3: 3}),
    ({"order": 3, "solver_type": "taylor", "order3_form": "consistent", "lower_order_final": False},
     {1: 0, 2: 1, 3: 2}, {3: 3}),
    ({"order": 3, "method": "singlestep", "solver_type": "taylor"}, {1: 0, 2: 1, 3: 2}, {3: 3}),
    ({"order": 2, "method": "singlestep", "solver_type": "taylor"}, {1: 0, 2: 1}, {2: 2}),
    # (8 steps = blocks [3, 3, 2]: "order 2" mixes 3-block inner points (Taylor form, degree 1) and the
    # midpoint end of the 2-block (degree 0))
    ({"order": 3, "method": "singlestep", "solver_type": "midpoint"}, {1: 0, 2: 0, 3: 1}, {3: 2}),
]


@pytest.mark.parametrize("options, exact_deg, inexact_deg", DPM_EXACT, ids=[str(c[0]) for c in DPM_EXACT])
def test_dpm_solver_pp_polynomial_exactness(options, exact_deg, inexact_deg):
    solver = get_solver("dpm_solver++", NS, **options)
    plan = solver._plan(grid_quantities(NS, TS))
    n = len(plan)
    orders = singlestep_point_orders(solver, n) if options.get("method") == "singlestep" else solver.step_orders(n)
    for d in range(4):
        q = q_lambda(d)
        errs = plan_errors(plan, orders, lambda b, j, q=q: exact_data_increment(b, j, q), lambda i, q=q: q(LAM[i]))
        for k, e in errs.items():
            if d <= exact_deg.get(k, -1):
                assert e < 1e-11, f"order-{k} formula not exact for degree {d}: {e:.1e}"
            if inexact_deg.get(k) == d:
                assert e > 1e-3, f"order-{k} formula unexpectedly exact for degree {d}"


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_uni_pc_polynomial_exactness(order, variant):
    """UniC-p (p >= 2) is exact to degree p, UniP-3 to degree 2; the fixed rho = 1/2 of UniP-2 and
    UniC-1 (reference simplifications) are exact only for constants."""
    solver = get_solver("uni_pc", NS, order=order, variant=variant, lower_order_final=False)
    c, wp, wc, _ = solver.coefficients(TS)
    orders = solver.step_orders(len(c))
    full = [i for i, k in enumerate(orders) if k == order]
    assert full
    pred_exact = {1: 0, 2: 0, 3: 2}[order]
    corr_exact = {1: 0, 2: 2, 3: 3}[order]
    for d in range(5):
        q = q_lambda(d)
        ep = ec = 0.0
        for i in full:
            ex = exact_data_increment(i, i + 1, q)
            ap = sum(float(w) * q(LAM[i - k]) for k, w in enumerate(wp[i]))
            ac = float(wc[i][0]) * q(LAM[i + 1]) + sum(float(w) * q(LAM[i - k]) for k, w in enumerate(wc[i][1:]))
            ep, ec = max(ep, abs(ap - ex) / abs(ex)), max(ec, abs(ac - ex) / abs(ex))
        assert (ep < 1e-11) == (d <= pred_exact), (d, ep)
        assert (ec < 1e-11) == (d <= corr_exact), (d, ec)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["logrho", "tab"])
def test_deis_polynomial_exactness(order, variant):
    """logrho: exact for eps polynomial in lambda of degree < order; tab: polynomial in t."""
    solver = get_solver("deis", NS, order=order, variant=variant, lower_order_final=False)
    plan = solver._plan(grid_quantities(NS, TS))
    orders = solver.step_orders(len(plan))
    for d in range(order + 1):
        if variant == "logrho":
            q_lam = q_lambda(d)
            at_point = lambda i, q_lam=q_lam: q_lam(LAM[i])  # noqa: E731
        else:
            def q_lam(lam, d=d):
                t = float(NS.inverse_lambda(torch.tensor(lam, dtype=DT)))
                return (t + 0.5) ** d

            at_point = lambda i, d=d: (float(TS[i]) + 0.5) ** d  # noqa: E731
        errs = plan_errors(plan, orders, lambda b, j, q=q_lam: exact_noise_increment(b, j, q), at_point)
        if d < order:
            assert errs[order] < 1e-10, (d, errs)
        else:
            assert errs[order] > 1e-4, (d, errs)


# ---------------------------------------------------------------------------------------------- equivalences
def _gmm_problem(ns, dim=6, seed=0):
    gmm = AnalyticGMM.random(ns, dim=dim, n_components=3, seed=seed)
    x = torch.randn(3, dim, dtype=DT, generator=torch.Generator().manual_seed(seed + 1))
    x = x * float(ns.marginal_std(torch.tensor(ns.T, dtype=DT)))
    return gmm, x


def _logsnr_grid(ns, n_points):
    lam = torch.linspace(ns.lambda_min, ns.lambda_max, n_points, dtype=DT)
    ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = ns.T, ns.eps
    return ts


SCHEDULES = {
    "vp_discrete": lambda: NoiseScheduleVP("discrete", betas=ddpm_linear_betas()),
    "edm": lambda: NoiseScheduleEDM(),
}
FIRST_ORDER = [
    ("dpm_solver++", {"order": 1}),
    ("dpm_solver++", {"order": 1, "method": "singlestep"}),
    ("uni_pc", {"order": 1, "corrector": False}),
    ("deis", {"order": 1, "variant": "logrho"}),
    ("deis", {"order": 1, "variant": "tab"}),
]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("thresholding", [False, True])
def test_first_order_variants_equal_ddim(schedule, thresholding):
    ns = SCHEDULES[schedule]()
    gmm, x = _gmm_problem(ns)
    ts = _logsnr_grid(ns, 8)
    thr = {"thresholding": True, "sample_max_value": 1.2, "dynamic_thresholding_ratio": 0.9} if thresholding else {}
    ddim = get_solver("ddim", ns, **thr).sample(gmm.eps, x, ts)
    for name, opts in FIRST_ORDER:
        out = get_solver(name, ns, **opts, **thr).sample(gmm.eps, x, ts)
        assert torch.allclose(out, ddim, rtol=1e-11, atol=1e-11 * float(ddim.abs().max())), (name, opts)
    if thresholding:  # the clipping really acted
        plain = get_solver("ddim", ns).sample(gmm.eps, x, ts)
        assert not torch.allclose(plain, ddim, rtol=1e-3, atol=0)


def _slope(nfes, errs):
    return -np.polyfit(np.log(nfes), np.log(errs), 1)[0]


def test_taylor_and_midpoint_differ_only_at_second_order():
    ns = NoiseScheduleVP("linear")
    gmm, x = _gmm_problem(ns, dim=4)
    for opts in ({"order": 1}, {"order": 2, "method": "singlestep", "lower_order_final": True}):
        grid = _logsnr_grid(ns, 9)
        a = get_solver("dpm_solver++", ns, solver_type="midpoint", **opts).sample(gmm.eps, x, grid)
        b = get_solver("dpm_solver++", ns, solver_type="taylor", **opts).sample(gmm.eps, x, grid)
        if opts["order"] == 1:
            assert torch.equal(a, b)
        else:
            assert not torch.allclose(a, b, rtol=1e-6, atol=0)
    nfes = [20, 40, 80, 160]
    diffs = []
    for n in nfes:
        grid = _logsnr_grid(ns, n + 1)
        a = get_solver("dpm_solver++", ns, order=2, solver_type="midpoint").sample(gmm.eps, x, grid)
        b = get_solver("dpm_solver++", ns, order=2, solver_type="taylor").sample(gmm.eps, x, grid)
        diffs.append(float((a - b).norm() / b.norm()))
    assert abs(_slope(nfes, diffs) - 2.0) < 0.3, diffs


def test_deis_tab_and_logrho_agree_on_fine_grids():
    ns = NoiseScheduleEDM()  # tab is a polynomial in sigma (rhoAB), logrho in log sigma
    gmm, x = _gmm_problem(ns, dim=4)
    nfes = [25, 50, 100, 200]
    diffs, errs = [], []
    ref = gmm.ode_solution(x, ns.T, ns.eps)
    for n in nfes:
        grid = _logsnr_grid(ns, n + 1)
        a = get_solver("deis", ns, order=3, variant="tab").sample(gmm.eps, x, grid)
        b = get_solver("deis", ns, order=3, variant="logrho").sample(gmm.eps, x, grid)
        diffs.append(float((a - b).norm() / b.norm()))
        errs.append(float((b - ref).norm() / ref.norm()))
    assert diffs[-1] < 1e-4  # (each is ~1e-5 to 1e-4 from the exact solution at NFE 200)
    assert all(d2 < d1 for d1, d2 in zip(diffs[:-1], diffs[1:], strict=True))
    assert _slope(nfes, diffs) > 2.5, diffs  # both third order: their difference shrinks as fast
    assert diffs[0] > 1e-8  # they are different methods


def _local_errors(solver, ns, gmm, x_T, lam_s, hs):
    """Error of the last plan step from exact history (x, m at 3 exact trajectory points)."""
    errs = []
    for h in hs:
        lam = torch.tensor([lam_s - 2 * h, lam_s - h, lam_s, lam_s + h], dtype=DT)
        ts = ns.inverse_lambda(lam)
        xs = [gmm.ode_solution(x_T, ns.T, float(t), rtol=1e-13, atol=1e-14) for t in ts]
        g = grid_quantities(ns, ts)
        ms = [(xs[i] - g.sigma[i] * gmm.eps(xs[i], ts[i])) / g.alpha[i] for i in range(3)]
        b, c, terms = solver._plan(grid_quantities(ns, ts))[-1]
        assert b == 2 and len(terms) == 3
        x_t = c * xs[b] + sum(w * ms[lidx] for lidx, w in terms)
        errs.append(float((x_t - xs[3]).norm() / xs[3].norm()))
    return errs


def test_3m_local_error_reference_vs_consistent():
    """One 3M step from exact history: the reference form has an O(h^3) local error (global order 2),
    order3_form='consistent' an O(h^4) one (global order 3)."""
    ns = NoiseScheduleVP("linear")
    gmm = AnalyticGMM.random(ns, dim=4, n_components=1, seed=3, var_range=(0.05, 1.0))  # closed-form ODE
    x = torch.randn(2, 4, dtype=DT, generator=torch.Generator().manual_seed(4))
    hs = [0.04, 0.02, 0.01, 0.005]
    slopes = {}
    for form in ("reference", "consistent"):
        solver = get_solver("dpm_solver++", ns, order=3, order3_form=form, lower_order_final=False)
        errs = _local_errors(solver, ns, gmm, x, lam_s=1.0, hs=hs)
        slopes[form] = _slope([1 / h for h in hs], errs)
    assert abs(slopes["reference"] - 3.0) < 0.3, slopes
    assert abs(slopes["consistent"] - 4.0) < 0.3, slopes


# ---------------------------------------------------------------------------------------------- NFE, used calls
CONFIGS = [
    ("dpm_solver++", {"order": 1}),
    ("dpm_solver++", {"order": 2}),
    ("dpm_solver++", {"order": 3, "lower_order_final": False}),
    ("dpm_solver++", {"order": 3, "lower_order_final_below": 100}),
    ("dpm_solver++", {"order": 2, "method": "singlestep"}),
    ("dpm_solver++", {"order": 3, "method": "singlestep", "solver_type": "taylor"}),
    ("uni_pc", {"order": 1}),
    ("uni_pc", {"order": 2, "variant": "bh2"}),
    ("uni_pc", {"order": 3, "lower_order_final": False}),
    ("uni_pc", {"order": 3, "corrector": False}),
    ("deis", {"order": 3, "variant": "tab"}),
    ("deis", {"order": 3, "variant": "logrho", "lower_order_final": False}),
]


@pytest.mark.parametrize("name, options", CONFIGS, ids=[f"{n}-{o}" for n, o in CONFIGS])
def test_nfe_exact_and_every_call_used(name, options):
    """N grid intervals cost exactly N calls, and the output depends on every call's result."""
    ns = NoiseScheduleVP("linear")
    gmm, x = _gmm_problem(ns, dim=3)
    w = torch.randn_like(x)
    solver = get_solver(name, ns, **options)
    for nfe in range(1, 11):
        n = solver.num_timesteps(nfe)
        assert n == nfe + 1 and solver.nfe(n) == nfe
        taps = []

        def tapped(x_, t_, taps=taps):
            tap = torch.zeros((), dtype=DT, requires_grad=True)
            taps.append(tap)
            return gmm.eps(x_, t_) * (1.0 + tap)

        out = solver.sample(tapped, x, _logsnr_grid(ns, n))
        assert len(taps) == nfe
        grads = torch.autograd.grad((w * out).sum(), taps, allow_unused=True)
        assert all(g is not None and float(g.abs()) > 0 for g in grads), f"nfe {nfe}: unused call"


# ---------------------------------------------------------------------------------------------- order schedules
def test_order_schedules():
    ns = NS
    dpm3 = get_solver("dpm_solver++", ns, order=3)
    assert dpm3.step_orders(9) == [1, 2, 3, 3, 3, 3, 3, 2, 1]  # reference: lower_order_final below 10 steps
    assert dpm3.step_orders(10) == [1, 2] + [3] * 8
    assert dpm3.step_orders(2) == [1, 1]
    assert get_solver("dpm_solver++", ns, order=3, lower_order_final_below=15).step_orders(10)[-2:] == [2, 1]
    assert get_solver("dpm_solver++", ns, order=3, lower_order_final=False).step_orders(5) == [1, 2, 3, 3, 3]
    assert get_solver("uni_pc", ns, order=3).step_orders(30)[-3:] == [3, 2, 1]  # UniPC: any number of steps
    deis = get_solver("deis", ns, order=3)
    assert deis.step_orders(14)[-1] == 1 and deis.step_orders(15)[-1] == 3  # diffusers: below 15 steps
    # singlestep blocks: the reference's get_orders_and_timesteps_for_singlestep_solver rule
    assert [singlestep_blocks(n, 3) for n in (1, 2, 3, 4, 5, 6, 7)] == [
        [1], [2], [2, 1], [3, 1], [3, 2], [3, 2, 1], [3, 3, 1]]
    assert [singlestep_blocks(n, 2) for n in (1, 2, 3, 4)] == [[1], [2], [2, 1], [2, 2]]
    assert all(sum(singlestep_blocks(n, k)) == n for n in range(1, 30) for k in (1, 2, 3))


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("dpm_solver++", {"order": 0}, "order=0"),
        ("dpm_solver++", {"order": 4}, "order=4"),
        ("dpm_solver++", {"order": 2.0}, "order=2.0"),
        ("dpm_solver++", {"solver_type": "rk4"}, "rk4"),
        ("dpm_solver++", {"method": "adaptive"}, "adaptive"),
        ("dpm_solver++", {"lower_order_final": "yes"}, "'yes'"),
        ("dpm_solver++", {"lower_order_final_below": 0}, "lower_order_final_below=0"),
        ("dpm_solver++", {"order3_form": "fixed"}, "fixed"),
        ("dpm_solver++", {"sample_max_value": 0.5}, "0.5"),
        ("dpm_solver++", {"bogus": 1}, "bogus"),
        ("uni_pc", {"order": 4}, "order=4"),
        ("uni_pc", {"variant": "bh3"}, "bh3"),
        ("uni_pc", {"variant": "vary_coeff"}, "vary_coeff"),
        ("uni_pc", {"corrector": 1}, "corrector"),
        ("uni_pc", {"dynamic_thresholding_ratio": 0.0}, "0.0"),
        ("deis", {"order": 4}, "order=4"),
        ("deis", {"variant": "rhoAB"}, "rhoAB"),
        ("deis", {"quadrature_points": 0}, "quadrature_points=0"),
        ("deis", {"lower_order_final": None}, "None"),
    ],
)
def test_bad_options(name, options, needle):
    with pytest.raises(ValueError) as err:
        get_solver(name, NS, **options)
    assert needle in str(err.value)


def test_describe_round_trips():
    for name, opts in CONFIGS:
        solver = get_solver(name, NS, **opts)
        desc = solver.describe()
        assert desc["name"] == name
        again = get_solver(desc.pop("name"), NS, **desc)
        assert again.describe() == solver.describe()


def test_solver_type_aliases():
    assert get_solver("dpm_solver++", NS, solver_type="dpmsolver").solver_type == "midpoint"
    assert get_solver("dpm_solver++", NS, solver_type="heun").solver_type == "taylor"


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("choice", ["dpm_solver++", "dpm_solver_pp", "uni_pc", "deis"])
def test_hydra_solver_configs(choice):
    from hydra import compose, initialize_config_dir  # a hard dependency: never skipped

    with initialize_config_dir(config_dir=os.path.join(REPO, "configs"), version_base=None):
        cfg = compose(overrides=[f"+solver={choice}"])
    solver = get_solver(cfg.solver.name, NS, **dict(cfg.solver.options))
    expected = "dpm_solver++" if choice == "dpm_solver_pp" else choice
    assert solver.name == expected
    # the config spells out every option with the code's default
    assert solver.describe() == get_solver(expected, NS).describe()
