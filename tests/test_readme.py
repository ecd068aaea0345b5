"""The README works as written: its Python blocks run, and its workflow commands run in order.

The workflow test takes every ``.venv/bin/python ...`` line of the README's "Workflow" bash block, in
order, and runs it in an empty directory with this interpreter. To keep CI fast it appends small-size
overrides to some commands (``SMALL`` below: Hydra lets a later ``key=value`` win), which change sizes
only, never what the README asks for.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

#: small sizes appended to the README's commands (per script)
SMALL = {
    "gen_data.py": ["total_samples=24"],
    "main.py": ["learner.num_train=5", "learner.num_valid=5", "learner.num_test=5", "learner.main_train_batch_size=5",
                "learner.main_valid_batch_size=5", "learner.training_rounds_v1=1", "learner.training_rounds_v2=1"],
    "eval_fid.py": ["num_samples=64", "batch_size=64"],
}


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def workflow_commands() -> list[list[str]]:
    section = README.split("## Workflow", 1)[1].split("\n## ", 1)[0]
    (block,) = code_blocks(section, "bash")
    cmds = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith(".venv/bin/python "):
            cmds.append(shlex.split(line)[1:])
    return cmds


def test_readme_python_blocks_run():
    blocks = code_blocks(README, "python")
    assert blocks, "the README has no Python example"
    for block in blocks:
        ns: dict = {}
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - the README's own example
    # the API example: 16 digits from the embedded model, with its schedule read back
    x0 = ns["x0"]
    assert x0.shape == (16, 1, 16, 16) and torch.isfinite(x0).all()
    assert ns["betas"].shape == (1000,)
    assert x0.abs().max() < 1.6 and x0.std() > 0.3  # images in about [-1, 1], not noise or a constant


def test_schedule_betas_read_back():
    from ld3 import NoiseScheduleVP

    b = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    ns = NoiseScheduleVP(schedule="discrete", betas=b)
    assert torch.allclose(ns.betas(), b, rtol=1e-10, atol=1e-15)
    assert torch.allclose(ns.alphas_cumprod(), torch.cumprod(1 - b, 0), rtol=1e-12)
    ac = torch.cumprod(1 - b, 0)
    assert torch.allclose(NoiseScheduleVP(schedule="discrete", alphas_cumprod=ac).betas(), b, rtol=1e-9)
    with pytest.raises(ValueError, match="discrete"):
        NoiseScheduleVP(schedule="linear").betas()


def test_workflow_commands_are_found():
    cmds = workflow_commands()
    scripts = [c[0] for c in cmds]
    assert scripts[:3] == ["gen_data.py", "main.py", "eval_fid.py"]
    assert "scripts/report.py" in scripts


@pytest.mark.slow
def test_readme_workflow_runs_in_order(tmp_path):
    env = {**os.environ, "LD3_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for cmd in workflow_commands():
        script, args = cmd[0], cmd[1:]
        argv = [sys.executable, str(ROOT / script), *args, *SMALL.get(Path(script).name, [])]
        out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr
    runs = sorted((tmp_path / "runs" / "digits").glob("*/result.json"))
    assert {json.loads(p.read_text())["nfe"] for p in runs} == {4, 6}
    assert (tmp_path / "runs" / "fid" / "digits-uni_pc-N6-learned-model" / "fid.json").is_file()
    assert (tmp_path / "results" / "report.md").is_file()
    assert not (tmp_path / "outputs").exists()
