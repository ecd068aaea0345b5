"""Tests of the LD3 learner (ld3/learners): parameterization, relaxed objective, training stages,
checkpoint/resume, divergence handling, losses, the run pipeline and main.py.

Ground truth comes from outside the code under test: the exact probability-flow ODE of an analytic
Gaussian mixture (teacher targets), closed-form grids computed here, and hand-written formulas.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ld3.learners import (
    LD3Config,
    LD3Data,
    LD3DivergenceError,
    LD3Parameterization,
    LD3Trainer,
    MissingWeightsError,
    evaluate_grid,
    get_loss,
    project_to_ball,
    resolve_hyper,
)
from ld3.learners.ld3 import prior_scale, split_data
from ld3.learners.pipeline import run_ld3, run_name
from ld3.models.zoo import load_model
from ld3.schedules import NoiseScheduleEDM
from ld3.solvers import get_solver

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def gmm():
    """One Gaussian: its PF-ODE has a closed-form solution (exact teacher at no cost)."""
    return load_model("analytic_gmm", dim=16, n_components=1, seed=0)


def teacher_data(model, n: int, seed: int = 0, shape=None) -> LD3Data:
    """Exact teacher: the closed-form PF-ODE solution from T to eps of unit-normal latents."""
    ns = model.noise_schedule
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, 16, generator=g, dtype=torch.float64)
    tgt = model.metadata["gmm"].ode_solution(lat * prior_scale(ns), ns.T, ns.eps)
    if shape is not None:
        lat, tgt = lat.reshape(n, *shape), tgt.reshape(n, *shape)
    return LD3Data(lat, tgt)


@pytest.fixture(scope="module")
def data16(gmm):
    return teacher_data(gmm, 48)


def make_trainer(gmm, data, steps=4, solver="ddim", run_dir=None, on_step=None, loss=None, **cfg):
    base = dict(num_train=8, num_valid=8, main_train_batch_size=2, main_valid_batch_size=8,
                training_rounds_v1=1, training_rounds_v2=1)
    base.update(cfg)
    lcfg = LD3Config(**base)
    tr, va, _ = split_data(data, lcfg.num_train, lcfg.num_valid, 0)
    fn = gmm.model_fn()
    return LD3Trainer(lcfg, get_solver(solver, gmm.noise_schedule), steps, lambda c, u: fn,
                      loss or get_loss("l2"), tr, va if len(va) else None, run_dir=run_dir, on_step=on_step)


# ------------------------------------------------------------------------------------------ parameterization
def test_initial_grids_are_logsnr_and_time_uniform(gmm):
    ns = gmm.noise_schedule
    n = 7
    p = LD3Parameterization(ns, n, time_mode="lambda")
    t1, t2 = p()
    lam_lo = float(ns.marginal_lambda(torch.tensor(ns.T, dtype=torch.float64)))
    lam_hi = float(ns.marginal_lambda(torch.tensor(ns.eps, dtype=torch.float64)))
    expect = ns.inverse_lambda(torch.linspace(lam_lo, lam_hi, n, dtype=torch.float64))
    assert torch.allclose(t1[1:-1], expect[1:-1], rtol=1e-10, atol=1e-12)
    assert float(t1[0].detach()) == ns.T and float(t1[-1].detach()) == ns.eps
    assert torch.equal(t1, t2)
    lam = ns.marginal_lambda(t1)
    assert torch.allclose(lam[1:] - lam[:-1], torch.full((n - 1,), (lam_hi - lam_lo) / (n - 1), dtype=torch.float64),
                          rtol=1e-8)
    q = LD3Parameterization(ns, n, time_mode="time")
    t1, t2 = q()
    assert torch.allclose(t1, torch.linspace(ns.T, ns.eps, n, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.equal(t1, t2)


@pytest.mark.parametrize("mode", ["lambda", "time"])
def test_window_limits_network_time(gmm, mode):
    ns = gmm.noise_schedule
    p = LD3Parameterization(ns, 6, time_mode=mode, win_rate=0.5)
    with torch.no_grad():
        p.params1.copy_(torch.tensor([1.0, 0.3, 2.0, 1.0, 0.5, 1.5], dtype=torch.float64))
        p.params2.fill_(100.0)  # far outside any window
    t1, t2 = p()
    x1 = ns.marginal_lambda(t1) if mode == "lambda" else t1
    x2 = ns.marginal_lambda(t2) if mode == "lambda" else t2
    window = 0.5 * (x1[1:] - x1[:-1]).abs().min()
    d = (x2 - x1).abs()
    assert d[0] == 0 and d[-1] == 0
    assert torch.allclose(d[1:-1].detach(), torch.full_like(d[1:-1], float(window)), rtol=1e-9)
    # t2 stays strictly between the neighbours of t1, so it is a valid time inside (eps, T)
    assert ((t2[1:-1] < t1[:-2]) & (t2[1:-1] > t1[2:])).all()


def test_window_from_logits_is_zero_at_init(gmm):
    """The reference's window in lambda mode comes from the raw logits: 0 while params1 is uniform."""
    p = LD3Parameterization(gmm.noise_schedule, 6, window_from="logits")
    with torch.no_grad():
        p.params2.fill_(1.0)
    t1, t2 = p()
    assert torch.equal(t1, t2)
    with torch.no_grad():
        p.params1.copy_(torch.tensor([1.0, 1.2, 1.5, 1.0, 0.4, 1.0], dtype=torch.float64))
    t1, t2 = p()
    lam1, lam2 = gmm.noise_schedule.marginal_lambda(t1), gmm.noise_schedule.marginal_lambda(t2)
    assert torch.allclose((lam2 - lam1)[1:-1], torch.full((4,), 0.5 * 0.2, dtype=torch.float64), rtol=1e-9)


