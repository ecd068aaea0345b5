"""TimeTuner's ``objective: solver_output`` (ld3/learners/timetuner_output.py): ratios tuned through a solver.

Independent check: a network that reads its time input scaled by c (it sees c * t) is exactly undone by the
ratios r = 1 / c (it then sees t); tuning through iPNDM against the exact teacher must do at least as well as
that known correction (it may do better: tuned network times also absorb discretization error). The run
through ``run_learner`` is checked against its own saved discretization sampled by a fresh solver on the
held-out pairs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _gmm_fixtures import exact_gmm_teacher

from ld3.learners import LD3Data
from ld3.learners.ld3 import evaluate_grid
from ld3.learners.pipeline import run_learner
from ld3.learners.timetuner_output import ratio_model_timesteps, tune_ratios_solver_output
from ld3.models.zoo import load_model
from ld3.solvers import get_solver

C_BAD = 1.25


@pytest.fixture(scope="module")
def gmm():
    return load_model("analytic_gmm", dim=8, n_components=2, seed=1)


def _teacher(model, n: int, seed: int = 0) -> LD3Data:
    return exact_gmm_teacher(model, n, 8, seed)


def _mse(out, tgt):
    return (out - tgt).square().flatten(1).mean(1)


def test_ratio_model_timesteps_clamps_and_keeps_end(gmm):
    ns = gmm.noise_schedule
    ts = torch.tensor([ns.T, 0.5, 0.1, ns.eps], dtype=torch.float64)
    mt = ratio_model_timesteps(ts, torch.tensor([1.5, 0.8, 1e-6], dtype=torch.float64), ns)
    assert mt.tolist() == [ns.T, 0.4, ns.eps, ns.eps]


def test_tuning_beats_the_known_correction_of_a_time_scaled_network(gmm):
    ns = gmm.noise_schedule
    good = gmm.model_fn()

    def bad(x, t, **kw):  # reads its time input scaled by C_BAD
        return good(x, (C_BAD * t).clamp(max=float(ns.T)), **kw)

    data = _teacher(gmm, 48)
    train, valid = LD3Data(data.latents[:32], data.targets[:32]), LD3Data(data.latents[32:], data.targets[32:])
    solver = get_solver("ipndm", ns)
    ts = torch.linspace(float(ns.T), float(ns.eps), 6, dtype=torch.float64)
    # the known correction r = 1 / c feeds the bad network exactly the times the good one gets
    fix = ratio_model_timesteps(ts, torch.full((5,), 1 / C_BAD, dtype=torch.float64), ns)
    good_valid = evaluate_grid(solver, lambda c, u: good, _mse, valid, ts)["loss"]
    assert evaluate_grid(solver, lambda c, u: bad, _mse, valid, ts, fix)["loss"] == pytest.approx(good_valid, rel=1e-9)

    ratios, info = tune_ratios_solver_output(solver, lambda c, u: bad, _mse, train, valid, ts, lr=0.03,
                                             total_iters=60, batch_size=32, valid_every=5, seed=0)
    assert ratios.shape == (5,) and info["best_iter"] > 0 and len(info["history"]) == 60
    assert info["valid_loss_base"] > 1.5 * good_valid  # the miscalibration matters ...
    assert info["valid_loss_tuned"] < good_valid  # ... and tuning does at least as well as the known correction
    assert (ratios[2:] < 0.99).all()  # the informative (low-noise) steps move towards 1 / c < 1
    again = evaluate_grid(solver, lambda c, u: bad, _mse, valid, ts, ratio_model_timesteps(ts, ratios, ns))["loss"]
    assert again == pytest.approx(info["valid_loss_tuned"], rel=1e-9)


def test_never_worse_than_the_base_on_validation(gmm):
    ns = gmm.noise_schedule
    data = _teacher(gmm, 24)
    train, valid = LD3Data(data.latents[:16], data.targets[:16]), LD3Data(data.latents[16:], data.targets[16:])
    ts = torch.linspace(float(ns.T), float(ns.eps), 4, dtype=torch.float64)
    ratios, info = tune_ratios_solver_output(get_solver("uni_pc", ns), lambda c, u: gmm.model_fn(), _mse, train,
                                             valid, ts, lr=1.0, total_iters=6, batch_size=8, valid_every=2)
    assert info["valid_loss_tuned"] <= info["valid_loss_base"]
    if info["best_iter"] == 0:  # lr 1.0 overshoots: the base grid (all ratios 1) comes back
        assert torch.equal(ratios, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="total_iters"):
        tune_ratios_solver_output(get_solver("uni_pc", ns), lambda c, u: gmm.model_fn(), _mse, train, valid, ts,
                                  lr=0.1, total_iters=0, batch_size=8)


def test_run_learner_solver_output(gmm, tmp_path):
    data = _teacher(gmm, 28)
    cfg = {
        "steps": 4, "seed": 0, "device": "cpu", "progress": False,
        "model": {"name": "analytic_gmm", "options": {"dim": 8, "n_components": 2, "seed": 1}, "default_loss": "l2",
                  "guidance_type": "uncond"},
        "solver": {"name": "ipndm", "options": {}},
        "learner": dict(name="timetuner", objective="solver_output", num_train=12, num_valid=8, num_test=8,
                        batch_size=6, total_iters=8, lr=0.01, valid_every=2, seed=1, verbose=False,
                        log_path=str(tmp_path / "runs")),
        "loss": None,
        "logger": {"backend": "disabled"},
    }
    res = run_learner(cfg, data=data, loaded=gmm)
    assert res["objective"] == "solver_output" and res["base_grid"] in res["handcrafted"]
    assert "solver_output" in Path(res["run_dir"]).name
    assert res["valid_loss_tuned"] <= res["valid_loss_base"]
    from ld3.discretizations import load

    d = load(Path(res["run_dir"]) / "discretization.json")
    r = torch.tensor(res["t_ratios"], dtype=torch.float64)
    assert torch.allclose(d.model_timesteps[:-1], r * d.timesteps[:-1], rtol=0, atol=1e-15)
    ns = gmm.noise_schedule
    out = get_solver("ipndm", ns).sample(gmm.model_fn(), data.latents[20:], d.timesteps,
                                         model_timesteps=d.model_timesteps)
    assert res["learned"] == pytest.approx(float(_mse(out, data.targets[20:]).mean()), rel=1e-9)
    with pytest.raises(ValueError, match="objective='final'"):
        run_learner({**cfg, "learner": {**cfg["learner"], "objective": "final"}}, data=data, loaded=gmm)
