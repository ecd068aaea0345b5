"""DDIM, Euler, Heun and thresholding checked against independent formulas and exact solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP, ddpm_linear_betas
from ld3.solvers import get_solver
from ld3.solvers.thresholding import ThresholdingOptions, dynamic_threshold

DT = torch.float64



SCHEDULES = {
    "vp_discrete": lambda: NoiseScheduleVP("discrete", betas=ddpm_linear_betas()),
    "vp_linear": lambda: NoiseScheduleVP("linear"),
    "vp_cosine": lambda: NoiseScheduleVP("cosine"),
    "edm": lambda: NoiseScheduleEDM(),
}


def logsnr_grid(ns, n_points: int) -> torch.Tensor:
    lam = torch.linspace(ns.lambda_min, ns.lambda_max, n_points, dtype=DT)
    ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = ns.T, ns.eps
    return ts


def x_T(ns, batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, dtype=DT, generator=g) * float(ns.marginal_std(torch.tensor(ns.T, dtype=DT)))


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize(
    "name, options",
    [("ddim", {}), ("euler", {}), ("heun", {}), ("ipndm", {"order": 4}), ("ipndm", {"order": 4, "variable_step": True}),
     ("pfdiff", {"k": 2, "h": 1}), ("pfdiff", {"k": 1, "h": 1, "base": "dpm_solver_2"})],
)
def test_point_mass_data_is_integrated_exactly(kind, name, options):
    """For (nearly) a point mass the ODE has eps constant along trajectories (y = mu + s eps), so
    every consistent solver is exact with any number of steps; compare with the closed form."""
    ns = SCHEDULES[kind]()
    gmm = AnalyticGMM(torch.full((1, 5), 0.3, dtype=DT), torch.full((1, 5), 1e-14, dtype=DT), ns)
    solver = get_solver(name, ns, **options)
    x = x_T(ns, 3, 5)
    ts = logsnr_grid(ns, solver.num_timesteps(5 if name != "pfdiff" or options.get("base") != "dpm_solver_2" else 6))
    exact = gmm.ode_solution(x, ns.T, ns.eps, method="closed_form")
    out = solver.sample(gmm.eps, x, ts)
    assert torch.allclose(out, exact, rtol=1e-7, atol=1e-7 * float(exact.abs().max()))


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_ddim_equals_euler_and_ipndm1(kind):
    ns = SCHEDULES[kind]()
    gmm = AnalyticGMM.random(ns, dim=6, n_components=3, seed=4)
    x = x_T(ns, 4, 6)
    ts = logsnr_grid(ns, 9)
    ddim = get_solver("ddim", ns).sample(gmm.eps, x, ts)
    euler = get_solver("euler", ns).sample(gmm.eps, x, ts)
    ipndm1 = get_solver("ipndm", ns, order=1).sample(gmm.eps, x, ts)
    scale = float(ddim.abs().max())
    assert torch.allclose(ddim, euler, rtol=1e-10, atol=1e-11 * scale)
    assert torch.allclose(ddim, ipndm1, rtol=1e-10, atol=1e-11 * scale)


def _ddim_reference_alphas_cumprod(eps_fn, x, ts, ns, eta=0.0, seed=None):
    """DDIM (Song et al. 2021, Eq. 12 and 16) written with alphas_cumprod a = alpha^2, as in the paper."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    a = ns.marginal_alpha(ts).pow(2)
    for i in range(len(ts) - 1):
        e = eps_fn(x, ts[i].expand(x.shape[0]))
        x0 = (x - (1 - a[i]).sqrt() * e) / a[i].sqrt()
        std = eta * ((1 - a[i + 1]) / (1 - a[i])).sqrt() * (1 - a[i] / a[i + 1]).sqrt()
        x = a[i + 1].sqrt() * x0 + (1 - a[i + 1] - std**2).sqrt() * e
        if eta > 0:
            x = x + std * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_matches_paper_formula_vp(eta):
    ns = SCHEDULES["vp_discrete"]()
    gmm = AnalyticGMM.random(ns, dim=6, n_components=2, seed=1)
    x = x_T(ns, 4, 6)
    ts = logsnr_grid(ns, 8)
    opts = {"eta": eta, "seed": 11} if eta > 0 else {}
    ours = get_solver("ddim", ns, **opts).sample(gmm.eps, x, ts)
    ref = _ddim_reference_alphas_cumprod(gmm.eps, x, ts, ns, eta=eta, seed=11 if eta > 0 else None)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-10)


