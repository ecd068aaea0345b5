"""``learner=timetuner`` through the LD3 run pipeline and main.py (ld3/learners/timetuner_run.py).

The learned grid is checked against what the outputs claim independently of the pipeline: the saved
discretization is loaded from disk and sampled with a fresh solver against the exact (closed-form)
teacher of a single Gaussian; the ratios are compared with a direct call of the TimeTuner API on the
same loader and noise stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _gmm_fixtures import exact_gmm_teacher

from ld3.learners import LD3Data
from ld3.learners.ld3 import prior_scale
from ld3.learners.pipeline import LEARNERS, run_ld3, run_learner
from ld3.learners.timetuner import TimeTuner, default_timesteps, dict_loader
from ld3.models.zoo import load_model
from ld3.solvers import get_solver

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gmm():
    return load_model("analytic_gmm", dim=16, n_components=1, seed=0)


def _exact_teacher(model, n: int, seed: int = 0) -> LD3Data:
    return exact_gmm_teacher(model, n, 16, seed)


def _cfg(tmp_path, solver="ipndm", **learner):
    lcfg = dict(name="timetuner", num_train=8, num_valid=4, num_test=8, batch_size=4, total_iters=6, lr=2e-2,
                tune_type="sequential", seed=3, verbose=False, discretization=None, log_path=str(tmp_path / "runs"))
    lcfg.update(learner)
    return {
        "steps": 3, "seed": 0, "device": "cpu", "progress": False,
        "model": {"name": "analytic_gmm", "options": {"dim": 16, "n_components": 1}, "default_loss": "l2",
                  "guidance_type": "uncond"},
        "solver": {"name": solver, "options": {}},
        "learner": lcfg,
        "loss": None,
        "logger": {"backend": "local", "results_path": str(tmp_path / "results.jsonl")},
    }


@pytest.mark.parametrize("lr, expected", [(2e-2, "learned"), (2e-1, "start")])  # lr 0.2 overshoots
def test_run_learner_timetuner_outputs(gmm, tmp_path, lr, expected):
    data = _exact_teacher(gmm, 20)
    cfg = _cfg(tmp_path, lr=lr)
    res = run_learner(cfg, data=data, loaded=gmm)
    run_dir = Path(res["run_dir"])
    for f in ("config.yaml", "fingerprint.json", "log.txt", "discretization.json", "history.json",
              "training_curve.png", "schedule.png", "result.json"):
        assert (run_dir / f).is_file(), f
    assert res["task"] == "timetuner" and res["solver"] == "ipndm" and res["nfe"] == 3
    assert res["eval_split"] == "test" and res["n_eval"] == 8
    assert set(res["handcrafted"]) == {"time_uniform", "time_quadratic", "logSNR", "edm"}

    # the ratios are those of the TimeTuner API on the same loader and noise stream
    ns = gmm.noise_schedule
    grid = default_timesteps(ns, 3)
    tt = TimeTuner(gmm.model_fn(), ns, device="cpu")
    ratios = tt.optimize_timesteps(dict_loader(data.targets[:8], None, batch_size=4, seed=3), num_steps=3,
                                   lr=lr, total_iters=6, verbose=False, timesteps=grid,
                                   noise_generator=torch.Generator().manual_seed(3), eta=0.0)
    tuned = torch.tensor(res.get("tuned_t_ratios", res["t_ratios"]), dtype=torch.float64)
    assert torch.allclose(tuned, ratios, rtol=0, atol=1e-12)
    assert tuned[-1] == 1.0 and abs(tuned[0] - 1.0) > 1e-4  # the first ratio moved
    # never worse on validation than the base grid (all ratios 1): otherwise the base grid is returned
    worse = res["valid_loss_tuned"] > res["valid_loss_base"]
    assert res["returned"] == ("start" if worse else "learned") == expected
    if worse:
        ratios = torch.ones_like(ratios)

    # the saved discretization drives a fresh solver; its distance to the exact teacher is the reported one
    from ld3.discretizations import load

    d = load(run_dir / "discretization.json")
    assert d.source == "learned:timetuner" and d.solver == "ipndm" and d.nfe == 3
    assert torch.allclose(d.timesteps, grid, atol=1e-15)
    assert torch.allclose(d.model_timesteps, torch.cat([ratios * grid[:-1], grid[-1:]]), rtol=0, atol=1e-15)
    test = LD3Data(data.latents[12:20], data.targets[12:20])
    out = get_solver("ipndm", ns).sample(gmm.model_fn(), test.latents * prior_scale(ns), d.timesteps,
                                         model_timesteps=d.model_timesteps)
    mse = ((out - test.targets) ** 2).mean(1).mean()
    assert res["learned"] == pytest.approx(float(mse), rel=1e-9)

    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["task"] == "timetuner" and rows[0]["learned"] == res["learned"]
    again = run_learner(cfg, data=data, loaded=gmm)
    assert again["skipped"] and again["learned"] == res["learned"]


def test_learner_registry_and_errors(gmm, tmp_path):
    assert set(LEARNERS) >= {"ld3", "timetuner"}
    data = _exact_teacher(gmm, 20)
    with pytest.raises(ValueError, match="unknown learner 'tt'.*available"):
        run_learner(_cfg(tmp_path, name="tt"), data=data, loaded=gmm)
    with pytest.raises(ValueError, match="not LD3"):
        run_ld3(_cfg(tmp_path), data=data, loaded=gmm)
    with pytest.raises(ValueError, match="tune_type='both'"):
        run_learner(_cfg(tmp_path, tune_type="both"), data=data, loaded=gmm)
    with pytest.raises(ValueError, match="unknown TimeTuner learner options \\['lrr'\\]"):
        run_learner(_cfg(tmp_path, lrr=1.0), data=data, loaded=gmm)
    assert not (tmp_path / "runs").exists()


def test_main_timetuner_multirun(tmp_path):
    args = [
        sys.executable, "main.py", "-m", "learner=timetuner", "model=analytic_gmm", "solver=ddim,ipndm", "steps=3",
        "device=cpu", "+progress=false", "learner.num_train=6", "learner.num_valid=4", "learner.num_test=6",
        "learner.total_iters=3", "learner.batch_size=3", "learner.verbose=false", "teacher.steps=8",
        f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.results={tmp_path / 'results.jsonl'}", f"hydra.sweep.dir={tmp_path / 'hydra'}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(args, cwd=str(REPO), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(results) == 2
    solvers = set()
    for p in results:
        r = json.loads(p.read_text())
        assert r["task"] == "timetuner" and r["nfe"] == 3 and r["model"] == "analytic_gmm"
        assert (p.parent / "discretization.json").is_file() and (p.parent / "schedule.png").is_file()
        # default base grid: the best hand-crafted one on validation; its t1 alone is that grid
        assert r["base_grid"] in r["handcrafted"]
        assert r["learned_t1_only"] == pytest.approx(r["handcrafted"][r["base_grid"]], rel=1e-12)
        solvers.add(r["solver"])
    assert solvers == {"ddim", "ipndm"}
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["solver"] for r in rows) == ["ddim", "ipndm"]


@pytest.mark.parametrize("solver", ["uni_pc", "dpm_solver++"])
def test_solver_output_convert_at_auto_keeps_the_better_rule(gmm, tmp_path, solver):
    """Data-prediction solvers: ``convert_at: auto`` tunes with x0 taken at t_i (grid_time) and at r_i t_i
    (network_time), keeps the lower validation loss, records the rule, and the saved grid reproduces the reported
    held-out distance only with that rule."""
    data = _exact_teacher(gmm, 20)
    res = run_learner(_cfg(tmp_path, solver=solver, objective="solver_output", total_iters=8, lr=5e-2,
                           valid_every=2), data=data, loaded=gmm)
    by_rule = res["valid_loss_by_convert_at"]
    assert set(by_rule) == {"grid_time", "network_time"}
    assert res["convert_at"] == min(by_rule, key=by_rule.get)
    assert res["valid_loss_tuned"] == by_rule[res["convert_at"]]
    from ld3.discretizations import load

    d = load(Path(res["run_dir"]) / "discretization.json")
    assert d.config["solver_options"] == {"convert_at": res["convert_at"]}
    assert res["returned"] == "learned" and not torch.equal(d.model_timesteps, d.timesteps)
    ns = gmm.noise_schedule
    test = LD3Data(data.latents[12:20], data.targets[12:20])
    mse = {}
    for rule in ("grid_time", "network_time"):
        out = get_solver(solver, ns, convert_at=rule).sample(gmm.model_fn(), test.latents * prior_scale(ns),
                                                             d.timesteps, model_timesteps=d.model_timesteps)
        mse[rule] = float(((out - test.targets) ** 2).mean(1).mean())
    assert res["learned"] == pytest.approx(mse[res["convert_at"]], rel=1e-9)
    assert mse["grid_time"] != pytest.approx(mse["network_time"], rel=1e-6)

    # one rule on request; a bad value is named
    fixed = run_learner(_cfg(tmp_path / "fixed", solver=solver, objective="solver_output", total_iters=4,
                             convert_at="grid_time"), data=data, loaded=gmm)
    assert fixed["convert_at"] == "grid_time" and "valid_loss_by_convert_at" not in fixed
    with pytest.raises(ValueError, match="learner.convert_at='t2'.*allowed"):
        run_learner(_cfg(tmp_path / "bad", solver=solver, convert_at="t2"), data=data, loaded=gmm)
    ipndm = run_learner(_cfg(tmp_path / "ipndm", objective="solver_output", total_iters=2), data=data, loaded=gmm)
    assert "convert_at" not in ipndm  # a noise-prediction solver has no conversion to choose


def test_learned_file_refuses_another_x0_conversion_rule(gmm, tmp_path):
    """A grid whose network times were learned with one convert_at rule is refused by a solver using the other."""
    from ld3.discretizations import get_discretization, save

    ns = gmm.noise_schedule
    t1 = default_timesteps(ns, 3)
    t2 = torch.cat([t1[:-1] * 0.95, t1[-1:]])
    path = tmp_path / "d.json"
    save(path, t1, model="analytic_gmm", solver="uni_pc", nfe=3, model_timesteps=t2, source="learned:timetuner",
         config={"solver_options": {"convert_at": "grid_time"}})
    ok = get_discretization("learned", ns, 3, solver=get_solver("uni_pc", ns, convert_at="grid_time"), path=path)
    assert torch.allclose(ok.model_timesteps, t2)
    with pytest.raises(ValueError, match="convert_at='grid_time'.*solver.options.convert_at=grid_time"):
        get_discretization("learned", ns, 3, solver=get_solver("uni_pc", ns), path=path)


def test_timetuner_api_file_records_grid_time(gmm, tmp_path):
    """TimeTuner's own files (the DDIM API) say x0 is taken at the grid time, TimeTuner's definition."""
    from ld3.discretizations import get_discretization, load

    ns = gmm.noise_schedule
    path = TimeTuner(gmm.model_fn(), ns).save_discretization(tmp_path / "tt.json", [0.97, 0.99, 1.0], num_steps=3,
                                                              solver="uni_pc")
    assert load(path).config["solver_options"] == {"convert_at": "grid_time"}
    get_discretization("learned", ns, 3, solver=get_solver("uni_pc", ns, convert_at="grid_time"), path=path)
    with pytest.raises(ValueError, match="convert_at='grid_time'"):
        get_discretization("learned", ns, 3, solver=get_solver("uni_pc", ns), path=path)
