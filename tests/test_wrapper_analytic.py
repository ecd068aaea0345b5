"""model_wrapper conversions and guidance, and the analytic ground-truth model."""

import math

import pytest
import torch

from ld3 import NoiseScheduleEDM, NoiseScheduleVP, data_prediction_fn, model_wrapper
from ld3.models import AnalyticGMM
from ld3.models.wrapper import inverse_model_time_input, model_time_input
from ld3.schedules import ddpm_linear_betas

SCHEDULES = {
    "vp_discrete": lambda: NoiseScheduleVP("discrete", betas=ddpm_linear_betas()),
    "vp_linear": lambda: NoiseScheduleVP("linear"),
    "vp_cosine": lambda: NoiseScheduleVP("cosine"),
    "edm": lambda: NoiseScheduleEDM(),
}


@pytest.fixture(params=list(SCHEDULES))
def ns(request):
    return SCHEDULES[request.param]()


def _t_mid(ns):
    return torch.tensor([ns.eps * 3, (ns.eps + ns.T) / 2, ns.T * 0.9], dtype=torch.float64)


@pytest.mark.parametrize("diagonal", [False, True])
def test_four_model_types_agree(ns, diagonal):
    gmm = AnalyticGMM.random(ns, dim=6, n_components=3, seed=1, diagonal=diagonal)
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = _t_mid(ns)
    outs = {mt: model_wrapper(gmm.network(mt), ns, model_type=mt)(x, t) for mt in ["noise", "x_start", "v", "score"]}
    for mt, out in outs.items():
        assert torch.allclose(out, outs["noise"], atol=1e-6, rtol=0), mt


def test_gmm_denoiser_matches_monte_carlo_posterior(ns):
    """E[x0 | x_t] by self-normalised importance sampling over the prior: independent of the closed form."""
    gmm = AnalyticGMM.random(ns, dim=2, n_components=3, seed=3, diagonal=False)
    g = torch.Generator().manual_seed(1)
    x0s = gmm.sample_data(400_000, generator=g)
    t = torch.tensor(0.5 * (ns.eps + ns.T) if ns.kind != "edm" else 0.8, dtype=torch.float64)
    a, s = ns.marginal_alpha(t), ns.marginal_std(t)
    x = a * gmm.sample_data(1, generator=g) + s * torch.randn(1, 2, generator=g, dtype=torch.float64)
    logw = -0.5 * ((x - a * x0s) ** 2).sum(-1) / s**2
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0s).sum(0)
    assert torch.allclose(gmm.x0(x, t)[0], mc, atol=0.03), (gmm.x0(x, t), mc)


def test_eps_is_minus_sigma_score_by_autograd(ns):
    """The score equals the autograd gradient of the closed-form log density."""
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=5)
    t = _t_mid(ns)[1]
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    alpha, sigma = ns.marginal_alpha(t), ns.marginal_std(t)
    logp = 0
    comps = []
    for k in range(gmm.K):
        cov = alpha**2 * gmm.eigvecs[k] @ torch.diag(gmm.eigvals[k]) @ gmm.eigvecs[k].T + sigma**2 * torch.eye(4)
        dist = torch.distributions.MultivariateNormal(alpha * gmm.means[k], covariance_matrix=cov)
        comps.append(gmm.log_weights[k] + dist.log_prob(x))
    logp = torch.logsumexp(torch.stack(comps), 0).sum()
    (grad,) = torch.autograd.grad(logp, x)
    assert torch.allclose(gmm.score(x.detach(), t), grad, atol=1e-9)


