"""Time discretizations against independent references: closed forms, diffusers' Karras sigmas, brute-force
dynamic programming, numerical quadrature, published AYS noise levels, and exact ODE solutions of an analytic
Gaussian mixture."""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from ld3.discretizations import (
    Discretization,
    available,
    get_discretization,
    get_timesteps,
    gits_cost_matrix,
    gits_select,
    load,
    save,
)
from ld3.discretizations.ays import loglinear_interp
from ld3.discretizations.dmn import all_step_weights, exp_moments, objective, step_orders, step_weights
from ld3.models.analytic import AnalyticGMM
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP, ddpm_linear_betas
from ld3.solvers import available as available_solvers
from ld3.solvers import get_solver

HANDCRAFTED = ["time_uniform", "time_quadratic", "logSNR", "edm", "poly"]
SD_BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2


def schedules():
    return [
        NoiseScheduleVP("discrete", betas=ddpm_linear_betas()),
        NoiseScheduleVP("linear"),
        NoiseScheduleVP("cosine"),
        NoiseScheduleEDM(),
    ]


def solver_nfes(solver, nfes=range(1, 7)):
    """NFEs the solver accepts (Heun, for instance, needs an odd NFE)."""
    out = []
    for nfe in nfes:
        try:
            out.append((nfe, solver.num_timesteps(nfe)))
        except ValueError:
            pass
    return out


def assert_valid_grid(t, ns, n, t_max=None, t_min=None):
    assert t.dtype == torch.float64 and t.dim() == 1 and t.numel() == n
    assert torch.isfinite(t).all()
    assert (t[1:] < t[:-1]).all(), t.tolist()
    assert float(t[0]) == float(ns.T if t_max is None else t_max)
    assert float(t[-1]) == float(ns.eps if t_min is None else t_min)


# ----------------------------------------------------------------------------- hand-crafted
@pytest.mark.parametrize("ns", schedules(), ids=lambda ns: ns.kind)
@pytest.mark.parametrize("kind", HANDCRAFTED)
def test_handcrafted_length_monotone_endpoints_for_every_solver(ns, kind):
    assert available_solvers(), "no solvers registered"
    for name in available_solvers():
        solver = get_solver(name, ns)
        pairs = solver_nfes(solver)
        assert pairs, f"{name} accepts no NFE in 1..6"
        for nfe, n in pairs:
            assert_valid_grid(get_timesteps(kind, ns, nfe, solver=solver), ns, n)
            assert_valid_grid(get_timesteps(kind, ns, nfe, solver=name), ns, n)
    assert_valid_grid(get_timesteps(kind, ns, 7), ns, 8)  # no solver: nfe + 1


