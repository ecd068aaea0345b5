"""TimeTuner (ld3/learners/timetuner.py): sampling, the ratio mechanics, and the tuning objective.

Independent references: DDIM written here directly on DDPM's alphas_cumprod (grid nodes t = (k+1)/N
are interpolation nodes, so alpha_t^2 = alphas_cumprod[k] exactly), ld3's ``ddim`` solver, and the
closed-form population loss of the TimeTuner objective for Gaussian data (every quantity is affine
in x_t), minimised by a dense grid search.
"""

from __future__ import annotations

import math

import pytest
import torch

from ld3 import NoiseScheduleEDM, NoiseScheduleVP, model_wrapper
from ld3.learners.timetuner import (
    TimeTuner,
    default_timesteps,
    dict_loader,
    ratios_from_discretization,
    timesteps_from_indices,
    tuned_model_timesteps,
)
from ld3.models import AnalyticGMM
from ld3.schedules import ddpm_linear_betas

N_TRAIN = 1000


@pytest.fixture(scope="module")
def ns():
    return NoiseScheduleVP("discrete", betas=ddpm_linear_betas())


@pytest.fixture(scope="module")
def gmm(ns):
    return AnalyticGMM.random(ns, dim=6, n_components=3, seed=0)


def _alphas_cumprod():
    return torch.cumprod(1.0 - ddpm_linear_betas(), 0)


# ----------------------------------------------------------------------------- grids
def test_default_grid_matches_reference(ns):
    # reference: k in {901, 801, ..., 1}, t = k/1000 + 1/N, end point 1/N
    expected = [0.902, 0.802, 0.702, 0.602, 0.502, 0.402, 0.302, 0.202, 0.102, 0.002, 0.001]
    assert torch.allclose(default_timesteps(ns, 10), torch.tensor(expected, dtype=torch.float64), atol=1e-15)
    # exactly num_steps steps when N % num_steps != 0 (stride 142: k = 853, 711, ..., 1)
    g7 = default_timesteps(ns, 7)
    k7 = [6 * 142 + 1, 5 * 142 + 1, 4 * 142 + 1, 3 * 142 + 1, 2 * 142 + 1, 142 + 1, 1, 0]
    assert torch.allclose(g7, torch.tensor([(k + 1) / 1000 for k in k7], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(timesteps_from_indices(ns, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
                          default_timesteps(ns, 10), atol=1e-15)
    lin = NoiseScheduleVP("linear")
    assert torch.allclose(default_timesteps(lin, 4), torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 0.001],
                                                                  dtype=torch.float64), atol=1e-12)


# ----------------------------------------------------------------------------- sampling
def _reference_ddim(model, x, ks, ratios=None):
    """DDIM on alphas_cumprod: step k -> k' with the network at r * t_k, t_k = (k + 1) / N."""
    ac = _alphas_cumprod()
    for i, (k, kp) in enumerate(zip(ks[:-1], ks[1:], strict=True)):
        r = 1.0 if ratios is None else float(ratios[i])
        t = (k + 1) / N_TRAIN
        eps = model(x, torch.full((x.shape[0],), r * t, dtype=torch.float64))
        a, ap = ac[k], ac[kp]
        x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
        x = torch.sqrt(ap) * x0 + torch.sqrt(1 - ap) * eps
    return x


def test_ratios_one_equal_plain_ddim(ns, gmm):
    mf = model_wrapper(gmm.network("noise"), ns)
    x = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tt = TimeTuner(mf, ns)
    out = tt.ddim_sample(x, 10)
    ks = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    ref = _reference_ddim(mf, x, ks)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)
    from ld3.solvers import get_solver

    solver_out = get_solver("ddim", ns).sample(mf, x, default_timesteps(ns, 10))
    assert torch.allclose(out, solver_out, rtol=0, atol=1e-12)
    # explicit ones, and the stochastic sampler with the same noise stream as the ddim solver
    assert torch.equal(tt.ddim_sample(x, 10, t_ratios=torch.ones(10)), out)
    a = tt.ddim_sample(x, 10, eta=0.7, generator=torch.Generator().manual_seed(3))
    b = get_solver("ddim", ns, eta=0.7, seed=3).sample(mf, x, default_timesteps(ns, 10))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(a, out)


