"""scripts/ld3_results.py (docs/results.md) on a tiny configuration: analytic mixture, iPNDM, NFE 4.

Checked independently of the script: the configs it runs are main.py's (Hydra compose of configs/), the
held-out pairs are the teacher pairs after the training and validation ones (their exact ODE solutions are
recomputed here), every number in a cell is re-measured from the saved discretization with a fresh solver,
a rerun reads the per-cell cache without running a learner, and misses are marked (short).
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
            "best_handcrafted_value": 0.2, "learned": 0.5, "improvement_vs_best": -1.5}
    notes = script.misses_notes([miss, {**miss, "solver": "ipndm", "improvement_vs_best": 0.1}])
    assert sum(line.startswith("* ") for line in notes) == 1
    assert "base grid logSNR (lowest validation loss), returned its base grid" in notes[-2]
    assert script.misses_notes([{**miss, "improvement_vs_best": 0.1}]) == []
    # the LD3 config is main.py's: configs/learner/ld3.yaml (+ the model's preset) as Hydra composes it
    args = script.parse_args([])
    c = script.compose("digits", "ipndm", 4, "ld3", args)
    assert c["learner"]["name"] == "ld3" and c["learner"]["init"] == "auto" and c["steps"] == 4
    assert c["learner"]["main_train_batch_size"] == 5  # configs/learner_preset/digits.yaml
    c = script.compose("analytic_gmm", "uni_pc", 6, "timetuner", args, script.learner_overrides("timetuner"))
    assert c["learner"]["name"] == "timetuner" and c["learner"]["objective"] == "solver_output"
    assert c["solver"]["name"] == "uni_pc"


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
    lat = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[10:]
    tgt = gmm.metadata["gmm"].ode_solution(lat, ns.T, ns.eps, rtol=1e-10, atol=1e-11)
    solver = get_solver("ipndm", ns)

    def mse(ts, mts=None):
        return float((solver.sample(gmm.model_fn(), lat, ts, model_timesteps=mts) - tgt).square().mean(1).mean())

    for name, cell in cells.items():
        assert cell["n_eval"] == 6 and cell["eval_split"] == "test"
        for kind, v in cell["handcrafted"].items():
            assert v == pytest.approx(mse(get_timesteps(kind, ns, 4, solver=solver)), rel=1e-6), (name, kind)
        d = load(Path(cell["run_dir"]) / "discretization.json")
        assert cell["learned"] == pytest.approx(mse(d.timesteps, d.model_timesteps), rel=1e-6), name
        best = min(cell["handcrafted"].values())
        assert cell["improvement_vs_best"] == pytest.approx(1 - cell["learned"] / best, rel=1e-9)
    md = out.read_text()
    assert "| solver | NFE | time_uniform | time_quadratic | logSNR | edm | best hand-crafted | LD3 | vs best | " \
           "TimeTuner | vs best |" in md
    row = next(line for line in md.splitlines() if line.startswith("| ipndm | 4 |"))
    tt = cells["analytic_gmm-ipndm-N4-timetuner.json"]
    assert f"{100 * tt['improvement_vs_best']:+.1f}%" in row
    assert "learner.objective=solver_output" in md

    # a rerun resumes from the per-cell cache: no learner runs at all
    def boom(*a, **k):
        raise AssertionError("a cached cell was run again")

    monkeypatch.setattr(script, "run_learner", boom)
    out.unlink()
    script.main(argv)
    assert out.read_text().split("## Summary")[1] == md.split("## Summary")[1]
