"""gen_data.py, main.py and eval_fid.py run 2 steps end to end on tiny EDM snapshots in the real on-disk format
(tests/_edm_fixtures.py), through the shipped edm_* model configs with only the weights path overridden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from ld3.models.zoo import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _edm_fixtures import write_snapshot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EDM_CONFIGS = ["edm_cifar10", "edm_cifar10_cond", "edm_ffhq", "edm_afhqv2", "edm_imagenet64", "edm_cifar10_ve"]

# eval_fid.py with a cheap stand-in feature extractor (Inception weights are not available offline)
EVAL_WRAPPER = """
import runpy, sys
import torch
from ld3.metrics.fid import register_feature_extractor

@register_feature_extractor("test_pixels")
def _pixels(**_):
    return lambda images: torch.nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1).double()

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("EDM_REPO", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _common(tmp_path: Path, pkl: Path, model: str, tag: str) -> list:
    return [f"model={model}", f"model.options.path={pkl}", "steps=2", "device=cpu",
            f"paths.runs_dir={tmp_path / 'runs'}", f"paths.results={tmp_path / 'results.jsonl'}",
            f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'hydra' / tag}"]


def test_gen_data_on_tiny_conditional_edm(tmp_path):
    pkl = write_snapshot("ncsnpp_edm_cond", tmp_path / "cond.pkl")
    p = _run([str(REPO / "gen_data.py"), *_common(tmp_path, pkl, "edm_cifar10_cond", "gen"), "total_samples=4",
              f"data_dir={tmp_path / 'teacher'}", "sampling_batch_size=4", "shard_size=4", "progress=false"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    man = json.loads((tmp_path / "teacher" / "uni_pc_NFE2_logSNR_seed0" / "manifest.json").read_text())
    assert man["complete"] and man["num_samples"] == 4
    assert man["model"]["metadata"]["loader"] == "safe" and man["model"]["num_classes"] == 10
    assert man["conditions"]["labels"] == "uniform"  # per-seed labels for a network without null class


def test_main_on_tiny_edm(tmp_path):
    pkl = write_snapshot("ddpmpp_edm_uncond", tmp_path / "uncond.pkl")
    p = _run([str(REPO / "main.py"), *_common(tmp_path, pkl, "edm_cifar10", "main"), "loss=l2", "teacher.steps=4",
              f"teacher.data_dir={tmp_path / 'teacher'}", "learner.num_train=2", "learner.num_valid=2",
              "learner.main_train_batch_size=1", "learner.main_valid_batch_size=2", "learner.training_rounds_v1=1",
              "learner.training_rounds_v2=1"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = list((tmp_path / "runs" / "edm").glob("*/discretization.json"))
    assert len(out) == 1
    grid = json.loads(out[0].read_text())
    assert "ld3 finished" in (p.stdout + p.stderr).lower() and grid


def test_eval_fid_on_tiny_conditional_edm(tmp_path):
    pkl = write_snapshot("ncsnpp_edm_cond", tmp_path / "cond.pkl")
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(12), sigma=np.eye(12))
    wrapper = tmp_path / "run_eval.py"
    wrapper.write_text(EVAL_WRAPPER)
    p = _run([str(wrapper), str(REPO / "eval_fid.py"), *_common(tmp_path, pkl, "edm_cifar10_cond", "fid"),
              "num_samples=4", "batch_size=4", "fid=inception", "fid.feature=test_pixels", f"fid.ref_stats={ref}",
              "fid.inception_weights=null", f"out_dir={tmp_path / 'fid'}", "progress=false"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "fid" / "fid.json").read_text())
    assert res["num_samples"] == 4 and res["nfe"] == 2 and np.isfinite(res["fid"])


@pytest.mark.parametrize("name", EDM_CONFIGS)
def test_edm_configs_resolve_and_name_missing_weights(name, tmp_path):
    cfg = OmegaConf.create({"paths": {"weights": str(tmp_path / "weights"), "fid_refs": str(tmp_path / "refs")},
                            "model": OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")})
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert model["name"] == "edm" and model["guidance_type"] == "uncond" and model["default_loss"] == "lpips_vgg"
    assert model["options"]["edm_repo"] is None and model["options"]["path"] is None
    with pytest.raises(FileNotFoundError) as err:
        load_model("edm", device="cpu", **model["options"])
    group = "edm-ve" if name.endswith("_ve") else "edm"
    assert str(tmp_path / "weights" / model["options"]["checkpoint"]) in str(err.value)
    assert f"scripts/download_model.sh {group}`" in str(err.value)
    listed = subprocess.run(["bash", str(REPO / "scripts" / "download_model.sh"), "--list"], capture_output=True,
                            text=True, env=dict(os.environ, LD3_CACHE=str(tmp_path / "c")), timeout=60).stdout
    assert f"{group:<10} {tmp_path / 'c' / 'weights' / model['options']['checkpoint']}" in listed
