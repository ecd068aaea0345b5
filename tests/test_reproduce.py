"""scripts/reproduce.py: the plan of a table, idempotent execution, GPU-hour estimate (no real runs)."""

from pathlib import Path

import pytest

from ld3.reproduce import build_plan, experiment_cells, run_plan


def test_unknown_table_lists_the_known_ones():
    with pytest.raises(ValueError, match="no experiment config for table 'nope'.*ld3_cifar10"):
        experiment_cells("nope")


def test_plan_runs_only_missing_steps(tmp_path):
    plan = build_plan("gits_cifar10", tmp_path, python="py", num_samples=100, check_files=False)
    cells = experiment_cells("gits_cifar10")
    assert len(cells) == 4
    fid_steps = [s for s in plan.steps if s.kind == "fid"]
    assert len(fid_steps) == 4 * 4  # 4 NFEs x 4 grids (no learned schedule in the GITS table)
    assert all("num_samples=100" in s.argv for s in fid_steps)
    assert plan.steps[-1].argv[:4] == ["py", "scripts/report.py", "--paper", "gits_cifar10"]
    # 16 cells x 100 samples x NFE x 2e-4 s: the estimate follows the stated per-family cost
    expected = sum(100 * n * 2.0e-4 for n in (5, 6, 8, 10)) * 4 / 3600
    assert plan.gpu_hours == pytest.approx(expected)

    calls = []

    def runner(argv):
        calls.append(argv)
        out = next((a.split("=", 1)[1] for a in argv if a.startswith("out_dir=")), None)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "fid.json").write_text("{}")
        return 0

    log = []
    assert run_plan(plan, runner=runner, echo=log.append) == 0
    assert len(calls) == 17 and "expected GPU hours" in log[0]
    calls.clear()
    assert run_plan(plan, runner=runner, echo=log.append) == 0
    assert len(calls) == 1 and calls[0][1] == "scripts/report.py"  # only the report runs again


def test_learned_schedule_is_found_and_scored(tmp_path):
    plan = build_plan("ld3_afhqv2", tmp_path, python="py", num_samples=10, check_files=False)
    learn = [s for s in plan.steps if s.kind == "learn"]
    assert learn and all("learner.log_path=" in " ".join(s.argv) for s in learn)
    first = learn[0]

    def runner(argv):
        if argv[1] == "main.py":
            log_path = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("learner.log_path=")))
            (log_path / "run-name").mkdir(parents=True, exist_ok=True)
            (log_path / "run-name" / "discretization.json").write_text('{"format": "ld3.discretization/1"}')
            return 0
        return 1  # stop at the first FID step

    assert run_plan(plan, runner=runner, echo=lambda s: None) == 1
    assert first.done and first.done_file.read_text().startswith('{"format"')
    scored = [s for s in plan.steps if s.kind == "fid" and f"discretization.options.path={first.done_file}" in s.argv]
    assert len(scored) == 1
