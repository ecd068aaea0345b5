"""Bad input on the command line: one line on stderr naming the mistake, a non-zero exit, nothing written.

The table holds mistakes a new user makes with the three entry points. Config mistakes are caught
before Hydra runs (exit 2); they are run in-process through the real entry point (``main()`` of each
script with ``sys.argv`` set), with the work functions replaced by ones that fail the test if reached.
Runtime mistakes (missing weights) run as real processes (exit 1).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (script, overrides, words the one-line message must contain)
CONFIG_MISTAKES = [
    ("main.py", ["steps=0"], ["steps=0", "integer >= 1"]),
    ("main.py", ["steps=-3"], ["steps=-3", "integer >= 1"]),
    ("main.py", ["steps=abc"], ["steps='abc'", "integer"]),
    ("main.py", ["stepz=4"], ["'stepz'", "did you mean 'steps'"]),
    ("main.py", ["guidance_scale=-1"], ["'guidance_scale'", "did you mean 'model.guidance_scale'"]),
    ("main.py", ["model.guidance_scale=-1"], ["model.guidance_scale=-1", ">= 0"]),
    ("main.py", ["model.guidance_type=cfg"], ["model.guidance_type='cfg'", "classifier-free"]),
    ("main.py", ["solver=unipc"], ["solver='unipc'", "did you mean 'uni_pc'"]),
    ("main.py", ["discretization=logsnr"], ["discretization='logsnr'", "did you mean 'logSNR'"]),
    ("main.py", ["solver.options.order=7"], ["order=7", "1..3"]),
    ("main.py", ["solver.options.ordr=2"], ["'solver.options.ordr'", "did you mean 'solver.options.order'"]),
    ("main.py", ["learner.num_train=0"], ["num_train=0", ">= 1"]),
    ("main.py", ["learner.lr_time_1=abc"], ["learner.lr_time_1='abc'", "number"]),
    ("main.py", ["learner.win_rate=0.9"], ["win_rate=0.9", "[0, 0.5]"]),
    ("main.py", ["learner.num_train=2.5"], ["learner.num_train=2.5", "expected an integer"]),  # schema types
    ("main.py", ["learner=timetuner", "learner.lr=fast"], ["learner.lr='fast'", "expected a number"]),
    ("main.py", ["solver.options.corrector=maybe"], ["solver.options.corrector='maybe'", "true or false"]),
    ("main.py", ["loss=l3"], ["loss='l3'", "did you mean"]),
    ("main.py", ["teacher.steps=0"], ["teacher.steps=0", ">= 1"]),
    ("main.py", ["device=gpu"], ["device='gpu'", "cuda"]),
    ("main.py", ["threads=0"], ["threads=0", "auto"]),
    ("main.py", ["seed=-1"], ["seed=-1", ">= 0"]),
    ("main.py", ["teacher.solver.name=uni_pcc"], ["teacher.solver.name='uni_pcc'", "did you mean 'uni_pc'"]),
    ("main.py", ["teacher.solver.options.order=3"], ["(to add a key: +teacher.solver.options.order=VALUE)"]),
    ("main.py", ["+teacher.solver.options.order=5"], ["teacher.solver.name=uni_pc", "order=5"]),
    ("main.py", ["steps=4,6"], ["steps=4,6", "--multirun"]),
    ("main.py", ["solver=uni_pc,ipndm"], ["solver=uni_pc,ipndm", "sweep; add -m"]),
    ("gen_data.py", ["total_samples=0"], ["total_samples", "positive integer"]),
    ("gen_data.py", ["seeds=abc"], ["seeds='abc'"]),
    ("gen_data.py", ["dtype=float8"], ["dtype='float8'", "float32"]),
    ("gen_data.py", ["img_space=rgb"], ["img_space='rgb'", "pixel"]),
    ("gen_data.py", ["sampling_batch_size=0"], ["sampling_batch_size", "positive integer"]),
    ("gen_data.py", ["solver.options.eta=0.5"], ["'solver.options.eta'", "solver.options has order, variant"]),
    ("gen_data.py", ["labels=ten"], ["labels='ten'"]),
    ("gen_data.py", ["learner=ld3"], ["'learner'", "not an option of gen_data.py"]),
    ("eval_fid.py", ["num_samples=1"], ["num_samples=1", ">= 2"]),
    ("eval_fid.py", ["batch_size=0"], ["batch_size=0", ">= 1"]),
    ("eval_fid.py", ["discretization=learned"], ["discretization.options.path"]),
    ("eval_fid.py", ["discretization=learned", "discretization.options.path=nope.json"], ["nope.json", "no such file"]),
    ("eval_fid.py", ["fid=incept"], ["fid='incept'", "did you mean 'inception'"]),
    ("eval_fid.py", ["discretization=learned", "discretization.options.path=grid.json", "steps=7"],
     ["steps=7", "NFE 6"]),
]

_WORK = {"main.py": ("ld3.learners.pipeline", "run_ld3"), "gen_data.py": ("ld3.data", "generate_teacher_data"),
         "eval_fid.py": ("ld3.metrics.evaluate", "run_from_config")}


def _entry(script: str):
    spec = importlib.util.spec_from_file_location(f"_entry_{script[:-3]}", ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _write_learned_grid(path: Path) -> None:
    from ld3.discretizations import get_timesteps, save
    from ld3.models.zoo import load_model

    ns = load_model("digits").noise_schedule
    save(path, get_timesteps("logSNR", ns, 6, solver="uni_pc"), model="digits", solver="uni_pc", nfe=6,
         source="handcrafted:logSNR")


@pytest.mark.parametrize(("script", "overrides", "words"), CONFIG_MISTAKES,
                         ids=[f"{s}:{' '.join(o)}" for s, o, _ in CONFIG_MISTAKES])
def test_config_mistake(script, overrides, words, tmp_path, monkeypatch, capsys):
    import importlib

    def must_not_run(*a, **k):
        raise AssertionError("the work function ran although the config is wrong")

    mod_name, fn_name = _WORK[script]
    monkeypatch.setattr(importlib.import_module(mod_name), fn_name, must_not_run)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LD3_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LD3_DEBUG", raising=False)
    if any("grid.json" in o for o in overrides):
        _write_learned_grid(tmp_path / "grid.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(sys, "argv", [script, *overrides])
    with pytest.raises(SystemExit) as exc:
        _entry(script)()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{script[:-3]}.py: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_table_is_large_enough():
    assert len(CONFIG_MISTAKES) + len(RUNTIME_MISTAKES) >= 20
    assert {s for s, _, _ in CONFIG_MISTAKES} == set(_WORK)


RUNTIME_MISTAKES = [
    ("main.py", ["model.options.weights_dir=nowhere"], ["digits_manifest.json", "not found"]),
    ("eval_fid.py", ["fid=inception"], ["Inception weights not found", "download_model.sh"]),
    ("gen_data.py", ["model=edm_cifar10"], ["EDM network pickle not found", "download_model.sh"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "overrides", "words"), RUNTIME_MISTAKES,
                         ids=[f"{s}:{' '.join(o)}" for s, o, _ in RUNTIME_MISTAKES])
def test_runtime_mistake(script, overrides, words, tmp_path):
    """A real process: one line on stderr, exit 1, no traceback, no outputs/ or data directories."""
    env = {**os.environ, "LD3_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("LD3_DEBUG", None)
    out = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), out.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_flag_shows_the_traceback(tmp_path):
    env = {**os.environ, "LD3_DEBUG": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "steps=0"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "Traceback" in out.stderr and out.stderr.strip().splitlines()[-1].startswith("main.py: error: steps=0")


def test_validate_config_refuses_solver_keys_outside_options():
    """Programmatic composes (hydra's compose API, scripts) bypass the command-line check: a solver option given
    next to ``name`` instead of under ``options`` would be ignored, so it is an error naming the right place."""
    from test_fid_scale import _compose

    from ld3.config_validation import ConfigError, validate_config

    c = _compose(["solver=uni_pc"])
    c["solver"]["convert_at"] = "grid_time"
    with pytest.raises(ConfigError, match=r"solver.convert_at='grid_time' is not a solver key.*solver.options"):
        validate_config(c, "eval_fid")
