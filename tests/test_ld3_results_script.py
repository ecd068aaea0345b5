"""scripts/ld3_results.py (docs/results.md) on a tiny configuration: analytic mixture, iPNDM, NFE 4.

Checked independently of the script: the configs it runs are main.py's (Hydra compose of configs/), the
held-out pairs are the teacher pairs after the training and validation ones (their exact ODE solutions are
recomputed here), every number in a row is re-measured from the saved discretization with a fresh solver,
a rerun reads the per-cell cache without running a learner, a new held-out size re-evaluates the cached
grids without training, a changed training setting is refused, and misses are marked (short).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ld3.discretizations import get_timesteps, load
from ld3.models.zoo import load_model
from ld3.solvers import get_solver

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("ld3_results_script", REPO / "scripts" / "ld3_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_overrides_and_short(script):
    assert script.learner_overrides("ld3", ["learner.num_train=8", "timetuner:learner.total_iters=2"]) == [
        "learner.num_train=8"]
    tt = script.learner_overrides("timetuner", ["ld3:learner.max_iters=1", "timetuner:learner.total_iters=2"])
    assert tt[-1] == "learner.total_iters=2" and "++learner.objective=solver_output" in tt
    assert not any("max_iters" in o for o in tt)
    row = {"learner": "ld3", "nfe": 4, "improvement_vs_best": 0.2}
    assert script.short(row)  # LD3 needs >= 30% at NFE 4
    assert not script.short({**row, "learner": "timetuner"})
    assert not script.short({**row, "nfe": 6})
    assert script.short({**row, "nfe": 6, "improvement_vs_best": 0.0})  # a tie is a miss
    hc = {"time_uniform": 0.3, "time_quadratic": 0.2, "logSNR": 0.5, "edm": 0.9}
    miss = {"model": "digits", "solver": "uni_pc", "nfe": 6, "learner": "timetuner", "base_grid": "logSNR",
            "returned": "start", "handcrafted": hc, "best_handcrafted": "time_quadratic",
            "best_handcrafted_value": 0.2, "learned": 0.5, "improvement_vs_best": -1.5, "n_eval": 500,
            "gain_ci90": [-2.0, -1.0], "frac_better": 0.25}
    notes = script.misses_notes([miss, {**miss, "solver": "ipndm", "improvement_vs_best": 0.1}])
    assert sum(line.startswith("* ") for line in notes) == 1
    assert "base grid logSNR (lowest validation loss), returned its base grid" in notes[-2]
    assert "on the 500 held-out pairs" in notes[-2] and "-150.0% [-200.0, -100.0]" in notes[-2]
    assert "lower on 25% of the pairs" in notes[-2]
    assert script.misses_notes([{**miss, "improvement_vs_best": 0.1}]) == []
    # the LD3 config is main.py's: configs/learner/ld3.yaml (+ the model's preset) as Hydra composes it
    args = script.parse_args([])
    c = script.compose("digits", "ipndm", 4, "ld3", args)
    assert c["learner"]["name"] == "ld3" and c["learner"]["init"] == "auto" and c["steps"] == 4
    assert c["learner"]["main_train_batch_size"] == 5  # configs/learner_preset/digits.yaml
    c = script.compose("analytic_gmm", "uni_pc", 6, "timetuner", args, script.learner_overrides("timetuner"))
    assert c["learner"]["name"] == "timetuner" and c["learner"]["objective"] == "solver_output"
    assert c["solver"]["name"] == "uni_pc"
    assert script.num_test_for(args, "digits") == script.DEFAULT_NUM_TEST["digits"]
    assert script.num_test_for(script.parse_args(["--num-test", "7"]), "digits") == 7
    for bad in (["--num-test", "1"], ["--learners", "ld3,gits"]):
        with pytest.raises(SystemExit):
            script.parse_args(bad)


def test_bootstrap_gain(script):
    best = torch.rand(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    lo, hi, se = script.bootstrap_gain(0.5 * best, best)  # the same ratio in every resample
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5) and se == pytest.approx(0.0, abs=1e-12)
    lo, hi, se = script.bootstrap_gain(best, best)
    assert lo == hi == 0.0
    # one sample carries the difference: the interval must be wide and contain 0 and the point gain
    learned = best.clone()
    learned[0] = best[0] + best.sum()  # doubles the mean of learned
    lo, hi, se = script.bootstrap_gain(learned, best)
    assert lo < -0.5 and hi == pytest.approx(0.0, abs=1e-12) and se > 0.1


def test_tiny_table(script, tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "results.md"
    argv = ["--models", "analytic_gmm", "--solvers", "ipndm", "--nfes", "4", "--num-test", "6", "--threads", "1",
            "--runs-dir", str(runs), "--out", str(out), "--no-fid-note",
            "--override", "learner.num_train=6", "--override", "learner.num_valid=4",
            "--override", "ld3:learner.max_iters=2", "--override", "timetuner:learner.total_iters=3",
            "--override", "timetuner:learner.batch_size=3"]
    script.main(argv)
    import logging

    # two runs in one process: one console handler (log lines are not repeated once per earlier run)
    assert sum(bool(getattr(h, "_ld3", False)) for h in logging.getLogger("ld3.learner").handlers) == 1
    cells = {p.name: json.loads(p.read_text()) for p in (runs / "cells").glob("*.json")}
    assert set(cells) == {"analytic_gmm-ipndm-N4-ld3.json", "analytic_gmm-ipndm-N4-timetuner.json"}

    # the held-out pairs: teacher seeds 10..15 (after 6 training and 4 validation pairs), exact solutions
    gmm = load_model("analytic_gmm", dim=16, n_components=4, seed=0)
    ns = gmm.noise_schedule
    lat = torch.randn(18, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[10:]
    tgt = gmm.metadata["gmm"].ode_solution(lat, ns.T, ns.eps, rtol=1e-10, atol=1e-11)
    solver = get_solver("ipndm", ns)

    def mse(ts, mts=None, n=6):
        x = solver.sample(gmm.model_fn(), lat[:n], ts, model_timesteps=mts)
        return float((x - tgt[:n]).square().mean(1).mean())

    for cell in cells.values():  # the training cache holds no held-out numbers
        assert "learned" not in cell and "handcrafted" not in cell
    rows = {r["learner"]: r for r in json.loads((runs / "ld3_results.json").read_text())}

    def check_rows(rows, n):
        for name, row in rows.items():
            assert row["n_eval"] == n and row["eval_split"] == "test" and row["test_start"] == 10
            for kind, v in row["handcrafted"].items():
                assert v == pytest.approx(mse(get_timesteps(kind, ns, 4, solver=solver), n=n), rel=1e-6), (name, kind)
            d = load(Path(row["run_dir"]) / "discretization.json")
            assert row["learned"] == pytest.approx(mse(d.timesteps, d.model_timesteps, n=n), rel=1e-6), name
            best = min(row["handcrafted"].values())
            assert row["improvement_vs_best"] == pytest.approx(1 - row["learned"] / best, rel=1e-9)
            lo, hi = row["gain_ci90"]
            assert lo <= hi and row["gain_se"] >= 0 and 0 <= row["frac_better"] <= 1

    check_rows(rows, 6)
    md = out.read_text()
    assert "| solver | NFE | time_uniform | time_quadratic | logSNR | edm | best hand-crafted | LD3 | vs best " \
           "[90% CI] | TimeTuner | vs best [90% CI] |" in md
    row = next(line for line in md.splitlines() if line.startswith("| ipndm | 4 |"))
    tt = rows["timetuner"]
    assert f"{100 * tt['improvement_vs_best']:+.1f}% [{100 * tt['gain_ci90'][0]:+.1f}, " in row
    assert "learner.objective=solver_output" in md

    # a rerun resumes from the per-cell cache: no learner runs at all
    def boom(*a, **k):
        raise AssertionError("a cached cell was run again")

    monkeypatch.setattr(script, "run_learner", boom)
    out.unlink()
    script.main(argv)
    assert out.read_text().split("## Summary")[1] == md.split("## Summary")[1]

    # a larger held-out set: the cached grids are re-evaluated on pairs 10..17, nothing is trained
    i = argv.index("--num-test")
    script.main(argv[:i + 1] + ["8"] + argv[i + 2:])
    check_rows({r["learner"]: r for r in json.loads((runs / "ld3_results.json").read_text())}, 8)
    assert "8 held-out teacher pairs" in out.read_text()

    # a changed training setting is not silently served from the cache
    with pytest.raises(ValueError, match="trained with a different configuration"):
        script.main(argv + ["--override", "ld3:learner.max_iters=3"])
