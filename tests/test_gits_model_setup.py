"""One GITS setup for a loaded model (ld3.discretizations.gits.gits_model_fn / with_model_options), used by
the learner's match_prior, gen_data and eval_fid; match_prior on the embedded digits model with
classifier-free guidance (it crashed: the prior's model function had guidance but no condition).

The reference for the guided predictor is written here on the raw network: eps_u + w (eps_c - eps_u)
with the network time (t - 1/N) * 1000 of a discrete VP model, labels i mod 10 and the null class 10.
"""

from __future__ import annotations

import pytest
import torch

from ld3.discretizations import get_timesteps
from ld3.discretizations.gits import gits_model_fn, with_model_options
from ld3.learners import LD3Data
from ld3.learners.pipeline import prior_grid, run_ld3
from ld3.models.zoo import load_model
from ld3.solvers import get_solver

GITS_OPTS = {"grid_size": 9, "num_samples": 6, "progress": False}


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


def _manual_cfg(net, ns, w):
    def fn(x, t):
        t_in = (t - 1.0 / 1000) * 1000
        y = torch.arange(x.shape[0]) % 10
        eps_c = net(x, t_in, y)
        eps_u = net(x, t_in, torch.full_like(y, 10))
        return eps_u + w * (eps_c - eps_u)

    return fn


def test_gits_model_fn_is_the_guided_sampler_on_balanced_labels(digits):
    ns = digits.noise_schedule
    x = torch.randn(12, *digits.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((12,), 0.5)
    with torch.no_grad():
        ours = gits_model_fn(digits, "classifier-free", 2.0)(x, t)
        ref = _manual_cfg(digits.network, ns, 2.0)(x, t)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # unguided: the conditional network on the same labels
        plain = gits_model_fn(digits, "uncond")(x, t)
        ref_c = digits.network(x, (t - 1e-3) * 1000, torch.arange(12) % 10)
    assert torch.allclose(plain, ref_c, rtol=1e-5, atol=1e-5)
    # options: filled for gits only, never over a given cost / model_fn
    opts = with_model_options("gits", {"grid_size": 9}, digits, "cpu")
    assert callable(opts["model_fn"]) and opts["shape"] == tuple(digits.shape) and opts["grid_size"] == 9
    assert with_model_options("logSNR", {}, digits) == {}
    assert with_model_options("gits", {"model_fn": len}, digits)["model_fn"] is len


def test_match_prior_on_digits_with_cfg(digits, tmp_path):
    solver = get_solver("uni_pc", digits.noise_schedule)
    mcfg = {"name": "digits", "guidance_type": "classifier-free", "guidance_scale": 2.0}
    with torch.no_grad():
        grid = prior_grid({"kind": "gits", "options": GITS_OPTS}, digits, solver, 4, mcfg, "cpu")
        ref = get_timesteps("gits", digits.noise_schedule, 4, solver=solver, shape=tuple(digits.shape),
                            model_fn=_manual_cfg(digits.network, digits.noise_schedule, 2.0), **GITS_OPTS)
    assert torch.allclose(grid, ref.double(), rtol=0, atol=1e-12)

    # the whole run with match_prior (teacher pairs given directly; conditions as gen_data stores them)
    n = 6
    lat = torch.randn(n, *digits.shape, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(n) % 10
    data = LD3Data(lat, torch.zeros(n, *digits.shape), labels, torch.full((n,), 10))
    cfg = {
        "steps": 4, "seed": 0, "device": "cpu", "progress": False,
        "model": {**mcfg, "options": {}, "default_loss": "l2"},
        "solver": {"name": "uni_pc", "options": {}},
        "learner": {"num_train": 2, "num_valid": 2, "num_test": 2, "main_train_batch_size": 2,
                    "training_rounds_v1": 1, "training_rounds_v2": 0, "max_iters": 1, "match_prior": True,
                    "prior": {"kind": "gits", "options": GITS_OPTS, "timesteps": None},
                    "log_path": str(tmp_path / "runs")},
        "loss": None,
        "logger": {"backend": "disabled"},
    }
    res = run_ld3(cfg, data=data, loaded=digits)
    assert res["run"].endswith("-match_prior") and len(res["timesteps"]) == 5