def test_stochastic_ddim_reproducibility():
    ns = SCHEDULES["vp_linear"]()
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=1)
    x = x_T(ns, 3, 4)
    ts = logsnr_grid(ns, 6)
    s = get_solver("ddim", ns, eta=0.7, seed=5)
    assert torch.equal(s.sample(gmm.eps, x, ts), s.sample(gmm.eps, x, ts))
    assert not torch.equal(s.sample(gmm.eps, x, ts), get_solver("ddim", ns, eta=0.7, seed=6).sample(gmm.eps, x, ts))
    # a user-owned generator advances across calls; re-seeding it reproduces
    gen = torch.Generator().manual_seed(3)
    sg = get_solver("ddim", ns, eta=0.7, generator=gen)
    first = sg.sample(gmm.eps, x, ts)
    second = sg.sample(gmm.eps, x, ts)
    assert not torch.equal(first, second)
    gen.manual_seed(3)
    assert torch.equal(sg.sample(gmm.eps, x, ts), first)
    # without seed or generator: the global RNG
    sn = get_solver("ddim", ns, eta=0.7)
    torch.manual_seed(9)
    a = sn.sample(gmm.eps, x, ts)
    torch.manual_seed(9)
    assert torch.equal(sn.sample(gmm.eps, x, ts), a)
    # eta = 0 ignores the generator entirely
    assert torch.equal(
        get_solver("ddim", ns, seed=1).sample(gmm.eps, x, ts), get_solver("ddim", ns).sample(gmm.eps, x, ts)
    )


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_samples_the_data_marginal(eta):
    """With the exact denoiser and many steps, stochastic DDIM reaches the true marginal at t_min."""
    ns = SCHEDULES["vp_linear"]()
    mu, var = 0.7, 0.05
    gmm = AnalyticGMM(torch.tensor([[mu]], dtype=DT), torch.tensor([[var]], dtype=DT), ns)
    n = 20000
    x = torch.randn(n, 1, dtype=DT, generator=torch.Generator().manual_seed(0))  # ~ marginal at T (alpha_T ~ 0.007)
    t_T = torch.tensor(ns.T, dtype=DT)
    aT, sT = float(ns.marginal_alpha(t_T)), float(ns.marginal_std(t_T))
    x = aT * mu + math.sqrt(aT**2 * var + sT**2) * x
    out = get_solver("ddim", ns, eta=eta, seed=1).sample(gmm.eps, x, logsnr_grid(ns, 301))
    t0 = torch.tensor(ns.eps, dtype=DT)
    a0, s0 = float(ns.marginal_alpha(t0)), float(ns.marginal_std(t0))
    m_true, v_true = a0 * mu, a0**2 * var + s0**2
    m, v = float(out.mean()), float(out.var())
    assert abs(m - m_true) < 4 * math.sqrt(v_true / n) + 2e-3
    assert abs(v / v_true - 1) < 0.04


# ---------------------------------------------------------------------------------------------- heun
def test_heun_matches_edm_algorithm_1():
    """EDM Alg. 1 (deterministic) written directly in sigma, D = x - sigma eps."""
    ns = SCHEDULES["edm"]()
    gmm = AnalyticGMM.random(ns, dim=5, n_components=3, seed=2)
    x = x_T(ns, 3, 5)
    sig = [80.0, 20.0, 5.0, 1.3, 0.4, 0.1, 0.02, 0.002]
    ts = torch.tensor(sig, dtype=DT)

    def denoise(xx, s):
        return xx - s * gmm.eps(xx, torch.full((xx.shape[0],), s, dtype=DT))

    for final in ("euler", "heun"):
        y = x.clone()
        for i in range(len(sig) - 1):
            d = (y - denoise(y, sig[i])) / sig[i]
            y_next = y + (sig[i + 1] - sig[i]) * d
            if i < len(sig) - 2 or final == "heun":
                d2 = (y_next - denoise(y_next, sig[i + 1])) / sig[i + 1]
                y_next = y + (sig[i + 1] - sig[i]) * (0.5 * d + 0.5 * d2)
            y = y_next
        ours = get_solver("heun", ns, final_step=final).sample(gmm.eps, x, ts)
        assert torch.allclose(ours, y, rtol=1e-11, atol=1e-12)


