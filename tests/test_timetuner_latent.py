"""TimeTuner through main.py on a latent model (the tiny real-format LDM of tests/test_zoo_ldm.py).

* ``objective: solver_output``: the solver's latent output is decoded before the loss against the pixel
  teacher (the tiny LDM's latents and images differ in shape, so an undecoded loss cannot run).
* ``objective: ddim_step``: the x_0 that TimeTuner noises are the teacher's own final latents, from an
  ``img_space: latent`` teacher set of the same seeds next to the pixel one; decoding them gives the
  pixel teacher's images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_experiment_one_step import _compose, _ldm  # noqa: E402

NAME = "timetuner_lsun_bedroom_ddim_nfe10"


def _cfg(tmp_path: Path, objective: str):
    model_over, _ = _ldm("lsun_bedroom")(tmp_path)
    return _compose([f"+experiment={NAME}", *model_over, f"learner.objective={objective}", "learner.num_train=2",
                     "learner.num_valid=2", "learner.num_test=0", "learner.total_iters=1", "learner.batch_size=2",
                     "learner.eval_batch_size=2", "device=cpu", "logger=disabled", "teacher.steps=3",
                     "teacher.sampling_batch_size=4", f"paths.data_dir={tmp_path / 'data'}",
                     f"paths.runs_dir={tmp_path / 'runs'}", f"paths.fid_refs={tmp_path / 'refs'}",
                     f"learner.log_path={tmp_path / 'learn'}", f"paths.results={tmp_path / 'results.jsonl'}"])


def _teacher_dirs(tmp_path: Path):
    return sorted(p.parent for p in (tmp_path / "data").rglob("manifest.json"))


def test_solver_output_decodes_on_latent_model(tmp_path):
    from ld3.data import TeacherDataset
    from ld3.learners.pipeline import run_learner

    out = run_learner(_cfg(tmp_path, "solver_output"))
    dirs = _teacher_dirs(tmp_path)
    assert len(dirs) == 1, dirs  # no latent teacher set: solver_output needs none
    ds = TeacherDataset(dirs[0])
    assert ds.img_space == "pixel"
    assert ds[0]["img"].shape != ds[0]["latent"].shape  # so an undecoded student output could not be compared
    disc = json.loads(next((tmp_path / "learn").glob("*/discretization.json")).read_text())
    assert len(disc["timesteps"]) == 11
    assert out is not None


def test_ddim_step_noises_the_teachers_latents(tmp_path):
    from ld3.data import TeacherDataset
    from ld3.learners.pipeline import prepare_run, run_learner
    from ld3.learners.timetuner_run import run_timetuner

    cfg = _cfg(tmp_path, "ddim_step")
    run_learner(cfg)
    dirs = {TeacherDataset(d).img_space: d for d in _teacher_dirs(tmp_path)}
    assert set(dirs) == {"pixel", "latent"}
    assert dirs["latent"].name == dirs["pixel"].name + "_latent"
    pix, lat = TeacherDataset(dirs["pixel"]), TeacherDataset(dirs["latent"])
    assert len(lat) == len(pix) == 4
    loaded = prepare_run(cfg).loaded
    for i in range(len(pix)):
        assert torch.equal(lat[i]["latent"], pix[i]["latent"])
        assert lat[i]["img"].shape == pix[i]["latent"].shape
        with torch.no_grad():
            dec = loaded.decode(lat[i]["img"][None].float())[0]
        torch.testing.assert_close(dec, pix[i]["img"].float(), atol=1e-4, rtol=1e-4)
    # in-memory data has no latent x_0: a clear error naming the alternative
    from ld3.learners.ld3 import LD3Data

    data = LD3Data(torch.stack([pix[i]["latent"] for i in range(4)]), torch.stack([pix[i]["img"] for i in range(4)]))
    with pytest.raises(ValueError, match="learner.objective=solver_output"):
        run_timetuner(cfg, data=data)