@pytest.mark.parametrize("mode", ["lambda", "time"])
def test_match_prior_closed_form(gmm, mode):
    """set_from_timesteps reproduces any descending grid exactly (here the EDM rho=7 grid)."""
    from ld3.discretizations import get_timesteps

    ns = gmm.noise_schedule
    target = get_timesteps("edm", ns, 6)
    p = LD3Parameterization(ns, 7, time_mode=mode)
    p.set_from_timesteps(target)
    t1, _ = p()
    assert torch.allclose(t1, target, rtol=1e-9, atol=1e-12)


def test_grid_length_follows_solver(gmm, data16):
    """PFDiff (k=1) spends 4 NFE on a grid of 8 points: the learner learns 8 times."""
    tr = make_trainer(gmm, data16, steps=4, solver="pfdiff", max_iters=1)
    assert tr.num_points == get_solver("pfdiff", gmm.noise_schedule).num_timesteps(4) == 8
    assert tr.param.params1.numel() == 8
    tr.train()
    t1, t2 = tr.best_timesteps()
    assert t1.numel() == 8 and t2.numel() == 8


def test_hyper_and_run_name_match_reference():
    """CIFAR-10 NFE 10: prior_bound 0.03072 (REFERENCES.md), shift_lr 1.2, lr2 0.01, the README's name."""
    cfg = LD3Config()
    h = resolve_hyper(cfg, 10, 32 * 32 * 3)
    assert h == {"prior_bound": 0.03072, "shift_lr": 1.2, "lr_time_2": 0.01}
    assert run_name("uni_pc", 10, h, "LPIPS", cfg, 0) == "uni_pc-N10-b0.03072-LPIPS-lr20.01rv12-rv25-seed0"
    assert resolve_hyper(LD3Config(prior_bound=0.5, fix_bound=True), 10, 3072)["prior_bound"] == 0.5
    with pytest.raises(ValueError, match="fix_bound"):
        LD3Config(fix_bound=True)
    with pytest.raises(ValueError, match="time_mode"):
        LD3Config(time_mode="sigma")


def test_time_mode_auto_follows_reference_configs(gmm):
    from ld3.learners.ld3 import resolve_time_mode

    assert resolve_time_mode("auto", NoiseScheduleEDM()) == "lambda"  # cifar10/ffhq/afhqv2.yml
    assert resolve_time_mode("auto", gmm.noise_schedule) == "time"  # LSUN/ImageNet/SD configs (VP)
    assert resolve_time_mode("lambda", gmm.noise_schedule) == "lambda"
    with pytest.raises(ValueError, match="unknown LD3 learner options"):
        LD3Config.from_dict({"lr_time1": 0.1})