def test_heun_nfe_mapping():
    ns = SCHEDULES["edm"]()
    h = get_solver("heun", ns)
    assert [h.num_timesteps(n) for n in (1, 3, 5, 9)] == [2, 3, 4, 6]
    assert [h.nfe(n) for n in (2, 3, 4, 6)] == [1, 3, 5, 9]
    hh = get_solver("heun", ns, final_step="heun")
    assert [hh.num_timesteps(n) for n in (2, 4, 10)] == [2, 3, 6]


def test_heun_variants_differ_only_in_the_last_step():
    ns = SCHEDULES["vp_linear"]()
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=0)
    x = x_T(ns, 2, 4)
    ts = logsnr_grid(ns, 6)
    _, a = get_solver("heun", ns).sample(gmm.eps, x, ts, return_trajectory=True)
    _, b = get_solver("heun", ns, final_step="heun").sample(gmm.eps, x, ts, return_trajectory=True)
    assert all(torch.equal(u, v) for u, v in zip(a[:-1], b[:-1], strict=True))
    assert not torch.equal(a[-1], b[-1])


# ---------------------------------------------------------------------------------------------- thresholding
def _np_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    out = np.empty_like(x0)
    for b in range(x0.shape[0]):
        s = np.quantile(np.abs(x0[b]).ravel(), ratio)  # numpy's default 'linear' = torch's default
        s = min(max(s, 1.0), max_value)
        out[b] = np.clip(x0[b], -s, s) / s
    return out


@pytest.mark.parametrize("ratio, max_value", [(0.995, 1.0), (0.9, 1.5), (0.5, 3.0), (1.0, 2.0)])
def test_dynamic_threshold_against_numpy(ratio, max_value):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, dtype=DT, generator=g) * torch.tensor([0.3, 1.0, 2.0, 4.0, 8.0], dtype=DT).reshape(
        5, 1, 1, 1
    )
    ours = dynamic_threshold(x0, ratio, max_value)
    ref = _np_threshold(x0.numpy(), ratio, max_value)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert float(ours.abs().max()) <= 1.0 + 1e-12
    # samples already inside [-1, 1] are untouched (s clamps to 1)
    assert torch.equal(ours[0], x0[0]) or float(x0[0].abs().max()) > 1


def test_thresholding_options_validation_and_noop():
    assert ThresholdingOptions()(torch.full((2, 3), 5.0)).max() == 5.0
    with pytest.raises(ValueError, match="0.0"):
        ThresholdingOptions(dynamic_thresholding_ratio=0.0)
    with pytest.raises(ValueError, match="0.9"):
        ThresholdingOptions(sample_max_value=0.9)


def test_ddim_with_thresholding_matches_manual_loop():
    """DDIM with thresholding = DDIM on a model whose eps is recomputed from the clipped x0."""
    ns = SCHEDULES["vp_discrete"]()
    gmm = AnalyticGMM(torch.tensor([[2.5, -2.0, 0.5], [-1.5, 3.0, 0.0]], dtype=DT), 0.05, ns)  # data beyond [-1, 1]
    x = x_T(ns, 4, 3)
    ts = logsnr_grid(ns, 7)
    ours = get_solver("ddim", ns, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0).sample(
        gmm.eps, x, ts
    )

    def clipped_eps(xx, t):
        a = ns.marginal_alpha(t).reshape(-1, 1)
        s = ns.marginal_std(t).reshape(-1, 1)
        e = gmm.eps(xx, t)
        x0 = torch.from_numpy(_np_threshold(((xx - s * e) / a).numpy(), 0.9, 2.0))
        return (xx - a * x0) / s

    ref = _ddim_reference_alphas_cumprod(clipped_eps, x, ts, ns)
    plain = get_solver("ddim", ns).sample(gmm.eps, x, ts)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(ours, plain, rtol=1e-3)