@pytest.mark.parametrize("ns", schedules(), ids=lambda ns: ns.kind)
def test_handcrafted_formulas(ns):
    n = 9
    r = np.arange(n) / (n - 1)
    lo, hi = ns.eps, ns.T
    np.testing.assert_allclose(get_timesteps("time_uniform", ns, n - 1).numpy(), hi + r * (lo - hi), rtol=1e-11)
    quadratic = (math.sqrt(hi) + r * (math.sqrt(lo) - math.sqrt(hi))) ** 2  # DPM-Solver, t_order = 2
    np.testing.assert_allclose(get_timesteps("time_quadratic", ns, n - 1).numpy(), quadratic, rtol=1e-13)
    lam = ns.marginal_lambda(get_timesteps("logSNR", ns, n - 1)).numpy()
    np.testing.assert_allclose(np.diff(lam), np.full(n - 1, (lam[-1] - lam[0]) / (n - 1)), rtol=1e-5)
    s_lo = float(ns.edm_sigma(torch.tensor(lo, dtype=torch.float64)))
    s_hi = float(ns.edm_sigma(torch.tensor(hi, dtype=torch.float64)))
    for rho in (7.0, 3.0):
        karras = (s_hi ** (1 / rho) + r * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
        sig = ns.edm_sigma(get_timesteps("edm", ns, n - 1, rho=rho)).numpy()
        np.testing.assert_allclose(sig, karras, rtol=1e-5)
        poly = (hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        np.testing.assert_allclose(get_timesteps("poly", ns, n - 1, rho=rho).numpy(), poly, rtol=1e-13)
    assert torch.allclose(get_timesteps("poly", ns, 8, rho=1.0), get_timesteps("time_uniform", ns, 8), rtol=1e-14)
    assert torch.allclose(get_timesteps("poly", ns, 8, rho=2.0), get_timesteps("time_quadratic", ns, 8), rtol=1e-14)
    if ns.kind == "edm":
        assert torch.allclose(get_timesteps("poly", ns, 8), get_timesteps("edm", ns, 8), rtol=1e-12)


def test_edm_matches_diffusers_karras_sigmas():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True
    )
    ns = NoiseScheduleVP("discrete", betas=SD_BETAS)
    for steps in (4, 10, 25):
        sched.set_timesteps(steps)
        ours = ns.edm_sigma(get_timesteps("edm", ns, steps - 1))
        torch.testing.assert_close(ours.float(), sched.sigmas[:-1].float(), rtol=2e-5, atol=0)


def test_custom_range_and_endpoints():
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    for kind in HANDCRAFTED + ["dmn"]:
        t = get_timesteps(kind, ns, 6, t_min=0.01, t_max=0.9)
        assert_valid_grid(t, ns, 7, t_max=0.9, t_min=0.01)


@pytest.mark.parametrize("ns", [NoiseScheduleVP("linear"), NoiseScheduleEDM()], ids=lambda ns: ns.kind)
def test_handcrafted_differentiable_in_parameters(ns):
    def grid(kind, rho, lo, hi):
        opts = {"t_min": lo, "t_max": hi}
        if kind in ("edm", "poly"):
            opts["rho"] = rho
        return get_timesteps(kind, ns, 5, **opts)

    lo0, hi0 = (0.01, 0.9) if ns.kind != "edm" else (0.01, 40.0)
    for kind in HANDCRAFTED:
        args = (
            torch.tensor(5.0, dtype=torch.float64, requires_grad=True),
            torch.tensor(lo0, dtype=torch.float64, requires_grad=True),
            torch.tensor(hi0, dtype=torch.float64, requires_grad=True),
        )
        assert torch.autograd.gradcheck(lambda r, a, b, k=kind: grid(k, r, a, b), args, eps=1e-6, atol=1e-5)
    # the discrete (piecewise-linear) schedule: gradients exist and are finite
    nsd = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    rho = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(get_timesteps("edm", nsd, 5, rho=rho).sum(), rho)
    assert torch.isfinite(g) and g != 0


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors(tmp_path):
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    for nfe in (0, -1, 1.5, True, "5"):
        with pytest.raises(ValueError, match="nfe"):
            get_timesteps("logSNR", ns, nfe)
    with pytest.raises(ValueError, match="t_min < t_max"):
        get_timesteps("time_uniform", ns, 5, t_min=0.5, t_max=0.5)
    with pytest.raises(ValueError, match="t_min < t_max"):
        get_timesteps("edm", ns, 5, t_min=0.6, t_max=0.5)
    with pytest.raises(ValueError, match="range"):
        get_timesteps("edm", ns, 5, t_min=1e-5)
    with pytest.raises(ValueError, match="unknown discretization kind 'karras'.*available kinds"):
        get_timesteps("karras", ns, 5)
    with pytest.raises(ValueError, match="unknown option.*'sigma_max'"):
        get_timesteps("edm", ns, 5, sigma_max=10.0)
    with pytest.raises(ValueError, match="rho must be > 0"):
        get_timesteps("poly", ns, 5, rho=0.0)
    with pytest.raises(ValueError, match="order"):
        get_timesteps("dmn", ns, 5, order=7)
    with pytest.raises(ValueError, match="needs model_fn"):
        get_timesteps("gits", ns, 5)
    assert get_timesteps("LOGSNR", ns, 3).equal(get_timesteps("logSNR", ns, 3))  # names are case-insensitive
    assert set(HANDCRAFTED + ["gits", "dmn", "ays", "learned"]) <= set(available())


def test_configs_name_allowed_options(repo_root):
    from omegaconf import OmegaConf

    from ld3.discretizations.base import allowed_options, lookup

    files = sorted((Path(repo_root) / "configs" / "discretization").glob("*.yaml"))
    assert {f.stem for f in files} == set(available())
    for f in files:
        cfg = OmegaConf.load(f)
        assert cfg.kind == f.stem
        assert set(cfg.options) <= set(allowed_options(lookup(cfg.kind))), f


# ----------------------------------------------------------------------------- file format
def test_json_round_trip_exact(tmp_path):
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    d = get_discretization("logSNR", ns, 6, solver="ipndm")
    d.model = "analytic_gmm"
    d.model_timesteps = d.timesteps * (1 + 1e-3 * torch.sin(torch.arange(7.0, dtype=torch.float64)))
    d.model_timesteps[0], d.model_timesteps[-1] = d.timesteps[0], d.timesteps[-1]
    d.metrics = {"val_loss": 0.125, "fid": None}
    path = save(tmp_path / "sub" / "grid.json", d, source="learned:ld3")
    obj = json.loads(path.read_text())
    assert obj["format"] == "ld3.discretization/1" and obj["nfe"] == 6 and obj["solver"] == "ipndm"
    assert obj["time_unit"] == "t" and obj["source"] == "learned:ld3" and obj["config"]["kind"] == "logSNR"
    back = load(path)
    assert torch.equal(back.timesteps, d.timesteps) and torch.equal(back.model_timesteps, d.model_timesteps)
    assert (back.model, back.solver, back.nfe, back.metrics) == ("analytic_gmm", "ipndm", 6, d.metrics)
    # the learned kind returns the same grid for a matching run
    got = get_discretization("learned", ns, 6, solver="ipndm", path=path, model="analytic_gmm")
    assert torch.equal(got.timesteps, d.timesteps) and torch.equal(got.model_timesteps, d.model_timesteps)
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))  # atomic write left no temp file