def test_prior_scale_matches_teacher_data_convention():
    from ld3.data.latents import prior_scale as data_prior_scale
    from ld3.models.zoo import load_model as lm

    edm = NoiseScheduleEDM()
    vp = lm("analytic_gmm").noise_schedule
    assert prior_scale(edm) == data_prior_scale(edm) == 80.0
    assert prior_scale(vp) == data_prior_scale(vp) == 1.0


# ------------------------------------------------------------------------------------------ relaxed objective
def test_projection_into_ball():
    g = torch.Generator().manual_seed(1)
    center = torch.randn(64, 3, 4, 4, generator=g, dtype=torch.float64)
    step = torch.randn(64, 3, 4, 4, generator=g, dtype=torch.float64) * torch.logspace(-3, 1, 64, dtype=torch.float64
                                                                                        ).reshape(-1, 1, 1, 1)
    r = 0.3
    out = project_to_ball(center + step, center, r)
    norms = (out - center).reshape(64, -1).norm(dim=1)
    step_norms = step.reshape(64, -1).norm(dim=1)
    inside = step_norms <= r
    assert (norms <= r * (1 + 1e-12)).all()
    assert torch.equal(out[inside], (center + step)[inside])  # points inside are untouched
    # outside points land on the sphere, in the direction of the move (the Euclidean projection)
    assert torch.allclose(norms[~inside], torch.full_like(norms[~inside], r), rtol=1e-12)
    cos = torch.nn.functional.cosine_similarity((out - center).reshape(64, -1), step.reshape(64, -1))
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)


def test_training_keeps_latents_in_ball(gmm, data16):
    tr = make_trainer(gmm, data16, prior_bound=0.05, fix_bound=True, shift_lr=5.0)
    tr.train()
    for cur, ori in ((tr.latents_train, tr.train_data.latents), (tr.latents_valid, tr.valid_data.latents)):
        d = (cur - ori).reshape(cur.shape[0], -1).norm(dim=1)
        assert (d <= 0.05 * (1 + 1e-9)).all()
        assert (d > 0).any(), "with a large shift_lr some latents must have moved"


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("low_gpu", [False, True])
def test_gradient_reaches_params_and_latents(gmm, data16, low_gpu):
    tr = make_trainer(gmm, data16, low_gpu=low_gpu)
    with torch.no_grad():  # off the symmetric init so params2 is inside its window and moves t2
        tr.param.params1.copy_(torch.tensor([1.0, 0.8, 1.3, 0.9, 1.1], dtype=torch.float64))
    tr.param.params1.requires_grad_(True)
    tr.param.params2.requires_grad_(True)
    idx = torch.arange(4)
    lat = tr.latents_train[idx].clone().requires_grad_(True)
    t1, t2 = tr.timesteps()
    loss = tr.loss_vector(tr.train_data, lat, idx, t1, t2).mean()
    loss.backward()
    g1, g2 = tr.param.params1.grad, tr.param.params2.grad
    assert g1[0].abs() < 1e-12  # params1[0] cancels in the normalization
    assert (g1[1:].abs() > 0).all()
    assert g2[0] == 0 and g2[-1] == 0 and (g2[1:-1].abs() > 0).all()
    assert (lat.grad.reshape(4, -1).norm(dim=1) > 0).all()
    # finite-difference check of one params1 coordinate (the gradient is the true derivative)
    h = 1e-6
    with torch.no_grad():
        vals = []
        for s in (1, -1):
            tr.param.params1[2] += s * h
            a, b = tr.timesteps()
            vals.append(float(tr.loss_vector(tr.train_data, lat.detach(), idx, a, b).mean()))
            tr.param.params1[2] -= s * h
    fd = (vals[0] - vals[1]) / (2 * h)
    assert math.isclose(float(g1[2]), fd, rel_tol=1e-4, abs_tol=1e-9)


