"""gen_data.py and main.py run end to end (2 steps, CPU) on tiny real-format instances of the paper zoo.

Each tiny model is written in its release's on-disk format (see tests/test_zoo_adm.py, tests/test_zoo_ldm.py)
and reached through a Hydra model config in a temporary config directory (``hydra.searchpath``), with the
guidance of its paper setting: ADM with its noisy classifier (classifier guidance), LDM cin256 with
classifier-free guidance (null class).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from zoo_fill import filled_state_dict

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def _adm_tiny(d: Path) -> dict:
    man = json.loads((DATA / "adm_tiny_manifest.json").read_text())
    for k in ("unet_cond", "classifier"):
        torch.save(filled_state_dict(man[k]["params"].items()), d / f"{k}.pt")
    return {"name": "adm", "options": {
        "path": str(d / "unet_cond.pt"), "classifier_path": str(d / "classifier.pt"),
        "architecture": man["unet_cond"]["config"], "classifier_architecture": man["classifier"]["config"],
        "beta_schedule": "cosine"}, "guidance_type": "classifier", "guidance_scale": 1.0, "default_loss": "l2"}


def _ldm_tiny(d: Path) -> dict:
    from test_zoo_ldm import write_tiny_ldm_checkpoint

    path, options = write_tiny_ldm_checkpoint(d, "cin256")
    return {"name": "ldm", "options": {"path": str(path), **options}, "guidance_type": "classifier-free",
            "guidance_scale": 2.0, "default_loss": "l2"}


TINY = {"adm_tiny": _adm_tiny, "ldm_tiny": _ldm_tiny}


@pytest.fixture(scope="module")
def confdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo_conf")
    (d / "model").mkdir()
    return d


def _run(script: str, args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _need(confdir: Path, model: str) -> None:
    """Write ``model``'s tiny instance and its model config once per module (an error here fails the test;
    only a missing optional extra, via the family test module's ``importorskip``, skips it)."""
    conf = confdir / "model" / f"{model}.yaml"
    if not conf.is_file():
        conf.write_text(yaml.safe_dump(TINY[model](confdir)))


@pytest.mark.parametrize("model", sorted(TINY))
def test_gen_data_two_steps(confdir, model, tmp_path):
    _need(confdir, model)
    args = [f"hydra.searchpath=[file://{confdir}]", f"model={model}", "solver=ddim", "steps=2", "seeds=0-3",
            "device=cpu", f"data_dir={tmp_path / 'data'}", "sampling_batch_size=4", "shard_size=4",
            "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    p = _run("gen_data.py", args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    from ld3.data import TeacherDataset, read_manifest

    out = tmp_path / "data" / "ddim_NFE2_logSNR_seed0"
    m = read_manifest(out)
    assert m["complete"] and m["config"]["model"]["name"] in ("adm", "ldm")
    ds = TeacherDataset(out)
    assert len(ds) == 4
    assert torch.isfinite(ds[0]["img"]).all()


@pytest.mark.parametrize("model", sorted(TINY))
def test_main_two_steps(confdir, model, tmp_path):
    _need(confdir, model)
    args = [f"hydra.searchpath=[file://{confdir}]", f"model={model}", "solver=ddim", "steps=2", "device=cpu",
            "learner.num_train=4", "learner.num_valid=4", "learner.num_test=4", "learner.main_train_batch_size=2",
            "learner.main_valid_batch_size=4", "learner.training_rounds_v1=1", "learner.training_rounds_v2=1",
            "teacher.steps=3", f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.results={tmp_path / 'results.jsonl'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    p = _run("main.py", args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    found = list((tmp_path / "runs").rglob("discretization.json"))
    assert len(found) == 1
    disc = json.loads(found[0].read_text())
    assert disc["nfe"] == 2 and len(disc["timesteps"]) == 3


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """An Inception-v3 weights file in torch-fidelity's format with random values, and stats to compare to.

    FID itself is tested elsewhere (tests/test_fid.py); here only the plumbing of eval_fid.py matters.
    """
    from unittest import mock

    import numpy as np

    fi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    d = tmp_path_factory.mktemp("inception")
    with mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        torch.manual_seed(0)
        net = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), d / "inception.pth")
    np.savez(d / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(TINY))
def test_eval_fid_two_steps(confdir, random_inception, model, tmp_path):
    """eval_fid.py on tiny ADM (classifier guidance) / LDM cin256 (CFG); ~30 s each, mostly FID's 2048-d sqrtm."""
    _need(confdir, model)
    args = [f"hydra.searchpath=[file://{confdir}]", f"model={model}", "solver=ddim", "steps=2",
            "device=cpu", "num_samples=4", "batch_size=4", "fid=inception",
            f"fid.inception_weights={random_inception / 'inception.pth'}",
            f"fid.ref_stats={random_inception / 'ref.npz'}", "progress=false", "save_grid=false",
            f"out_dir={tmp_path / 'fid'}", f"paths.results={tmp_path / 'results.jsonl'}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    p = _run("eval_fid.py", args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "FID (inception, 4 samples, NFE 2)" in p.stdout + p.stderr
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 1