def test_cfg_scale_one_equals_conditional(ns):
    gmm = AnalyticGMM.random(ns, dim=5, n_components=4, seed=2)
    x = torch.randn(4, 5, dtype=torch.float64)
    t = _t_mid(ns)[1]
    y = torch.tensor([0, 1, 2, 3])
    null = torch.full_like(y, gmm.K)
    fn = model_wrapper(gmm.network("noise"), ns, guidance_type="classifier-free", guidance_scale=1.0,
                       condition=y, unconditional_condition=null)
    assert torch.allclose(fn(x, t), gmm.eps(x, t, y), atol=1e-12)
    # scale s: eps_u + s (eps_c - eps_u), computed in one doubled batch
    fn3 = model_wrapper(gmm.network("x_start"), ns, model_type="x_start", guidance_type="classifier-free",
                        guidance_scale=3.0, condition=y, unconditional_condition=null)
    expected = gmm.eps(x, t) + 3.0 * (gmm.eps(x, t, y) - gmm.eps(x, t))
    assert torch.allclose(fn3(x, t), expected, atol=1e-8)
    # call-time condition overrides the default
    assert torch.allclose(fn(x, t, condition=torch.zeros_like(y)), gmm.eps(x, t, torch.zeros_like(y)), atol=1e-12)


def test_classifier_guidance_exact_shift(ns):
    gmm = AnalyticGMM.random(ns, dim=5, n_components=3, seed=4)
    x = torch.randn(6, 5, dtype=torch.float64)
    t = _t_mid(ns).repeat(2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    scale = 2.5
    fn = model_wrapper(gmm.network("noise"), ns, guidance_type="classifier", guidance_scale=scale,
                       classifier_fn=gmm.classifier_network(), condition=y)
    sigma = ns.marginal_std(t)[:, None]
    expected = gmm.eps(x, t) - scale * sigma * gmm.classifier_grad(x, t, y)
    assert torch.allclose(fn(x, t), expected, atol=1e-9)
    # classifier guidance at full strength (scale 1) turns the marginal into the class-conditional
    fn1 = model_wrapper(gmm.network("noise"), ns, guidance_type="classifier", guidance_scale=1.0,
                        classifier_fn=gmm.classifier_network(), condition=y)
    assert torch.allclose(fn1(x, t), gmm.eps(x, t, y), atol=1e-9)


def test_classifier_guidance_differentiable_in_x():
    ns = SCHEDULES["vp_linear"]()
    gmm = AnalyticGMM.random(ns, dim=3, n_components=2, seed=0)
    fn = model_wrapper(gmm.network("noise"), ns, guidance_type="classifier", guidance_scale=2.0,
                       classifier_fn=gmm.classifier_network(), condition=torch.tensor([1, 0]))
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: fn(z, torch.tensor(0.4, dtype=torch.float64)), (x,))


def test_cond_process_fn_and_model_kwargs():
    ns = SCHEDULES["vp_discrete"]()
    seen = {}

    def net(x, t_in, cond=None, scale=1.0):
        seen["t_in"], seen["cond"] = t_in, cond
        return x * scale

    fn = model_wrapper(net, ns, model_kwargs={"scale": 2.0}, guidance_type="uncond",
                       condition=["a", "b"], cond_process_fn=lambda c: [s.upper() for s in c])
    x = torch.ones(2, 3)
    out = fn(x, torch.tensor([0.5, 1.0]))
    assert torch.equal(out, 2 * x) and seen["cond"] == ["A", "B"]
    # discrete-time input convention: (t - 1/N) * 1000
    assert torch.allclose(seen["t_in"], torch.tensor([499.0, 999.0]))
    assert torch.allclose(inverse_model_time_input(ns, model_time_input(ns, torch.tensor([0.3]))), torch.tensor([0.3]))


def test_data_prediction_helper(ns):
    gmm = AnalyticGMM.random(ns, dim=4, n_components=2, seed=7)
    fn = model_wrapper(gmm.network("noise"), ns)
    x = torch.randn(3, 4, dtype=torch.float64)
    t = _t_mid(ns)
    assert torch.allclose(data_prediction_fn(fn, ns)(x, t), gmm.x0(x, t), atol=1e-8)