def test_low_gpu_gives_identical_gradients(gmm, data16):
    grads = []
    for low in (False, True):
        tr = make_trainer(gmm, data16, low_gpu=low)
        tr.param.params1.requires_grad_(True)
        idx = torch.arange(4)
        t1, t2 = tr.timesteps()
        tr.loss_vector(tr.train_data, tr.latents_train[idx], idx, t1, t2).mean().backward()
        grads.append(tr.param.params1.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ training stages
def test_every_stage_runs(gmm, data16, tmp_path):
    # v1 + v2 with validation-latent moves and a patience reload
    tr = make_trainer(gmm, data16, run_dir=tmp_path / "a", patient=1, training_rounds_v1=1, training_rounds_v2=2,
                      time_mode="lambda")
    st = tr.train()
    vers = {h["version"] for h in tr.history}
    assert vers == {"Ver1", "Ver2"}
    assert st["round"] == 3 and st["iter"] == 3 * 4 and st["stop_reason"] == "all rounds done"
    assert not st["eval_on_one"], "patience 1 must have been exhausted at least once"
    assert (tmp_path / "a" / "best_v1.pt").is_file() and (tmp_path / "a" / "best_v2.pt").is_file()
    best = torch.load(tmp_path / "a" / "best_v2.pt")
    assert set(best) == {"params1", "params2", "best_t_steps"} and best["best_t_steps"].numel() == 10
    # in Ver1 params2 never moves
    v1_params2 = [h for h in tr.history if h["version"] == "Ver1"]
    assert v1_params2
    # no_v1: params1 frozen
    tr = make_trainer(gmm, data16, no_v1=True)
    p1 = tr.param.params1.detach().clone()
    tr.train()
    assert torch.equal(tr.param.params1.detach(), p1)
    assert tr.param.params2.detach().abs().max() > 0
    # prior_bound = 0: no latent moves, no validation-latent phase
    tr = make_trainer(gmm, data16, prior_bound=0.0)
    tr.train()
    assert torch.equal(tr.latents_train, tr.train_data.latents)
    # match_prior on an explicit grid, time mode
    from ld3.discretizations import get_timesteps

    tr = make_trainer(gmm, data16, time_mode="time", max_iters=2)
    prior = get_timesteps("time_quadratic", gmm.noise_schedule, 4)
    tr.match_prior(prior)
    assert torch.allclose(tr.timesteps()[0], prior, rtol=1e-9)
    tr.train()
    assert tr.state["iter"] == 2 and tr.state["stop_reason"].startswith("max_iters")
    # stop rule: lr2 floor hit lr2_patient times
    # (frozen dynamics: every validation equals the first, so each check is a non-improvement)
    tr = make_trainer(gmm, data16, patient=1, lr2_patient=1, min_lr_time_2=1.0, validate_first_batch_only=False,
                      training_rounds_v1=0, training_rounds_v2=3, lr_time_1=1e-300, lr_time_2=1e-300,
                      prior_bound=0.0)
    tr.train()
    assert tr.state["stop_reason"].startswith("lr2 reached its floor") and tr.state["iter"] == 1


def test_learning_beats_handcrafted_on_gmm(gmm):
    """NFE 4 iPNDM on the exact Gaussian teacher: the learned grid beats every hand-crafted one on held-out
    latents by a wide margin (measured: ~1e-5 vs ~2e-4 for the best, time_quadratic)."""
    from ld3.discretizations import get_timesteps

    data = teacher_data(gmm, 96, seed=3)
    tr = make_trainer(gmm, data, solver="ipndm", num_train=32, num_valid=32, main_valid_batch_size=32,
                      training_rounds_v1=2, training_rounds_v2=2)
    tr.train()
    test = split_data(data, 32, 32, 32)[2]
    t1, t2 = tr.best_timesteps()
    fn = gmm.model_fn()
    solver = get_solver("ipndm", gmm.noise_schedule)
    kw = dict(make_model_fn=lambda c, u: fn, loss_fn=get_loss("l2"), data=test)
    learned = evaluate_grid(solver, timesteps=t1, model_timesteps=t2, **kw)["loss"]
    hand = {k: evaluate_grid(solver, timesteps=get_timesteps(k, gmm.noise_schedule, 4), **kw)["loss"]
            for k in ("time_uniform", "time_quadratic", "logSNR", "edm")}
    assert learned < 0.5 * min(hand.values()), (learned, hand)


# ------------------------------------------------------------------------------------------ resume, divergence
class _Interrupt(Exception):
    pass


def test_resume_after_interrupt_matches_uninterrupted(gmm, data16, tmp_path):
    ref = make_trainer(gmm, data16, run_dir=tmp_path / "ref")
    ref.train()

    def boom(trainer):
        if trainer.state["iter"] == 5:
            raise _Interrupt

    tr = make_trainer(gmm, data16, run_dir=tmp_path / "b", on_step=boom)
    with pytest.raises(_Interrupt):
        tr.train()
    tr2 = make_trainer(gmm, data16, run_dir=tmp_path / "b")
    assert tr2.try_resume()
    assert tr2.state["iter"] == 4  # the step that was interrupted had not been checkpointed yet
    tr2.train()
    assert torch.equal(tr2.param.params1, ref.param.params1)
    assert torch.equal(tr2.param.params2, ref.param.params2)
    assert torch.equal(tr2.latents_train, ref.latents_train)
    assert [h.get("valid_loss") for h in tr2.history] == [h.get("valid_loss") for h in ref.history]


_CHILD = r"""
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_learner import make_trainer, teacher_data
from ld3.models.zoo import load_model
gmm = load_model("analytic_gmm", dim=16, n_components=1, seed=0)
data = teacher_data(gmm, 48)
tr = make_trainer(gmm, data, run_dir={run!r}, on_step=lambda t: time.sleep(0.15), training_rounds_v2=3)
tr.train()
"""


def test_resume_after_sigkill(gmm, data16, tmp_path):
    """A real SIGKILL mid-run (atomic checkpoints): the resumed run ends exactly where an uninterrupted one does."""
    run = tmp_path / "killed"
    code = _CHILD.format(tests=str(REPO / "tests"), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO))
    ckpt = run / "checkpoint.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.is_file():
                try:
                    it = torch.load(ckpt, weights_only=False)["state"]["iter"]
                except Exception:  # pragma: no cover - atomic writes make this unreachable
                    it = -1
                if it >= 6:
                    break
            if proc.poll() is not None:
                pytest.fail("child finished before it could be killed")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    tr = make_trainer(gmm, data16, run_dir=run, training_rounds_v2=3)
    assert tr.try_resume() and 6 <= tr.state["iter"] < 16
    tr.train()
    ref = make_trainer(gmm, data16, training_rounds_v2=3)
    ref.train()
    assert torch.equal(tr.param.params1, ref.param.params1)
    assert torch.equal(tr.param.params2, ref.param.params2)