def test_network_gets_ratio_times_t_coefficients_keep_t(ns):
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return x * (0.3 + t)[:, None]  # depends on the time it receives

    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ratios = torch.tensor([1.3, 0.8, 1.1, 1.0], dtype=torch.float64)
    out = TimeTuner(model, ns).ddim_sample(x, 4, t_ratios=ratios)
    grid = [0.752, 0.502, 0.252, 0.002]
    assert len(seen) == 4
    for rec, r, t in zip(seen, ratios.tolist(), grid, strict=True):
        assert rec.shape == (5,) and torch.allclose(rec, torch.full((5,), r * t, dtype=torch.float64), atol=1e-15)
    seen.clear()
    ref = _reference_ddim(model, x, [751, 501, 251, 1, 0], ratios)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    # differentiable in the ratios
    r = ratios.clone().requires_grad_(True)
    TimeTuner(model, ns).ddim_sample(x, 4, t_ratios=r).sum().backward()
    assert r.grad is not None and torch.isfinite(r.grad).all() and r.grad[:3].abs().min() > 0


def test_tuned_grid_drives_every_solver(ns, gmm, tmp_path):
    from ld3.discretizations import get_discretization, load
    from ld3.solvers import available, get_solver

    mf = model_wrapper(gmm.network("noise"), ns)
    tt = TimeTuner(mf, ns)
    ratios = torch.tensor([1.05, 1.1, 0.95, 1.2, 1.0], dtype=torch.float64)
    ts, mts = tt.tuned_timesteps(ratios)
    assert torch.allclose(mts, torch.cat([ratios * ts[:-1], ts[-1:]]))
    assert torch.allclose(ratios_from_discretization(ts, mts), ratios)
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = tt.ddim_sample(x, 5, t_ratios=ratios)
    assert torch.allclose(get_solver("ddim", ns).sample(mf, x, ts, model_timesteps=mts), out, atol=1e-12)
    seen = []

    def rec(x, t, **kw):
        seen.append(float(t[0]))
        return mf(x, t, **kw)

    exercised = []
    for name in available():
        solver = get_solver(name, ns)
        if solver.num_timesteps(5) != ts.numel():
            continue
        seen.clear()
        y = solver.sample(rec, x, ts, model_timesteps=mts)
        assert torch.isfinite(y).all()
        assert seen == pytest.approx(mts[:-1].tolist(), abs=1e-12), name  # one call per step, at r_i * t_i
        exercised.append(name)
    assert {"ddim", "ipndm", "dpm_solver++"} <= set(exercised) or len(exercised) >= 2
    # the discretization file round trip, and its use through the 'learned' kind
    path = tt.save_discretization(tmp_path / "tt.json", ratios, model="analytic_gmm", metrics={"loss": 0.5})
    d = load(path)
    assert d.source == "learned:timetuner" and d.nfe == 5 and d.solver == "ddim"
    assert torch.equal(d.timesteps, ts) and torch.equal(d.model_timesteps, mts)
    assert d.config["t_ratios"] == ratios.tolist()
    got = get_discretization("learned", ns, 5, solver="ddim", path=str(path))
    assert torch.allclose(got.model_timesteps, mts)


