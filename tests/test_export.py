"""``python -m ld3.export RUN --to diffusers``: the printed lists are accepted by stock diffusers schedulers and
reproduce the grid (reference: diffusers' own alphas_cumprod table)."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from ld3.discretizations import save
from ld3.export import main

diffusers = pytest.importorskip("diffusers")

CONFIG = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
          "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1}


def _parse(out: str, name: str) -> list:
    m = re.search(rf"^{name} = (\[.*\])$", out, re.MULTILINE)
    assert m, out
    return json.loads(m.group(1))


def test_export_diffusers_forms(tmp_path, capsys):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    ks = [999, 700, 420, 180, 40]
    t1 = torch.tensor([(k + 1) / 1000 for k in ks] + [1 / 1000], dtype=torch.float64)
    t2 = t1.clone()
    t2[1:-1] += 0.0021
    run = tmp_path / "run"
    save(run / "discretization.json", t1, model_timesteps=t2, solver="uni_pc", nfe=5)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(CONFIG))
    assert main([str(run), "--to", "diffusers", "--scheduler-config", str(tmp_path / "scheduler_config.json")]) == 0
    out = capsys.readouterr().out
    assert _parse(out, "timesteps") == ks
    assert "LOST in both forms: the decoupled network times" in out and "0.0021" in out
    assert "final_sigmas_type='sigma_min'" in out
    sigmas = _parse(out, "sigmas")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler.from_config(CONFIG, final_sigmas_type="sigma_min")
        euler.set_timesteps(sigmas=sigmas)
        table = ((1 - euler.alphas_cumprod) / euler.alphas_cumprod).sqrt().double()
        expected = torch.cat([table[ks], table[:1]])
        # diffusers computes 1 - alphas_cumprod in float32: ~1e-5 relative cancellation at sigma_min
        torch.testing.assert_close(euler.sigmas.double(), expected, rtol=5e-5, atol=0)
        torch.testing.assert_close(euler.timesteps.double(), torch.tensor(ks, dtype=torch.float64), rtol=0, atol=0.02)
        dpm = DPMSolverMultistepScheduler.from_config(CONFIG, final_sigmas_type="sigma_min")
        dpm.set_timesteps(timesteps=_parse(out, "timesteps"))
        assert dpm.timesteps.tolist() == ks


def test_export_reports_rounding_and_bad_input(tmp_path, capsys):
    t1 = torch.tensor([1.0, 0.5004, 0.1, 0.002], dtype=torch.float64)
    path = save(tmp_path / "d.json", t1, solver="ddim", nfe=3)
    (tmp_path / "sc.json").write_text(json.dumps(CONFIG))
    main([str(path), "--to", "diffusers", "--scheduler-config", str(tmp_path / "sc.json")])
    out = capsys.readouterr().out
    assert _parse(out, "timesteps") == [999, 499, 99]
    assert "up to 0.4 steps" in out
    assert "LOST in timesteps=: the grid's end point t = 0.002" in out
    assert "no decoupled network times" in out
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no discretization.json"):
        main([str(tmp_path / "empty"), "--to", "diffusers"])
    with pytest.raises(SystemExit):
        main([str(path), "--to", "comfyui"])