class _NaNAfter(torch.nn.Module):
    """L2, but NaN from the ``k``-th call on (a stand-in for a diverging loss)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, a, b):
        self.calls += 1
        v = (a - b).reshape(a.shape[0], -1).pow(2).mean(1)
        return v * float("nan") if self.calls >= self.k else v


def test_nan_stops_training_with_state_saved(gmm, data16, tmp_path):
    tr = make_trainer(gmm, data16, run_dir=tmp_path / "nan", loss=_NaNAfter(12))
    with pytest.raises(LD3DivergenceError, match=r"diverged at step \d+ .*non-finite .*loss.*saved in"):
        tr.train()
    sd = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)
    assert sd["status"] == "diverged"
    assert torch.isfinite(sd["params1"]).all() and torch.isfinite(sd["params2"]).all()
    assert sd["state"]["iter"] >= 1


def test_nan_timesteps_restore_last_good_params(gmm, data16, tmp_path):
    tr = make_trainer(gmm, data16, run_dir=tmp_path / "nan2")
    orig_step = tr.opt1.step

    def bad_step(*a, **k):
        orig_step(*a, **k)
        if tr.state["iter"] == 2:
            with torch.no_grad():
                tr.param.params1[2] = float("inf")

    tr.opt1.step = bad_step
    with pytest.raises(LD3DivergenceError, match="timesteps after the parameter update"):
        tr.train()
    sd = torch.load(tmp_path / "nan2" / "checkpoint.pt", weights_only=False)
    assert torch.isfinite(sd["params1"]).all()


# ------------------------------------------------------------------------------------------ losses
def test_simple_losses_match_formulas():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    d = (a - b).reshape(5, -1)
    assert torch.allclose(get_loss("l2")(a, b), (d**2).sum(1) / 48)
    assert torch.allclose(get_loss("l1")(a, b), d.abs().sum(1) / 48)
    c = 0.00054 * math.sqrt(48)
    assert torch.allclose(get_loss("pseudo_huber")(a, b), torch.sqrt((d**2).sum(1) + c * c) - c)
    assert torch.allclose(get_loss("pseudo_huber", c=0.5)(a, b), torch.sqrt((d**2).sum(1) + 0.25) - 0.5)
    with pytest.raises(ValueError, match="unknown loss 'lpip'"):
        get_loss("lpip")
    with pytest.raises(ValueError, match="feature_fn"):
        get_loss("feature", model=load_model("analytic_gmm"))


def test_feature_loss_is_lpips_like():
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))

    class M:
        name = "toy"

        @staticmethod
        def feature_fn(x):
            h = torch.nn.functional.conv2d(x, w, padding=1)
            return [h, torch.relu(h).mean((2, 3))]

    loss = get_loss("feature", model=M())
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(loss(x, x), torch.zeros(4), atol=1e-6)
    assert (loss(x, x + 0.5 * torch.randn_like(x)) > 0).all()
    assert torch.allclose(loss(x, 3.0 * x), torch.zeros(4), atol=1e-5)  # channel-normalized: scale invariant


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LD3_CACHE", str(tmp_path / "ld3cache"))
    return tmp_path


def test_lpips_missing_weights_message(no_hub):
    with pytest.raises(MissingWeightsError) as e:
        get_loss("lpips", net="vgg", cache_dir=str(no_hub / "w"))
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "scripts/download_model.sh" in msg and "loss=l2" in msg
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        get_loss("lpips", net="alex")
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        get_loss("lpips", backbone_path=str(no_hub / "nope.pth"))


def test_lpips_random_backbone_is_named_and_works():
    loss = get_loss("lpips", net="alex", backbone="random")
    assert loss.name == "lpips_alex[RANDOM-BACKBONE]"
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
    assert (loss(x, -x) > 0).all()
    with pytest.raises(ValueError, match="resize_to"):
        loss(x[..., :16, :16], x[..., :16, :16])
    small = get_loss("lpips", net="alex", backbone="random", resize_to=32)
    assert small(x[..., :16, :16], -x[..., :16, :16]).shape == (2,)


def test_lpips_loads_local_backbone_file(no_hub):
    """The trunk comes from a local torchvision-format file (features.* keys) into lpips' slices."""
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    feats = {k: v for k, v in tv.state_dict().items() if k.startswith("features.")}
    path = no_hub / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(feats, path)
    loss = get_loss("lpips", net="alex")  # found in the torch hub cache
    assert loss.backbone_file == str(path) and loss.name == "lpips_alex"
    own = loss.model.net.state_dict()
    assert len(own) == len(feats) == 10  # 5 convolutions: weight + bias
    for key, val in own.items():  # slice<k>.<i>.<leaf> <- features.<i>.<leaf>
        _, i, leaf = key.split(".")
        assert torch.equal(val, feats[f"features.{i}.{leaf}"]), key


