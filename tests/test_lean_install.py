"""The lean install: the default path needs no optional extra, and a missing extra fails in one line.

The heavy stacks are installed in the test environment, so their absence is simulated: a subprocess
blocks their import (a ``sys.meta_path`` finder) and then runs the real entry points.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["diffusers", "transformers", "accelerate", "lpips", "torchvision", "torchmetrics", "torch_fidelity", "wandb",
         "hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher", "submitit"]  # joblib: sklearn

#: the head of every subprocess script here: imports of the HEAVY packages fail as if they were not installed
FINDER = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder
    BLOCKED = {blocked!r}
    class Block(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {{name!r}}")
            return None
    sys.meta_path.insert(0, Block())
    """
)
BLOCKER = FINDER + textwrap.dedent(
    """
    import runpy
    sys.argv = {argv!r}
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def _run_blocked(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=HEAVY, argv=[str(ROOT / script), *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LD3_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_pyproject_extras():
    try:
        import tomllib
    except ImportError:  # Python 3.10: the TOML parser pip itself vendors
        from pip._vendor import tomli as tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(proj["dependencies"]).lower()
    for heavy in ("diffusers", "transformers", "accelerate", "lpips", "torchvision", "torchmetrics", "torch-fidelity",
                  "wandb", "launcher"):
        assert heavy not in core, heavy
    extras = proj["optional-dependencies"]
    assert set(extras) == {"zoo", "fid", "wandb", "slurm", "all", "dev"}
    from ld3.utils.extras import EXTRAS

    for name, dists in EXTRAS.items():
        assert {re.split(r"[<>=!~ ]", d)[0] for d in extras[name]} == set(dists), name
    assert extras["all"] == ["ld3[zoo,fid,wandb,slurm]"]


def test_missing_extra_message_names_the_extra():
    from ld3.utils.extras import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[zoo\]'") as e:
        require("ld3_no_such_module_xyz", "zoo", "Stable Diffusion models")
    assert "\n" not in str(e.value) and "Stable Diffusion models" in str(e.value)


@pytest.mark.slow
def test_main_job_runs_without_any_extra(tmp_path):
    small = ["learner.num_train=4", "learner.num_valid=4", "learner.num_test=4", "learner.main_train_batch_size=4",
             "learner.training_rounds_v1=1", "learner.training_rounds_v2=1"]
    out = _run_blocked("main.py", small, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "digits").iterdir()
    assert (run / "result.json").is_file() and (run / "samples.png").is_file()
    out = _run_blocked("eval_fid.py", ["num_samples=32", "batch_size=32", "steps=4"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs" / "fid" / "digits-uni_pc-N4-logSNR-model" / "samples.png").is_file()


MISSING_EXTRA_CASES = [
    ("main.py", ["loss=lpips_vgg"], "fid"),
    ("main.py", ["model=sd_v1_5"], "zoo"),
    ("eval_fid.py", ["fid=inception", "fid.inception_weights=inception.pth"], "fid"),
    ("main.py", ["logger=wandb", "logger.wandb.mode=offline"], "wandb"),
]

MANY = FINDER + textwrap.dedent(
    """
    import contextlib, io, json, runpy
    results = []
    for argv in {cases!r}:
        sys.argv = argv
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err):
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as e:
                code = e.code
        results.append([code, err.getvalue()])
    print(json.dumps(results))
    """
)


def test_missing_extra_is_one_line(tmp_path):
    """Each missing extra: exit 2 from the config checks (before any work), one line naming the extra."""
    (tmp_path / "inception.pth").write_bytes(b"placeholder: the extra is missing before the file is read")
    cases = [[str(ROOT / script), *args] for script, args, _ in MISSING_EXTRA_CASES]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LD3_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", MANY.format(blocked=HEAVY, cases=cases)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    for (script, args, extra), (code, err) in zip(MISSING_EXTRA_CASES, json.loads(out.stdout.splitlines()[-1]),
                                                  strict=True):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (script, args, err)
        assert lines[0].startswith(f"{script}: error: ") and f"pip install -e '.[{extra}]'" in lines[0], lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["inception.pth"]


API_SD = FINDER + textwrap.dedent(
    """
    import ld3.models.zoo
    try:
        ld3.models.zoo.load_model("stable_diffusion", checkpoint="stable-diffusion-v1-5")
    except Exception as e:
        print(type(e).__name__ + ": " + str(e))
    """
)


def test_sd_model_from_python_without_the_zoo_extra_is_one_line(tmp_path):
    """``import ld3.models.zoo`` works without the extra; loading an SD model raises one line naming ``.[zoo]``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LD3_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", API_SD.format(blocked=HEAVY)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stdout
    assert lines[0].startswith("MissingExtraError: Stable Diffusion"), lines[0]
    assert "pip install -e '.[zoo]'" in lines[0], lines[0]