def test_pixel_shaped_inputs():
    ns = SCHEDULES["vp_discrete"]()
    gmm = AnalyticGMM.random(ns, dim=2 * 3 * 3, n_components=2, seed=0, diagonal=True)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    out = model_wrapper(gmm.network("v"), ns, model_type="v")(x, 0.5)
    assert out.shape == x.shape
    assert torch.allclose(out.reshape(4, -1), gmm.eps(x.reshape(4, -1), 0.5), atol=1e-10)


@pytest.mark.parametrize("kind", ["vp_discrete", "edm", "vp_cosine"])
@pytest.mark.parametrize("diagonal", [False, True])
def test_closed_form_ode_matches_solve_ivp(kind, diagonal):
    ns = SCHEDULES[kind]()
    gmm = AnalyticGMM.random(ns, dim=6, n_components=1, seed=11, diagonal=diagonal)
    x_T = ns.marginal_std(torch.tensor(ns.T, dtype=torch.float64)) * torch.randn(3, 6, dtype=torch.float64)
    exact = gmm.ode_solution(x_T, ns.T, ns.eps, method="closed_form")
    num = gmm.ode_solution(x_T, ns.T, ns.eps, method="solve_ivp")
    assert torch.allclose(exact, num, atol=1e-8, rtol=0), (exact - num).abs().max()


def test_closed_form_is_a_solution_of_the_ode():
    """Differentiate the closed form numerically in sigma~ and compare to eps (independent of solve_ivp)."""
    ns = SCHEDULES["edm"]()
    gmm = AnalyticGMM.random(ns, dim=4, n_components=1, seed=2)
    x_T = 80.0 * torch.randn(2, 4, dtype=torch.float64)
    s, h = 1.3, 1e-5
    xp = gmm.ode_solution(x_T, 80.0, s + h, method="closed_form")
    xm = gmm.ode_solution(x_T, 80.0, s - h, method="closed_form")
    x = gmm.ode_solution(x_T, 80.0, s, method="closed_form")
    assert torch.allclose((xp - xm) / (2 * h), gmm.eps(x, s), atol=1e-7)


def test_mixture_ode_pushes_prior_to_data():
    ns = SCHEDULES["vp_discrete"]()
    gmm = AnalyticGMM(torch.tensor([[-2.0], [2.0]]), torch.tensor([[0.01], [0.01]]), ns)
    x_T = torch.randn(200, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = gmm.ode_solution(x_T, 1.0, 1e-3)
    # each endpoint lies near one of the two modes; sign of x_T decides which (the ODE flow is monotone in 1-D)
    assert ((x0.abs() - 2).abs() < 0.5).float().mean() > 0.97
    assert torch.equal(torch.sign(x0), torch.sign(x_T))


def test_bad_input():
    ns = SCHEDULES["vp_discrete"]()
    net = lambda x, t, c=None: x  # noqa: E731
    with pytest.raises(ValueError, match="model_type='eps'.*allowed values"):
        model_wrapper(net, ns, model_type="eps")
    with pytest.raises(ValueError, match="guidance_type='cfg'.*allowed values"):
        model_wrapper(net, ns, guidance_type="cfg")
    with pytest.raises(ValueError, match="classifier_fn"):
        model_wrapper(net, ns, guidance_type="classifier")
    fn = model_wrapper(net, ns, guidance_type="classifier-free", guidance_scale=2.0)
    with pytest.raises(ValueError, match="condition"):
        fn(torch.ones(2, 2), 0.5)
    with pytest.raises(ValueError, match="weights"):
        AnalyticGMM(torch.zeros(2, 3), 1.0, ns, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="positive definite"):
        AnalyticGMM(torch.zeros(1, 2), torch.tensor([[[1.0, 0], [0, -1.0]]]), ns)
    gmm = AnalyticGMM.random(ns, dim=3, n_components=2)
    with pytest.raises(ValueError, match="closed-form"):
        gmm.ode_solution(torch.zeros(1, 3), 1.0, 0.01, method="closed_form")
    assert math.isfinite(float(gmm.eps(torch.zeros(1, 3), 0.5).sum()))
