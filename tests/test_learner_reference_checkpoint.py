"""``best_v2.pt`` in the LD3 reference's format, both time modes: params1 order, params2, best_t_steps.

The reference grid is computed here from params1/params2 with the formulas of vinhsuhi/LD3
``trainer.py`` (``discretize_model_wrapper``), written out independently of ld3.learners:
time mode uses ``cumsum(softmax(params1)).flip(0)``, lambda mode ``cumsum(softmax(params1))`` and a
window from the raw logits.
"""

from __future__ import annotations

import pytest
import torch

from ld3.learners import LD3Config, LD3Data, LD3Trainer, get_loss
from ld3.learners.ld3 import LD3Parameterization, load_reference_checkpoint, prior_scale, split_data
from ld3.models.zoo import load_model
from ld3.solvers import get_solver


def reference_grid(ns, params1, params2, mode, window_rate=0.5):
    p1, p2 = params1.double(), params2.double()
    lam_min = ns.marginal_lambda(torch.tensor(float(ns.T), dtype=torch.float64))
    lam_max = ns.marginal_lambda(torch.tensor(float(ns.eps), dtype=torch.float64))
    mask = torch.ones_like(p1)
    mask[0] = mask[-1] = 0.0
    if mode == "time":
        t_max, t_min = ns.inverse_lambda(lam_min), ns.inverse_lambda(lam_max)
        md = torch.cumsum(torch.softmax(p1, 0), 0).flip(0)
        normed = (md - md[-1]) / (md[0] - md[-1])
        t1 = normed * (t_max - t_min) + t_min
        mm = (t1[1:] - t1[:-1]).abs().min() * window_rate
        return t1, t1 + torch.clamp(p2, -mm, mm) * mask
    md = torch.cumsum(torch.softmax(p1, 0), 0)
    normed = (md - md.min()) / (md.max() - md.min())
    lam1 = normed * (lam_max - lam_min) + lam_min
    mm = (p1[1:] - p1[:-1]).abs().min() * window_rate
    lam2 = lam1 + torch.clamp(p2, -mm, mm) * mask
    return ns.inverse_lambda(lam1), ns.inverse_lambda(lam2)


WINDOW = {"time": "steps", "lambda": "logits"}  # what the reference does in each mode


@pytest.fixture(scope="module")
def gmm():
    return load_model("analytic_gmm", dim=16, n_components=1, seed=0)


@pytest.mark.parametrize("mode", ["time", "lambda"])
def test_reference_fixture_loads_into_the_same_grid(gmm, mode, tmp_path):
    ns = gmm.noise_schedule
    g = torch.Generator().manual_seed(5)
    params1 = (torch.randn(7, generator=g) * 0.6).float()  # float32, as the reference stores them
    params2 = (torch.randn(7, generator=g) * 0.05).float()
    t1, t2 = reference_grid(ns, params1, params2, mode)
    path = tmp_path / "best_v2.pt"
    torch.save({"params1": params1, "params2": params2, "best_t_steps": torch.cat([t1, t2]).float()}, path)
    param = LD3Parameterization(ns, 7, mode, 0.5, WINDOW[mode])
    param.load_reference_params(load_reference_checkpoint(path))
    o1, o2 = param()
    assert torch.allclose(o1.detach(), t1, rtol=0, atol=1e-6)
    assert torch.allclose(o2.detach(), t2, rtol=0, atol=1e-6)
    assert not torch.allclose(t1, t2)  # the window and params2 are exercised
    # and back: our reference_params are the file's
    back = param.reference_params()
    assert torch.allclose(back["params1"].float(), params1) and torch.allclose(back["params2"].float(), params2)
    with pytest.raises(ValueError, match="needs 5 each"):
        LD3Parameterization(ns, 5, mode).load_reference_params({"params1": params1, "params2": params2})


@pytest.mark.parametrize("mode", ["time", "lambda"])
def test_written_best_v2_is_read_by_the_reference_formula(gmm, mode, tmp_path):
    ns = gmm.noise_schedule
    lat = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = LD3Data(lat, gmm.metadata["gmm"].ode_solution(lat * prior_scale(ns), ns.T, ns.eps))
    cfg = LD3Config(num_train=8, num_valid=8, main_train_batch_size=2, main_valid_batch_size=8,
                    training_rounds_v1=1, training_rounds_v2=1, time_mode=mode, window_from=WINDOW[mode],
                    lr_time_1=0.05)
    tr, va, _ = split_data(data, 8, 8, 0)
    fn = gmm.model_fn()
    trainer = LD3Trainer(cfg, get_solver("ddim", ns), 5, lambda c, u: fn, get_loss("l2"), tr, va, run_dir=tmp_path)
    trainer.train()
    snap = torch.load(tmp_path / "best_v2.pt", map_location="cpu", weights_only=True)
    p1 = snap["params1"]
    assert not torch.allclose(p1[1:], p1[1:].flip(0), atol=1e-6)  # training made the order matter
    r1, r2 = reference_grid(ns, p1, snap["params2"], mode)
    b1, b2 = snap["best_t_steps"].double().chunk(2)
    assert torch.allclose(r1, b1, rtol=0, atol=1e-6)
    assert torch.allclose(r2, b2, rtol=0, atol=1e-6)