def test_sigma_unit_is_converted(tmp_path):
    ns = NoiseScheduleVP("discrete", betas=SD_BETAS)
    t = get_timesteps("edm", ns, 4)
    path = save(tmp_path / "s.json", ns.edm_sigma(t), time_unit="sigma", nfe=4)
    got = get_timesteps("learned", ns, 4, path=path)
    torch.testing.assert_close(got, t, rtol=0, atol=1e-9)


def test_learned_validates_model_solver_nfe(tmp_path):
    ns = NoiseScheduleEDM()
    path = save(tmp_path / "g.json", get_timesteps("edm", ns, 5), model="cifar10", solver="ipndm", nfe=5)
    with pytest.raises(ValueError, match="model 'cifar10'.*model 'ffhq'"):
        get_timesteps("learned", ns, 5, solver="ipndm", path=path, model="ffhq")
    with pytest.raises(ValueError, match="solver 'ipndm'.*solver 'ddim'"):
        get_timesteps("learned", ns, 5, solver="ddim", path=path, model="cifar10")
    with pytest.raises(ValueError, match="NFE 5.*NFE 6"):
        get_timesteps("learned", ns, 6, path=path)
    with pytest.warns(UserWarning, match="does not match"):
        t = get_timesteps("learned", ns, 5, solver="ddim", path=path, model="ffhq", allow_mismatch=True)
    assert_valid_grid(t, ns, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="holds 6 time points"):  # never overrides the length
            get_timesteps("learned", ns, 6, path=path, allow_mismatch=True)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "ld3.discretization/1", "timesteps": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="strictly descending"):
        load(bad)
    bad.write_text(json.dumps({"format": "other/9", "timesteps": [2.0, 1.0]}))
    with pytest.raises(ValueError, match="format='other/9'"):
        load(bad)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.json")


def test_reads_ld3_reference_checkpoint(tmp_path):
    """An LD3-format best_v2.pt (float32, native units: sigma for EDM) built the way the reference saves it."""
    ns = NoiseScheduleEDM()
    steps = 5
    params1 = torch.ones(steps + 1)
    params2 = torch.zeros(steps + 1)
    t1 = get_timesteps("edm", ns, steps).float()
    t2 = t1.clone()
    t2[1:-1] = t1[1:-1] * 1.01
    torch.save({"params1": params1, "params2": params2, "best_t_steps": torch.cat([t1, t2])}, tmp_path / "best_v2.pt")
    d = load(tmp_path / "best_v2.pt")
    assert d.source == "learned:ld3-reference" and d.model is None and d.nfe is None
    assert torch.equal(d.timesteps, t1.double()) and torch.equal(d.model_timesteps, t2.double())
    for name in ("ipndm", "uni_pc"):
        got = get_discretization("learned", ns, steps, solver=name, path=tmp_path / "best_v2.pt", model="cifar10")
        assert_valid_grid(got.timesteps, ns, steps + 1)  # float32 endpoints 80, 0.002 clamped onto [eps, T]
        torch.testing.assert_close(got.model_timesteps[1:-1], t2[1:-1].double())
    with pytest.raises(ValueError, match="holds 6 time points"):
        get_timesteps("learned", ns, 7, path=tmp_path / "best_v2.pt")
    torch.save({"params1": params1}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="best_t_steps"):
        load(tmp_path / "broken.pt")


