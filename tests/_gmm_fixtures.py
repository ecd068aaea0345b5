"""Exact teacher pairs of the analytic Gaussian mixture, shared by the learner tests.

The teacher is the mixture's closed-form probability-flow ODE solution (``GMM.ode_solution``, checked
against scipy's solve_ivp in tests/test_wrapper_analytic.py), started from x_T = prior_scale * latent.
"""
from __future__ import annotations

import torch

from ld3.learners import LD3Data
from ld3.learners.ld3 import prior_scale


def exact_gmm_teacher(model, n: int, dim: int, seed: int = 0) -> LD3Data:
    """``n`` (latent, exact ODE output) pairs of ``model`` (an ``analytic_gmm`` zoo model of dimension ``dim``)."""
    ns = model.noise_schedule
    lat = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return LD3Data(lat, model.metadata["gmm"].ode_solution(lat * prior_scale(ns), ns.T, ns.eps))
