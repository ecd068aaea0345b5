"""The three Hydra entry points answer --help with their own text, and the root configs compose."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the config groups each entry point uses (its --help lists exactly these)
GROUPS = {
    "main.py": {"model", "solver", "discretization", "learner", "loss", "logger"},
    "gen_data.py": {"model", "solver", "discretization", "logger"},
    "eval_fid.py": {"model", "solver", "discretization", "fid", "logger"},
}
ALL_GROUPS = {"model", "solver", "discretization", "learner", "loss", "logger", "fid"}


@pytest.mark.parametrize("script", sorted(GROUPS))
def test_help(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    head = out.stdout.split("== Config")[0]
    assert head.startswith(script + ":"), head[:200]
    assert f"python {script}" in head  # examples
    listed = {g for g in ALL_GROUPS if f"\n  {g}=" in head}
    assert listed == GROUPS[script]
    assert "steps:" in out.stdout  # the composed config follows
    assert "Powered by Hydra" not in out.stdout


@pytest.mark.parametrize("config_name", ["config", "gen_data", "eval_fid"])
def test_root_configs_compose(config_name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose(config_name=config_name)
    assert cfg.model.name == "digits"
    assert "steps" in cfg and "device" in cfg and cfg.threads == "auto"


def test_help_examples_use_existing_options():
    """Every `group=option` in a help template names a config file that exists."""
    import re

    for f in (Path(ROOT) / "configs" / "hydra" / "help").glob("*.yaml"):
        for group, option in re.findall(r"\b(model|solver|discretization|learner|loss|logger|fid)=([\w+]+)",
                                        f.read_text()):
            assert (Path(ROOT) / "configs" / group / f"{option}.yaml").is_file(), (f.name, group, option)
