"""A new schedule family is one class: a toy family defined only in this file runs through sampling,
teacher-data generation and one LD3 training step without touching any module of the package.

The toy is the rectified-flow interpolation x_t = (1 - t) x_0 + t eps on t in [1e-3, 0.995], with
conventions chosen to differ from every built-in family: the network takes 1000 t, LD3's default
time mode is ``lambda``. Ground truth is independent of the code under test: the closed-form
probability-flow ODE solution of one Gaussian (``AnalyticGMM.ode_solution``) and the formulas here.
"""

from __future__ import annotations

import math

import torch

from ld3.data import TeacherDataset, generate_teacher_data
from ld3.discretizations import get_timesteps
from ld3.learners import LD3Config, LD3Data, LD3Trainer, get_loss
from ld3.learners.ld3 import split_data
from ld3.models.analytic import AnalyticGMM
from ld3.models.zoo import LoadedModel
from ld3.schedules import NoiseSchedule, _as_tensor
from ld3.solvers import get_solver

DIM = 8


class RectifiedFlowSchedule(NoiseSchedule):
    """alpha_t = 1 - t, sigma_t = t; lambda = log((1 - t) / t), so t = sigmoid(-lambda)."""

    kind = "toy_rectified_flow"
    default_time_mode = "lambda"

    def __init__(self, eps: float = 1e-3, T: float = 0.995) -> None:
        self.eps, self.T = eps, T

    def marginal_log_mean_coeff(self, t, check=True):
        t = self.check_t(t) if check else _as_tensor(t)
        return torch.log1p(-t)

    def marginal_std(self, t, check=True):
        t = self.check_t(t) if check else _as_tensor(t)
        return t

    def marginal_lambda(self, t, check=True):
        t = self.check_t(t) if check else _as_tensor(t)
        return torch.log1p(-t) - torch.log(t)

    def inverse_lambda(self, lamb):
        return torch.sigmoid(-_as_tensor(lamb))

    def model_time_input(self, t):
        return 1000.0 * t

    def inverse_model_time_input(self, t_input):
        return t_input / 1000.0


def toy_model():
    ns = RectifiedFlowSchedule()
    gmm = AnalyticGMM.random(ns, dim=DIM, n_components=1, seed=3)
    net = gmm.network("noise")
    seen = []

    def network(x, t_input, *args):
        seen.append(torch.as_tensor(t_input).detach().double().reshape(-1))
        return net(x, t_input, *args)

    model = LoadedModel(name="toy_rf", noise_schedule=ns, network=network, model_type="noise", shape=(DIM,))
    return model, gmm, seen


def test_schedule_conventions_come_from_the_class():
    ns = RectifiedFlowSchedule()
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    assert torch.allclose(ns.marginal_alpha(t), 1 - t) and torch.allclose(ns.edm_sigma(t), t / (1 - t))
    assert torch.allclose(ns.inverse_lambda(ns.marginal_lambda(t)), t)
    assert ns.prior_scale == 1.0 and ns.time_unit == "t" and ns.discrete_steps is None


def test_sampling_teacher_data_and_one_ld3_step(tmp_path):
    model, gmm, seen = toy_model()
    ns = model.noise_schedule

    # sampling: DPM-Solver++(2M) on the logSNR grid converges to the exact ODE solution at second order
    z = torch.randn(16, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gmm.ode_solution(z, ns.T, ns.eps)
    solver = get_solver("dpm_solver++", ns, order=2)
    errs = {}
    for nfe in (40, 80):
        seen.clear()
        ts = get_timesteps("logSNR", ns, nfe, solver=solver)
        assert math.isclose(float(ts[0]), 0.995) and math.isclose(float(ts[-1]), 1e-3)
        with torch.no_grad():
            x0 = solver.sample(model.model_fn(), z, ts)
        errs[nfe] = float((x0 - exact).norm() / exact.norm())
        # the network saw the toy's own time input 1000 t at the grid points
        assert torch.allclose(torch.unique(torch.cat(seen)), torch.unique(1000.0 * ts[:-1]))
    assert errs[40] < 5e-3 and errs[80] < errs[40] / 3, errs

    # teacher data: stored latents are the seeds' unit normals, images the exact ODE solution of them
    cfg = {
        "model": {"name": "toy_rf", "options": {}, "guidance_type": "uncond", "guidance_scale": 1.0},
        "solver": {"name": "dpm_solver++", "options": {"order": 2}},
        "discretization": {"kind": "logSNR", "options": {}},
        "steps": 80, "total_samples": 12, "sampling_batch_size": 4, "shard_size": 8,
        "data_dir": str(tmp_path / "teacher"), "progress": False, "dtype": "float64", "device": "cpu",
    }
    res = generate_teacher_data(cfg, model=model)
    assert res.generated == 12
    ds = TeacherDataset(res.path)
    batch = TeacherDataset.collate([ds[i] for i in range(len(ds))])
    lat, img = batch["latent"].double(), batch["img"].double()
    ref = gmm.ode_solution(lat * ns.prior_scale, ns.T, ns.eps)
    assert (img - ref).norm() / ref.norm() < 2e-3

    # one LD3 step: time_mode auto resolves to the toy's lambda; grid keeps the toy's endpoints
    lcfg = LD3Config(num_train=6, num_valid=6, main_train_batch_size=2, main_valid_batch_size=6,
                     training_rounds_v1=1, training_rounds_v2=0, max_iters=1)
    tr_data, va_data, _ = split_data(LD3Data(lat, img), 6, 6, 0)
    fn = model.model_fn()
    trainer = LD3Trainer(lcfg, get_solver("ddim", ns), 4, lambda c, u: fn, get_loss("l2"), tr_data, va_data)
    assert trainer.time_mode == "lambda"
    state = trainer.train()
    assert state["iter"] == 1
    t1, t2 = trainer.best_timesteps()
    assert t1.shape == (5,) and torch.isfinite(t1).all() and torch.isfinite(t2).all()
    assert math.isclose(float(t1[0]), ns.T, rel_tol=1e-9) and math.isclose(float(t1[-1]), ns.eps, rel_tol=1e-9)
    assert (t1[1:] < t1[:-1]).all()