# ------------------------------------------------------------------------------------------ pipeline / main.py
def _pipeline_cfg(tmp_path, **learner):
    lcfg = dict(num_train=8, num_valid=8, num_test=8, main_train_batch_size=4, main_valid_batch_size=8,
                training_rounds_v1=1, training_rounds_v2=1, log_path=str(tmp_path / "runs"))
    lcfg.update(learner)
    return {
        "steps": 4, "seed": 0, "device": "cpu",
        "model": {"name": "analytic_gmm", "options": {"dim": 16}, "default_loss": "l2"},
        "solver": {"name": "ddim", "options": {}},
        "learner": lcfg,
        "loss": None,
        "logger": {"backend": "local", "results_path": str(tmp_path / "results.jsonl")},
    }


def test_pipeline_outputs_and_idempotent_rerun(gmm, tmp_path):
    data = teacher_data(gmm, 24)
    cfg = _pipeline_cfg(tmp_path)
    res = run_ld3(cfg, data=data, loaded=gmm)
    run_dir = Path(res["run_dir"])
    assert run_dir.name == "ddim-N4-b0.001-l2-lr20.025rv11-rv21-seed0"
    for f in ("config.yaml", "log.txt", "best_v2.pt", "discretization.json", "training_curve.png",
              "schedule.png", "history.json", "result.json", "checkpoint.pt"):
        assert (run_dir / f).is_file(), f
    from ld3.discretizations import load

    d = load(run_dir / "discretization.json")
    assert d.source == "learned:ld3" and d.nfe == 4 and d.solver == "ddim" and len(d) == 5
    assert torch.allclose(d.timesteps, torch.tensor(res["timesteps"], dtype=torch.float64))
    assert set(res["handcrafted"]) == {"time_uniform", "time_quadratic", "logSNR", "edm"}
    assert res["eval_split"] == "test" and res["n_eval"] == 8
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["learned"] == res["learned"]
    mtime = (run_dir / "result.json").stat().st_mtime_ns
    res2 = run_ld3(cfg, data=data, loaded=gmm)
    assert res2["skipped"] and res2["learned"] == res["learned"]
    assert (run_dir / "result.json").stat().st_mtime_ns == mtime
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    # same run name, different decisive config -> refused, not silently reused
    cfg2 = _pipeline_cfg(tmp_path, validate_first_batch_only=False)
    with pytest.raises(ValueError, match="different configuration") as e:
        run_ld3(cfg2, data=data, loaded=gmm)
    assert "learner.validate_first_batch_only: True (existing) != False (requested)" in str(e.value)