# ----------------------------------------------------------------------------- AYS
def test_ays_published_sd15_and_interpolation():
    ns = NoiseScheduleVP("discrete", betas=SD_BETAS)
    t = get_timesteps("ays", ns, 10, model="sd15")
    k = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0]
    assert t.tolist() == [(x + 1) / 1000 for x in k]
    # the published noise levels (paper Table 3) agree with the published timesteps up to integer rounding
    for model, sig in [
        ("sd15", [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]),
        ("sd-v1-5", [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]),
        ("sdxl", [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]),
    ]:
        ours = ns.edm_sigma(get_timesteps("ays", ns, 10, model=model))
        np.testing.assert_allclose(ours.numpy(), sig, rtol=0.02)
    # log-linear interpolation: 21 points keep every published point and put geometric means between them
    sig10 = ns.edm_sigma(t)
    sig20 = ns.edm_sigma(get_timesteps("ays", ns, 20, model="sd15"))
    torch.testing.assert_close(sig20[::2], sig10, rtol=1e-8, atol=0)
    torch.testing.assert_close(sig20[1::2], torch.sqrt(sig10[:-1] * sig10[1:]), rtol=1e-8, atol=0)
    heun = get_solver("heun", ns)
    for nfe, n in solver_nfes(heun) + [(4, 5), (25, 26)]:
        assert_valid_grid(get_timesteps("ays", ns, nfe, solver=heun if n != nfe + 1 else None, model="sd15"), ns, n)


def test_ays_svd_and_errors():
    svd = NoiseScheduleEDM(sigma_min=0.002, sigma_max=700.0)
    published = [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002]
    assert get_timesteps("ays", svd, 10, model="svd").tolist() == published
    assert_valid_grid(get_timesteps("ays", svd, 6, model="svd"), svd, 7)
    np.testing.assert_allclose(loglinear_interp(torch.tensor(published, dtype=torch.float64), 11).numpy(), published)
    with pytest.raises(ValueError, match="no published Align-Your-Steps schedule for model 'analytic_gmm'"):
        get_timesteps("ays", NoiseScheduleEDM(), 10, model="analytic_gmm")
    with pytest.raises(ValueError, match="needs model="):
        get_timesteps("ays", NoiseScheduleEDM(), 10)
    with pytest.raises(ValueError, match="outside this model's range"):
        get_timesteps("ays", NoiseScheduleEDM(), 10, model="svd")  # sigma_max 80 < 700
    with pytest.raises(ValueError, match="discrete VP"):
        get_timesteps("ays", NoiseScheduleEDM(), 10, model="sd15")


# ----------------------------------------------------------------------------- DMN internals
def test_dmn_step_weights_match_quadrature():
    rng = np.random.default_rng(0)
    lam = torch.tensor(np.sort(rng.uniform(-4.0, 5.0, 9)), dtype=torch.float64)
    for k in (1, 2, 3, 4):
        for s in range(k - 1, 8):
            w = step_weights(lam, torch.tensor([s]), k)[0].numpy()
            nodes = lam[s - k + 1 : s + 1].numpy()
            for j in range(k):
                others = np.delete(nodes, j)

                def integrand(x, j=j, others=others, nodes=nodes):
                    return math.exp(x) * np.prod((x - others) / (nodes[j] - others))

                ref = quad(integrand, float(lam[s]), float(lam[s + 1]), epsabs=0, epsrel=1e-12)[0]
                assert w[j] == pytest.approx(ref, rel=1e-8, abs=1e-10)
    for h in (1e-5, 0.05, 0.0999, 0.1001, 2.0):
        got = exp_moments(torch.tensor([h], dtype=torch.float64), 4)[0]
        for m in range(4):
            ref = quad(lambda u, m=m: math.exp(u) * u**m, 0, h, epsabs=0, epsrel=1e-13)[0]
            assert float(got[m]) == pytest.approx(ref, rel=1e-10)