def test_other_schedules_and_model_types(gmm):
    for sched in (NoiseScheduleVP("linear"), NoiseScheduleEDM()):
        g = AnalyticGMM.random(sched, dim=6, n_components=3, seed=1)
        mf = model_wrapper(g.network("noise"), sched)
        x = torch.randn(4, 6, dtype=torch.float64) * (80.0 if sched.kind == "edm" else 1.0)
        out = TimeTuner(mf, sched).ddim_sample(x, 6)
        grid = torch.linspace(sched.T, sched.eps, 7, dtype=torch.float64)
        from ld3.solvers import get_solver

        assert torch.allclose(out, get_solver("ddim", sched).sample(mf, x, grid), atol=1e-10)
    # the reference's v-type conversion bug: every parameterization gives the same sampler
    ns = gmm.noise_schedule
    x = torch.randn(4, 6, dtype=torch.float64)
    ratios = torch.tensor([1.1, 0.9, 1.0])
    ref = TimeTuner(model_wrapper(gmm.network("noise"), ns), ns).ddim_sample(x, 3, t_ratios=ratios)
    for mt in ("x_start", "v", "score"):
        out = TimeTuner(model_wrapper(gmm.network(mt), ns, model_type=mt), ns).ddim_sample(x, 3, t_ratios=ratios)
        assert torch.allclose(out, ref, atol=1e-9), mt


# ----------------------------------------------------------------------------- tuning objective
C_BAD = 0.8  # the bad network receives c * (its discrete time index): it thinks x_t is cleaner


def _gaussian_setup(ns):
    mu = torch.tensor([[0.5, -1.0, 0.3, 0.0]], dtype=torch.float64)
    var = torch.tensor([[0.05, 0.2, 0.5, 1.0]], dtype=torch.float64)
    g = AnalyticGMM(mu, var, ns)
    net = g.network("noise")
    bad = model_wrapper(lambda x, t_in, cond=None: net(x, C_BAD * t_in, cond), ns)
    return g, mu[0], var[0], bad


def _population_loss(ns, mu, var, r, t, s, mean_x, var_x):
    """E || eps_b(x_t, t) - eps_b(x~_s(r), s) ||^2 for x_t ~ N(mean_x, diag var_x), vectorised over r.

    eps_b(x, tau) = k(tau) (x - alpha(tau') mu) with tau' = c (tau - 1/N) + 1/N the time the bad
    network believes in and k = sigma / (alpha^2 var + sigma^2) at tau'. Returns (loss, A, B) with
    x~_s = A x_t + B.
    """

    def coef(tau):
        tp = C_BAD * (tau - 1.0 / N_TRAIN) + 1.0 / N_TRAIN
        a = ns.marginal_alpha(tp, check=False)[..., None]
        sg = ns.marginal_std(tp, check=False)[..., None]
        return sg / (a**2 * var + sg**2), a * mu

    t_, s_ = torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    at, st = ns.marginal_alpha(t_), ns.marginal_std(t_)
    as_, ss = ns.marginal_alpha(s_), ns.marginal_std(s_)
    kr, mr = coef(r * t)
    kt, mt = coef(t_)
    ks, ms = coef(s_)
    c_eps = ss - as_ * st / at  # DDIM: x_s = alpha_s x0 + sigma_s eps, x0 = (x_t - sigma_t eps) / alpha_t
    A = as_ / at + c_eps * kr
    B = -c_eps * kr * mr
    M = kt - ks * A
    b = -kt * mt - ks * (B - ms)
    return (M**2 * var_x + (M * mean_x + b) ** 2).sum(-1), A, B


def _argmin(ns, mu, var, t, s, mean_x, var_x):
    rs = torch.arange(0.5, 3.0, 1e-4, dtype=torch.float64)
    loss, _, _ = _population_loss(ns, mu, var, rs, t, s, mean_x, var_x)
    return float(rs[loss.argmin()])