def test_pipeline_lpips_missing_fails_before_training(gmm, tmp_path, no_hub):
    cfg = _pipeline_cfg(tmp_path)
    cfg["model"] = {"name": "analytic_gmm", "options": {"dim": 16}, "default_loss": "l2"}
    cfg["loss"] = {"name": "lpips", "net": "vgg", "cache_dir": str(tmp_path / "w")}
    with pytest.raises(MissingWeightsError, match="scripts/download_model.sh"):
        run_ld3(cfg, loaded=gmm)
    assert not (tmp_path / "runs").exists()


def test_main_help():
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=str(REPO), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "learner" in out.stdout and "steps" in out.stdout


@pytest.mark.slow
def test_main_end_to_end_on_analytic_model(tmp_path):
    assert (REPO / "configs" / "model" / "analytic_gmm.yaml").is_file()
    args = [
        sys.executable, "main.py", "model=analytic_gmm", "solver=ddim", "steps=3", "device=cpu",
        "learner.num_train=6", "learner.num_valid=6", "learner.num_test=6", "learner.main_train_batch_size=3",
        "learner.training_rounds_v1=1", "learner.training_rounds_v2=1", "teacher.steps=8",
        f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.results={tmp_path / 'results.jsonl'}", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(args, cwd=str(REPO), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = list((tmp_path / "runs").rglob("result.json"))
    assert len(res) == 1
    r = json.loads(res[0].read_text())
    assert r["model"] == "analytic_gmm" and r["nfe"] == 3
    out2 = subprocess.run(args, cwd=str(REPO), capture_output=True, text=True, timeout=300, env=env)
    assert out2.returncode == 0 and "already finished" in out2.stdout


def test_config_composes_with_presets():
    """config.yaml: the digits preset applies to model=digits only; loss null -> the model's default loss."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        d = compose(config_name="config")
        g = compose(config_name="config", overrides=["model=analytic_gmm"])
        off = compose(config_name="config", overrides=["~learner_preset"])
        lp = compose(config_name="config", overrides=["loss=lpips_vgg"])
    assert d.model.name == "digits" and d.steps == 6 and d.learner.main_train_batch_size == 5
    assert d.get("loss") is None and d.model.default_loss == "l2"
    assert g.learner.main_train_batch_size == 2 and g.learner.training_rounds_v2 == 5  # the reference's
    assert off.learner.main_train_batch_size == 2
    assert lp.loss.name == "lpips" and lp.loss.net == "vgg"
    assert LD3Config.from_dict({k: v for k, v in dict(d.learner).items() if k not in ("name", "log_path")})