def test_dmn_objective_matches_direct_sum():
    """The batched objective equals a plain per-step loop over quadrature weights (the reference's combination)."""
    rng = np.random.default_rng(1)
    for n_steps, order in [(2, 3), (4, 3), (7, 3), (9, 2), (8, 1)]:
        lam = np.sort(rng.uniform(-5.0, 6.0, n_steps + 1))
        err = (1 / (1 + np.exp(2 * lam))) / (1 / np.sqrt(1 + np.exp(-2 * lam)))
        total, per_node = 0.0, np.zeros(n_steps + 1)
        for s, k in enumerate(step_orders(n_steps, order)):
            nodes = np.arange(s - k + 1, s + 1)
            contrib = []
            for j in range(k):
                pts = lam[nodes]
                others = np.delete(pts, j)

                def f(x, xj=pts[j], others=others):
                    return math.exp(x) * np.prod((x - others) / (xj - others))

                contrib.append(quad(f, lam[s], lam[s + 1], epsabs=0, epsrel=1e-12)[0] * err[nodes[j]])
            if k == 1:
                total += abs(contrib[0])
            elif s < 3:
                total += math.sqrt(sum(c * c for c in contrib))
            else:
                per_node[nodes] += contrib
        ref = total + np.abs(per_node).sum()
        assert float(objective(torch.tensor(lam), order)) == pytest.approx(ref, rel=1e-8)
        node, w = all_step_weights(torch.tensor(lam), order)
        assert node.shape == w.shape == (n_steps, min(order, max(step_orders(n_steps, order))))


def test_dmn_grid_improves_objective_fast_and_follows_solver_order():
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    start = time.process_time()  # CPU time of this process: robust to other jobs sharing the cores
    d = get_discretization("dmn", ns, 10, solver=get_solver("dpm_solver++", ns, order=3))
    assert time.process_time() - start < 15.0, "DMN must run in under 15 s"
    assert_valid_grid(d.timesteps, ns, 11)
    assert d.config["order"] == 3 and d.metrics["objective"] < 0.8 * d.metrics["objective_init"]
    lam = ns.marginal_lambda(d.timesteps).numpy()
    assert float(objective(torch.tensor(lam), 3)) == pytest.approx(d.metrics["objective"], rel=1e-4)
    assert get_discretization("dmn", ns, 5, solver=get_solver("dpm_solver++", ns, order=2)).config["order"] == 2
    assert get_discretization("dmn", ns, 5, solver="ddim").config["order"] == 3  # no order attribute: 3
    pf = get_solver("pfdiff", ns)
    assert_valid_grid(get_timesteps("dmn", ns, 3, solver=pf), ns, pf.num_timesteps(3))


# ----------------------------------------------------------------------------- GITS internals
def test_gits_dp_matches_brute_force():
    rng = np.random.default_rng(3)
    m = 9
    for trial in range(4):
        cost = np.triu(rng.uniform(0.0, 1.0, (m, m)), 1)
        cost[np.tril_indices(m)] = np.inf
        if trial == 3:
            cost[np.triu_indices(m, 1)] -= 0.5  # negative costs, as the 'dev' metric can give
        for n_points in range(2, m + 1):
            for coeff in (1.0, 1.15, 0.8):
                best, best_path = np.inf, None
                for inner in itertools.combinations(range(1, m - 1), n_points - 2):
                    path = [0, *inner, m - 1]
                    # V = C(p0,p1) + c C(p1,p2) + c^2 C(p2,p3) + ...: the recursion V(j,k) = C(j,i) + c V(i,k-1)
                    val = sum(coeff**i * cost[a, b] for i, (a, b) in enumerate(zip(path[:-1], path[1:], strict=True)))
                    if val < best - 1e-12:
                        best, best_path = val, path
                got = gits_select(cost, n_points, coeff)
                val = sum(coeff**i * cost[a, b] for i, (a, b) in enumerate(zip(got[:-1], got[1:], strict=True)))
                assert val == pytest.approx(best, abs=1e-12), (got, best_path)
    with pytest.raises(ValueError, match="fine grid of 9"):
        gits_select(cost, 11)