def test_optimize_parallel_recovers_closed_form_optimum(ns):
    g, mu, var, bad = _gaussian_setup(ns)
    data = g.sample_data(8192, generator=torch.Generator().manual_seed(0))
    tt = TimeTuner(bad, ns)
    torch.manual_seed(0)
    ratios, hist = tt.optimize_timesteps(
        dict_loader(data, batch_size=128), tt.ddim_step_fn, 4, tune_type="parallel", lr=2e-2, total_iters=100,
        verbose=False, noise_generator=torch.Generator().manual_seed(1), return_history=True,
    )
    assert ratios.shape == (4,) and ratios.dtype == torch.float64 and ratios[-1] == 1.0
    assert len(hist["loss"]) == 3 and all(len(h) == 100 for h in hist["loss"])
    grid = default_timesteps(ns, 4).tolist()  # 0.752, 0.502, 0.252, 0.002, 0.001
    for i in range(3):
        t, s = grid[i], grid[i + 1]
        a, sg = float(ns.marginal_alpha(t)), float(ns.marginal_std(t))
        mean_x, var_x = a * mu, a**2 * var + sg**2  # parallel: x_t from the data marginal
        r_opt = _argmin(ns, mu, var, t, s, mean_x, var_x)
        r = float(ratios[i])
        losses, _, _ = _population_loss(ns, mu, var, torch.tensor([r, 1.0]), t, s, mean_x, var_x)
        assert losses[0] < losses[1]
        if i < 2:  # interior optimum (1.187 and 1.268): Adam lands on it
            assert abs(r_opt - 1.0) > 0.15
            assert abs(r - r_opt) < 0.01, (i, r, r_opt)
        else:  # the big last step: the loss keeps falling as r grows; Adam moves that way
            assert r > 1.5
    # the objective as TimeTuner evaluates it agrees with the closed form (Monte Carlo, 2^15 samples)
    t, s = grid[1], grid[2]
    a, sg = float(ns.marginal_alpha(t)), float(ns.marginal_std(t))
    gen = torch.Generator().manual_seed(5)
    x0 = g.sample_data(1 << 15, generator=gen)
    x_t = a * x0 + sg * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for r in (1.0, 1.3):
        mc = float(tt.step_loss(x_t, t, s, r))
        exact = float(_population_loss(ns, mu, var, torch.tensor([r]), t, s, a * mu, a**2 * var + sg**2)[0][0])
        assert mc == pytest.approx(exact, rel=0.03)


