"""LD3's start grid (``learner.init``) and the guarantee that a run never returns a grid that is worse on
validation than its start. Validation losses are recomputed here from the solver and the exact
closed-form teacher of a single Gaussian (mean squared error per coordinate)."""

from __future__ import annotations

import pytest
import torch
from _gmm_fixtures import exact_gmm_teacher

from ld3.discretizations import get_timesteps
from ld3.learners import LD3Data
from ld3.learners.ld3 import LD3Config, LD3Trainer, prior_scale
from ld3.learners.pipeline import run_ld3
from ld3.models.zoo import load_model
from ld3.solvers import get_solver


@pytest.fixture(scope="module")
def gmm():
    return load_model("analytic_gmm", dim=16, n_components=1, seed=0)


def _data(model, n=24):
    return exact_gmm_teacher(model, n, 16)


def _cfg(tmp_path, **learner):
    lcfg = dict(num_train=8, num_valid=8, num_test=8, main_train_batch_size=4, main_valid_batch_size=8,
                training_rounds_v1=1, training_rounds_v2=1, log_path=str(tmp_path / "runs"))
    lcfg.update(learner)
    return {"steps": 4, "seed": 0, "device": "cpu", "progress": False,
            "model": {"name": "analytic_gmm", "options": {"dim": 16, "n_components": 1}, "default_loss": "l2"},
            "solver": {"name": "ddim", "options": {}}, "learner": lcfg, "loss": None,
            "logger": {"backend": "disabled"}}


def _valid_mse(model, data, t1, t2=None):
    ns = model.noise_schedule
    v = LD3Data(data.latents[8:16], data.targets[8:16])
    t1 = torch.as_tensor(t1, dtype=torch.float64)
    t2 = None if t2 is None else torch.as_tensor(t2, dtype=torch.float64)
    out = get_solver("ddim", ns).sample(model.model_fn(), v.latents * prior_scale(ns), t1, model_timesteps=t2)
    return float(((out - v.targets) ** 2).mean(1).mean())


def test_init_auto_takes_the_better_start(gmm, tmp_path):
    data = _data(gmm)
    res = run_ld3(_cfg(tmp_path, max_iters=1), data=data, loaded=gmm)
    cands = res["start_candidates"]
    assert set(cands) == {"reference", "time_uniform", "time_quadratic", "logSNR", "edm"}
    ns = gmm.noise_schedule
    for k in ("time_uniform", "time_quadratic", "logSNR", "edm"):
        assert cands[k] == pytest.approx(_valid_mse(gmm, data, get_timesteps(k, ns, 4)), rel=1e-9), k
    assert res["start"] == min(cands, key=cands.get)
    assert res["start_valid_loss"] == pytest.approx(min(cands.values()), rel=1e-6)  # matched grid, float32 params
    assert res["learned_valid_loss"] <= res["start_valid_loss"]
    # init=reference: the reference start (time mode: time-uniform), no candidates
    ref = run_ld3(_cfg(tmp_path / "r", init="reference", max_iters=1), data=data, loaded=gmm)
    assert ref["start"] == "reference" and ref["start_candidates"] == {}
    lin = torch.linspace(float(ns.T), float(ns.eps), 5, dtype=torch.float64)
    assert ref["start_valid_loss"] == pytest.approx(_valid_mse(gmm, data, lin), rel=1e-9)
    with pytest.raises(ValueError, match="init='best'.*allowed"):
        LD3Config(init="best")


def test_never_returns_a_grid_worse_than_its_start(gmm, tmp_path, monkeypatch):
    data = _data(gmm)
    bad_t1 = torch.tensor([1.0, 0.999, 0.998, 0.997, 1e-3], dtype=torch.float64)  # far worse than any start

    def bad_best(self):
        return bad_t1.clone(), bad_t1.clone()

    monkeypatch.setattr(LD3Trainer, "best_timesteps", bad_best)
    res = run_ld3(_cfg(tmp_path, max_iters=1), data=data, loaded=gmm)
    assert res["returned"] == "start"
    assert res["learned_valid_loss"] == pytest.approx(_valid_mse(gmm, data, bad_t1, bad_t1), rel=1e-9)
    assert res["learned_valid_loss"] > res["start_valid_loss"]
    assert _valid_mse(gmm, data, res["timesteps"], res["model_timesteps"]) == pytest.approx(
        res["start_valid_loss"], rel=1e-9)