# ----------------------------------------------------------------------------- accuracy on an exact model
@pytest.fixture(scope="module")
def gmm_case():
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    gmm = AnalyticGMM.random(ns, dim=16, n_components=4, seed=0)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(32, 16, generator=g, dtype=torch.float64)
    exact = gmm.ode_solution(x_T, ns.T, ns.eps)
    x_warm = torch.randn(128, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return ns, gmm, x_T, exact, x_warm


def _error(gmm, solver, x_T, exact, t):
    x = solver.sample(lambda x, tt: gmm.eps(x, tt), x_T, t)
    return float((x - exact).norm(dim=1).mean())


@pytest.mark.slow
def test_gits_beats_uniform_and_logsnr_at_nfe5(gmm_case):
    ns, gmm, x_T, exact, x_warm = gmm_case
    fn = lambda x, t: gmm.eps(x, t)  # noqa: E731
    cost = gits_cost_matrix(ns, fn, x_warm, progress=False)  # defaults: iPNDM teacher, 61-point edm grid, dev
    for name in ("ipndm", "ddim"):
        solver = get_solver(name, ns)
        d = get_discretization("gits", ns, 5, solver=solver, cost=cost)
        assert_valid_grid(d.timesteps, ns, 6)
        assert set(d.timesteps.tolist()) <= set(cost.grid.tolist())
        e_gits = _error(gmm, solver, x_T, exact, d.timesteps)
        for base in ("time_uniform", "logSNR"):
            e_base = _error(gmm, solver, x_T, exact, get_timesteps(base, ns, 5))
            assert e_gits < 0.85 * e_base, (name, base, e_gits, e_base)
    # computing the cost inside get_timesteps (x_T drawn from shape + seed) gives the same selection
    again = get_timesteps("gits", ns, 5, solver="ipndm", model_fn=fn, x_T=x_warm, progress=False)
    assert torch.equal(again, get_timesteps("gits", ns, 5, solver="ipndm", cost=cost))
    drawn = get_timesteps("gits", ns, 3, model_fn=fn, shape=(16,), num_samples=32, dtype=torch.float64,
                          grid_size=21, metric="l2", progress=False)
    assert_valid_grid(drawn, ns, 4)


@pytest.mark.slow
def test_dmn_versus_logsnr_dpm_solver_3m():
    """DMN beats logSNR for DPM-Solver++(3M) at NFE 5 on a GMM with the EDM schedule (sigma in [0.002, 80]).

    On the VP (DDPM) schedule it does not (see docs/discretizations.md): its data-free error weight
    sigma^2/alpha vanishes at low noise, so it spends the steps at high noise; there it still beats
    time-uniform steps.
    """
    solver_opts = {"order": 3}
    vp = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    for ns, beats in [(NoiseScheduleEDM(), "logSNR"), (vp, "time_uniform")]:
        gmm = AnalyticGMM.random(ns, dim=16, n_components=4, seed=0)
        scale = ns.T if ns.kind == "edm" else 1.0
        x_T = scale * torch.randn(32, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        exact = gmm.ode_solution(x_T, ns.T, ns.eps)
        solver = get_solver("dpm_solver++", ns, **solver_opts)
        e_dmn = _error(gmm, solver, x_T, exact, get_timesteps("dmn", ns, 5, solver=solver))
        e_base = _error(gmm, solver, x_T, exact, get_timesteps(beats, ns, 5))
        assert e_dmn < 0.8 * e_base, (ns.kind, e_dmn, e_base)


def test_every_kind_runs_through_a_solver(gmm_case, tmp_path):
    ns, gmm, x_T, exact, x_warm = gmm_case
    solver = get_solver("uni_pc", ns)
    path = save(tmp_path / "l.json", get_timesteps("edm", ns, 4), solver="uni_pc", nfe=4)
    cost = gits_cost_matrix(ns, lambda x, t: gmm.eps(x, t), x_warm[:16], grid_size=21, progress=False)
    opts = {"gits": {"cost": cost}, "learned": {"path": path}}
    for kind in available():
        if kind == "ays":
            continue  # published for SD/SDXL/SVD only (tested above)
        d = get_discretization(kind, ns, 4, solver=solver, **opts.get(kind, {}))
        assert isinstance(d, Discretization) and d.nfe == 4 and d.solver == "uni_pc"
        assert_valid_grid(d.timesteps, ns, 5)
        assert math.isfinite(_error(gmm, solver, x_T[:8], exact[:8], d.timesteps))
    # the baselines follow each solver's NFE -> length map too (Heun, PFDiff, ...)
    for name in available_solvers():
        s = get_solver(name, ns)
        nfe, n = solver_nfes(s, (3, 5))[0]
        for kind, extra in (("gits", {"cost": cost}), ("dmn", {})):
            assert_valid_grid(get_timesteps(kind, ns, nfe, solver=s, **extra), ns, n)
        path_n = save(tmp_path / f"{name}.json", get_timesteps("edm", ns, nfe, solver=s), solver=name, nfe=nfe)
        assert_valid_grid(get_timesteps("learned", ns, nfe, solver=s, path=path_n), ns, n)