def test_tuning_a_miscalibrated_gmm_model_improves_samples(ns, gmm):
    """A 3-component GMM whose network sees c * its time index: ratios move towards 1/c, samples improve."""
    g = AnalyticGMM.random(ns, dim=8, n_components=3, seed=0)
    net = g.network("noise")
    bad = model_wrapper(lambda x, t_in, cond=None: net(x, C_BAD * t_in, cond), ns)
    tt = TimeTuner(bad, ns)
    data = g.sample_data(4096, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ratios = tt.optimize_timesteps(dict_loader(data, batch_size=64), None, 6, tune_type="parallel", lr=2e-2,
                                   total_iters=50, verbose=False, noise_generator=torch.Generator().manual_seed(1))
    assert (ratios[:-1] > 1.05).all() and ratios[-1] == 1.0  # towards 1 / c = 1.25 (the last tuned step further)
    grid = default_timesteps(ns, 6)
    xT = torch.randn(512, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = g.ode_solution(xT, float(grid[0]), float(grid[-1]))  # solve_ivp, rtol 1e-11
    with torch.no_grad():
        err_one = (tt.ddim_sample(xT, 6) - exact).square().sum(1).mean()
        err_tuned = (tt.ddim_sample(xT, 6, t_ratios=ratios) - exact).square().sum(1).mean()
    assert err_tuned < 0.7 * err_one  # measured: 1.08 -> 0.48


def test_optimize_sequential_uses_tuned_prefix(ns):
    g, mu, var, bad = _gaussian_setup(ns)
    data = g.sample_data(8192, generator=torch.Generator().manual_seed(0))
    tt = TimeTuner(bad, ns)
    calls = []

    def step_fn(x, t, s, t_ratio, **kw):
        calls.append((float(t), float(s), float(t_ratio.detach()), t_ratio.requires_grad))
        return tt.ddim_step_fn(x, t, s, t_ratio, **kw)

    torch.manual_seed(0)
    ratios = tt.optimize_timesteps(dict_loader(data, batch_size=128), step_fn, 4, tune_type="sequential",
                                   lr=2e-2, total_iters=100, verbose=False)
    grid = default_timesteps(ns, 4).tolist()  # 0.752, 0.502, 0.252, 0.002, 0.001
    # steps 1 and 2: every iteration first replays the earlier steps with their tuned (fixed) ratios
    replay0 = [c for c in calls if c[0] == pytest.approx(grid[0]) and not c[3]]
    replay1 = [c for c in calls if c[0] == pytest.approx(grid[1]) and not c[3]]
    assert len(replay0) == 200 and all(c[2] == float(ratios[0]) for c in replay0)
    assert len(replay1) == 100 and all(c[2] == float(ratios[1]) for c in replay1)
    trained = [c for c in calls if c[3]]
    assert len(trained) == 300 and all(c[0] == pytest.approx(grid[c_i // 100]) for c_i, c in enumerate(trained))
    # closed form: x_{t1} = A x_{t0} + B from the marginal at t0 with Adam's own r0
    a0, s0 = float(ns.marginal_alpha(grid[0])), float(ns.marginal_std(grid[0]))
    r0_opt = _argmin(ns, mu, var, grid[0], grid[1], a0 * mu, a0**2 * var + s0**2)
    assert abs(float(ratios[0]) - r0_opt) < 0.01
    _, A, B = _population_loss(ns, mu, var, ratios[:1], grid[0], grid[1], a0 * mu, a0**2 * var + s0**2)
    mean1, var1 = A[0] * a0 * mu + B[0], A[0] ** 2 * (a0**2 * var + s0**2)
    r1_opt = _argmin(ns, mu, var, grid[1], grid[2], mean1, var1)
    assert abs(float(ratios[1]) - r1_opt) < 0.01, (float(ratios[1]), r1_opt)
    assert ratios[3] == 1.0


def test_guidance_types_and_labels(ns, gmm):
    from ld3.solvers import get_solver

    y = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0])
    data = torch.cat([gmm.sample_data(16, y=int(k), generator=torch.Generator().manual_seed(int(k))) for k in y])
    labels = y.repeat_interleave(16)
    loader = dict_loader(data, labels, batch_size=32)
    null = gmm.K
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cfg = model_wrapper(gmm.network(), ns, guidance_type="classifier-free", guidance_scale=2.0)
    clf = model_wrapper(gmm.network(), ns, guidance_type="classifier", guidance_scale=1.5,
                        classifier_fn=gmm.classifier_network())
    for mf, uncond in ((cfg, null), (clf, None)):
        tt = TimeTuner(mf, ns)
        kw = {} if uncond is None else {"uncond_condition": uncond}
        for tune in ("parallel", "sequential"):
            r = tt.optimize_timesteps(loader, tt.ddim_step_fn, 3, tune_type=tune, total_iters=3, verbose=False,
                                      eta=0.3, **kw)
            assert r.shape == (3,) and torch.isfinite(r).all() and r[-1] == 1.0
        r = torch.tensor([1.1, 0.9, 1.0])
        out = tt.ddim_sample(x, 3, t_ratios=r, condition=y, uncond_condition=uncond)
        bound = model_wrapper(gmm.network(), ns, guidance_type=mf.guidance_type,
                              guidance_scale=2.0 if uncond is not None else 1.5,
                              classifier_fn=gmm.classifier_network(), condition=y,
                              unconditional_condition=None if uncond is None else torch.full((8,), null))
        ts, mts = tt.tuned_timesteps(r)
        assert torch.allclose(out, get_solver("ddim", ns).sample(bound, x, ts, model_timesteps=mts), atol=1e-10)
    # an unconditional model never receives the loader's labels
    seen = []

    def net(x, t_in, cond=None):
        seen.append(cond)
        return gmm.network()(x, t_in)

    tt = TimeTuner(model_wrapper(net, ns), ns)
    tt.optimize_timesteps(loader, tt.ddim_step_fn, 2, total_iters=2, verbose=False)
    assert seen and all(c is None for c in seen)


def test_encode_fn_and_device(ns, gmm):
    encoded = []

    def encode(img):
        encoded.append(img.shape)
        return img.reshape(img.shape[0], -1)

    images = gmm.sample_data(64).reshape(64, 2, 3)
    mf = model_wrapper(gmm.network(), ns)
    tt = TimeTuner(mf, ns, encode_fn=encode, device="cpu")
    r = tt.optimize_timesteps(dict_loader(images, batch_size=16), tt.ddim_step_fn, 2, total_iters=6, verbose=False)
    assert len(encoded) == 6 and all(s == (16, 2, 3) for s in encoded)  # 6 batches: loader cycled (4 per pass)
    assert r.device.type == "cpu" and r.shape == (2,)


def test_bad_inputs(ns, gmm):
    mf = model_wrapper(gmm.network(), ns)
    tt = TimeTuner(mf, ns)
    x = torch.randn(2, 6, dtype=torch.float64)
    loader = [{"image": gmm.sample_data(4)}]
    with pytest.raises(ValueError, match="tune_type='greedy'"):
        tt.optimize_timesteps(loader, tt.ddim_step_fn, 3, tune_type="greedy")
    with pytest.raises(ValueError, match="lr"):
        tt.optimize_timesteps(loader, tt.ddim_step_fn, 3, lr=0.0)
    with pytest.raises(ValueError, match="total_iters"):
        tt.optimize_timesteps(loader, tt.ddim_step_fn, 3, total_iters=0)
    with pytest.raises(ValueError, match="eta"):
        tt.optimize_timesteps(loader, tt.ddim_step_fn, 3, eta=2.0)
    with pytest.raises(ValueError, match="no batches"):
        tt.optimize_timesteps([], tt.ddim_step_fn, 3, verbose=False)
    with pytest.raises(ValueError, match="'image'"):
        tt.optimize_timesteps([{"img": x}], tt.ddim_step_fn, 3, verbose=False)
    with pytest.raises(ValueError, match="num_steps"):
        tt.ddim_sample(x, 0)
    with pytest.raises(ValueError, match="num_steps=1000"):
        tt.ddim_sample(x, 1000)
    with pytest.raises(ValueError, match="one ratio per step"):
        tt.ddim_sample(x, 4, t_ratios=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        tt.ddim_sample(x, 3, t_ratios=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        tt.ddim_sample(x, 3, t_ratios=[1.0, math.nan, 1.0])
    with pytest.raises(ValueError, match="eta"):
        tt.ddim_sample(x, 3, eta=-0.1)
    with pytest.raises(ValueError, match="descending"):
        tt.ddim_sample(x, None, timesteps=[0.5, 0.7, 0.1])
    with pytest.raises(ValueError, match="3 points"):
        tt.ddim_sample(x, 4, timesteps=[0.9, 0.5, 0.1])
    with pytest.raises(ValueError, match="outside"):
        tt.ddim_sample(x, None, timesteps=[901.0, 1.0])  # reference-style indices: use timesteps_from_indices
    with pytest.raises(ValueError, match="s < t"):
        tt.ddim_step_fn(x, 0.3, 0.5)
    with pytest.raises(ValueError, match="rows"):
        tt.ddim_sample(x, 2, condition=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="indices"):
        timesteps_from_indices(ns, [1000, 1])
    with pytest.raises(ValueError, match="t_ratios has"):
        tuned_model_timesteps(torch.tensor([0.9, 0.5, 0.1]), torch.ones(3))
    with pytest.raises(ValueError, match="callable"):
        TimeTuner(None, ns)


def test_lazy_export():
    import ld3

    assert ld3.TimeTuner is TimeTuner
    assert "TimeTuner" in ld3.__all__
