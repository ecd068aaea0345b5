"""DMN's ``variant='ld3'``: the LD3 repository's DMN baseline (vinhsuhi/LD3 samplers/general_solver.py, StepOptim:
truncNum 0 for more than 7 steps, node error sigma/alpha for pixel models), checked against a direct transcription
of that objective's hard-coded order-3 step weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ld3.discretizations import get_discretization
from ld3.discretizations.dmn import ld3_repo_terms, objective
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP, ddpm_linear_betas


def _ld3_repo_objective(lam: np.ndarray, pixel: bool) -> float:
    """F(lambda) as StepOptim.sel_lambdas_lof_obj writes it (order 1, 2, 3, ..., 3, 2, 1 with closed-form J)."""
    n = len(lam) - 1
    hv = np.diff(lam)
    elv = np.exp(lam)
    alpha = 1 / np.sqrt(1 + np.exp(-2 * lam))
    sigma = 1 / np.sqrt(1 + np.exp(2 * lam))
    err = sigma ** (1 if pixel else 2) / alpha
    trunc = 3 if n <= 7 else 0

    def h0(h):
        return math.expm1(h)

    def h1(h):
        return math.exp(h) * h - h0(h)

    def h2(h):
        return math.exp(h) * h * h - 2 * h1(h)

    res, c = 0.0, np.zeros(n + 1)
    for s in range(n):
        if s in (0, n - 1):
            res += abs((elv[s + 1] - elv[s]) * err[s])
            continue
        if s in (1, n - 2):
            m = s - 1
            js = [-elv[m + 1] * h1(hv[m + 1]) / hv[m], elv[m + 1] * (h1(hv[m + 1]) + hv[m] * h0(hv[m + 1])) / hv[m]]
        else:
            m = s - 2
            a, b, hn = hv[m], hv[m + 1], hv[m + 2]
            js = [
                elv[m + 2] * (h2(hn) + b * h1(hn)) / (a * (a + b)),
                -elv[m + 2] * (h2(hn) + (a + b) * h1(hn)) / (a * b),
                elv[m + 2] * (h2(hn) + (2 * b + a) * h1(hn) + b * (a + b) * h0(hn)) / (b * (a + b)),
            ]
        terms = [err[m + j] * jj for j, jj in enumerate(js)]
        if s >= trunc:
            c[m : m + len(terms)] += terms
        else:
            res += math.sqrt(sum(t * t for t in terms))
    return res + np.abs(c).sum()


@pytest.mark.parametrize("n_steps", [5, 7, 8, 10])
@pytest.mark.parametrize("pixel", [True, False])
def test_objective_matches_the_ld3_repository_formula(n_steps, pixel):
    rng = np.random.default_rng(n_steps)
    lam = np.sort(rng.uniform(-5.0, 6.0, n_steps + 1))
    got = float(objective(torch.tensor(lam), 3, **ld3_repo_terms(n_steps, pixel)))
    assert got == pytest.approx(_ld3_repo_objective(lam, pixel), rel=1e-9)
    if n_steps > 7 or pixel:  # the variant really changes the objective here
        assert abs(float(objective(torch.tensor(lam), 3)) / got - 1) > 1e-6


def test_ld3_variant_on_a_pixel_edm_model_at_nfe_10():
    ns = NoiseScheduleEDM()
    d = get_discretization("dmn", ns, 10, variant="ld3")
    cfg = d.config
    assert (cfg["variant"], cfg["pixel"], cfg["order"], cfg["init"]) == ("ld3", True, 3, "logSNR")
    assert (cfg["independent_steps"], cfg["sigma_power"]) == (0, 1)
    lam = ns.marginal_lambda(d.timesteps)
    assert torch.all(lam[1:] > lam[:-1])
    f = float(objective(lam, 3, independent_steps=0, sigma_power=1))
    assert f == pytest.approx(d.metrics["objective"], rel=1e-6) and f < d.metrics["objective_init"]
    xue = get_discretization("dmn", ns, 10, order=3)
    assert (ns.marginal_lambda(xue.timesteps) - lam).abs().max() > 1e-2


def test_ld3_variant_on_a_latent_vp_model_at_nfe_5_is_xue_from_time_uniform():
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    d = get_discretization("dmn", ns, 5, variant="ld3")
    assert (d.config["pixel"], d.config["init"], d.config["independent_steps"], d.config["sigma_power"]) == (
        False,
        "time_uniform",
        3,
        2,
    )
    ref = get_discretization("dmn", ns, 5, order=3, init="time_uniform")
    assert torch.equal(d.timesteps, ref.timesteps)
    forced = get_discretization("dmn", ns, 5, variant="ld3", pixel=True)
    assert forced.config["sigma_power"] == 1 and forced.config["init"] == "logSNR"


def test_variant_options_are_checked():
    ns = NoiseScheduleEDM()
    with pytest.raises(ValueError, match="variant='ld3_repo'"):
        get_discretization("dmn", ns, 5, variant="ld3_repo")
    with pytest.raises(ValueError, match="only read by variant='ld3'"):
        get_discretization("dmn", ns, 5, pixel=True)
    with pytest.raises(ValueError, match="pixel must be"):
        get_discretization("dmn", ns, 5, variant="ld3", pixel="yes")
