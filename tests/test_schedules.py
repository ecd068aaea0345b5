"""Noise schedules against independent references (diffusers tables, numerical integration)."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from ld3 import NoiseScheduleEDM, NoiseScheduleVP
from ld3.schedules import ddpm_linear_betas, make_schedule

BETAS = ddpm_linear_betas()


def all_schedules():
    return [
        NoiseScheduleVP("discrete", betas=BETAS),
        NoiseScheduleVP("discrete", betas=torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2),
        NoiseScheduleVP("linear"),
        NoiseScheduleVP("cosine"),
        NoiseScheduleEDM(),
        NoiseScheduleEDM(sigma_min=0.01, sigma_max=50.0),
    ]


@pytest.mark.parametrize("ns", all_schedules(), ids=lambda ns: ns.kind)
def test_inverse_lambda_roundtrip(ns):
    t = torch.linspace(ns.eps, ns.T, 2001, dtype=torch.float64)
    lam = ns.marginal_lambda(t)
    assert (lam[1:] < lam[:-1]).all(), "lambda must decrease strictly in t"
    assert torch.allclose(ns.inverse_lambda(lam), t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("ns", all_schedules(), ids=lambda ns: ns.kind)
def test_alpha_sigma_consistency(ns):
    t = torch.linspace(ns.eps, ns.T, 101, dtype=torch.float64)
    a, s, lam = ns.marginal_alpha(t), ns.marginal_std(t), ns.marginal_lambda(t)
    assert torch.allclose(torch.log(a / s), lam, atol=1e-10)
    if ns.kind.startswith("vp"):
        assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-12)
    else:
        assert torch.equal(a, torch.ones_like(a)) and torch.allclose(s, t)
    # the EDM view round-trips
    sig = ns.edm_sigma(t)
    assert torch.allclose(sig, s / a, rtol=1e-10)
    assert torch.allclose(ns.inverse_edm_sigma(sig), t, atol=1e-6)


def test_discrete_matches_cumprod_and_diffusers():
    from diffusers import DDPMScheduler

    ns = NoiseScheduleVP("discrete", betas=BETAS)
    ref = torch.cumprod(1 - BETAS, 0)
    t_grid = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.allclose(ns.marginal_alpha(t_grid) ** 2, ref, rtol=1e-12, atol=0)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2)
    diff_ac = sched.alphas_cumprod.to(torch.float64)
    assert torch.allclose(ns.marginal_alpha(t_grid) ** 2, diff_ac, rtol=1e-6)
    # the alphas_cumprod constructor gives the same schedule
    ns2 = NoiseScheduleVP("discrete", alphas_cumprod=ref)
    t = torch.rand(50, dtype=torch.float64) * (1 - 1e-3) + 1e-3
    assert torch.allclose(ns.marginal_lambda(t), ns2.marginal_lambda(t), atol=1e-12)


def test_discrete_is_piecewise_linear_in_log_alpha():
    ns = NoiseScheduleVP("discrete", betas=BETAS)
    la = 0.5 * torch.log(torch.cumprod(1 - BETAS, 0))
    k = 417
    t0, t1 = (k + 1) / 1000, (k + 2) / 1000
    w = 0.3
    mid = torch.tensor(t0 + w * (t1 - t0), dtype=torch.float64)
    assert torch.allclose(ns.marginal_log_mean_coeff(mid), (1 - w) * la[k] + w * la[k + 1], atol=1e-14)


def test_linear_matches_integral_of_beta():
    ns = NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)
    for t in [1e-3, 0.1, 0.5, 0.93, 1.0]:
        integral, _ = quad(lambda s: 0.1 + s * (20.0 - 0.1), 0, t)
        assert math.isclose(float(ns.marginal_log_mean_coeff(torch.tensor(t, dtype=torch.float64))), -0.5 * integral,
                            rel_tol=1e-12, abs_tol=1e-14)


def test_cosine_matches_nichol_dhariwal():
    ns = NoiseScheduleVP("cosine")
    s = 0.008
    f = lambda t: np.cos((t + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    for t in [1e-3, 0.2, 0.7, 0.99]:
        alpha_bar = f(t) / f(0)
        got = float(ns.marginal_alpha(torch.tensor(t, dtype=torch.float64)) ** 2)
        assert math.isclose(got, alpha_bar, rel_tol=1e-10)


@pytest.mark.parametrize("ns", all_schedules(), ids=lambda ns: ns.kind)
def test_gradients_finite_at_both_ends(ns):
    for t0 in (ns.eps, ns.T):
        t = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
        for fn in (ns.marginal_lambda, ns.marginal_alpha, ns.marginal_std):
            (g,) = torch.autograd.grad(fn(t), t)
            assert torch.isfinite(g), (fn.__name__, t0)
        lam = ns.marginal_lambda(torch.tensor(t0, dtype=torch.float64)).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ns.inverse_lambda(lam), lam)
        assert torch.isfinite(g) and g < 0


@pytest.mark.parametrize("ns", all_schedules()[2:], ids=lambda ns: ns.kind)
def test_gradcheck_lambda_and_inverse(ns):
    t = torch.linspace(ns.eps * 1.5, ns.T * 0.99, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ns.marginal_lambda(x), (t,))
    lam = ns.marginal_lambda(t.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ns.inverse_lambda(x), (lam,))


def test_bad_input():
    with pytest.raises(ValueError, match="schedule='quadratic'.*allowed"):
        NoiseScheduleVP("quadratic")
    with pytest.raises(ValueError, match=r"betas must lie in the open interval \(0, 1\)"):
        NoiseScheduleVP("discrete", betas=torch.tensor([0.1, 1.2, 0.3]))
    with pytest.raises(ValueError, match="betas"):
        NoiseScheduleVP("discrete", betas=torch.tensor([0.0, 0.1, 0.3]))
    with pytest.raises(ValueError, match="exactly one of betas or alphas_cumprod"):
        NoiseScheduleVP("discrete")
    ns = NoiseScheduleVP("discrete", betas=BETAS)
    with pytest.raises(ValueError, match=r"t=1\.5 is outside the allowed range"):
        ns.marginal_alpha(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="outside the allowed range"):
        ns.marginal_lambda(torch.tensor(1e-5))
    with pytest.raises(ValueError, match="non-finite"):
        ns.marginal_std(torch.tensor(float("nan")))
    edm = NoiseScheduleEDM()
    with pytest.raises(ValueError, match=r"t=100\.0 is outside"):
        edm.marginal_lambda(torch.tensor(100.0))
    with pytest.raises(ValueError, match="sigma_min"):
        NoiseScheduleEDM(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="unknown noise schedule 'foo'"):
        make_schedule("foo")


def test_float32_inputs_keep_dtype():
    ns = NoiseScheduleVP("discrete", betas=BETAS)
    t = torch.tensor([0.3, 0.6], dtype=torch.float32)
    assert ns.marginal_alpha(t).dtype == torch.float32
