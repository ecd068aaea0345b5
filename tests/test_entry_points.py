"""The three Hydra entry points answer --help and the root configs compose."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["main.py", "gen_data.py", "eval_fid.py"])
def test_help(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Powered by Hydra" in out.stdout or "== Config ==" in out.stdout


@pytest.mark.parametrize("config_name", ["config", "gen_data", "eval_fid"])
def test_root_configs_compose(config_name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose(config_name=config_name)
    assert cfg.model.name == "digits"
    assert "steps" in cfg and "device" in cfg
