"""Per-model presets (configs/learner_preset/<model>.yaml, configs/solver_preset/<model>/<solver>.yaml).

The expected values below were read from the LD3 reference (github vinhsuhi/LD3; file and line given at
each value), not from this project's output. With a checkout of the reference (``LD3_REFERENCE=/path``, or
/tmp/LD3ref), ``test_presets_match_the_reference_checkout`` also compares every preset key with its yml.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAPER_MODELS = ("edm_cifar10", "edm_ffhq", "edm_afhqv2", "ldm_lsun_bedroom", "ldm_cin256", "sd_v1_4", "sd_v1_5")


def _compose(overrides, config_name="config"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.mark.parametrize("model", PAPER_MODELS)
@pytest.mark.parametrize("solver", ["uni_pc", "ipndm", "dpm_solver++", "dpm_solver_pp"])
def test_every_preset_composes_and_validates(model, solver):
    from ld3.config_validation import validate_config

    assert (CONFIGS / "learner_preset" / f"{model}.yaml").is_file()
    cfg = _compose([f"model={model}", f"solver={solver}"])
    validate_config(cfg, "main")  # teacher (solver, grid, steps), student options and learner keys all valid
    assert cfg.teacher.solver.name == "uni_pc" and cfg.teacher.steps == 20
    assert cfg.learner.time_mode in ("lambda", "time")


# (model, key path, value, source in vinhsuhi/LD3)
REFERENCE_VALUES = [
    ("edm_cifar10", "solver.options.order", 3, "configs/cifar10.yml l.7 order: 3"),
    ("edm_cifar10", "solver.options.variant", "bh1", "configs/cifar10.yml l.5 unipc_variant: bh1"),
    ("edm_cifar10", "learner.time_mode", "lambda", "configs/cifar10.yml l.8"),
    ("edm_cifar10", "learner.lr_time_2", 0.1, "configs/cifar10.yml l.26"),
    ("edm_cifar10", "learner.main_train_batch_size", 2, "configs/cifar10.yml l.18"),
    ("edm_cifar10", "learner.main_valid_batch_size", 150, "configs/cifar10.yml l.19"),
    ("edm_cifar10", "learner.training_rounds_v2", 5, "configs/cifar10.yml l.23"),
    ("edm_cifar10", "teacher.solver.options.order", 3, "gen_data.py l.103-109 passes the yml's order"),
    ("edm_cifar10", "teacher.steps", 20, "scripts/gen_data.sh l.5 --steps 20"),
    ("edm_cifar10", "teacher.discretization.kind", "edm", "scripts/gen_data.sh l.7 --skip_type edm"),
    ("edm_ffhq", "learner.lr_time_1", 0.005, "configs/ffhq.yml l.25"),
    ("edm_afhqv2", "learner.patient", 5, "configs/afhqv2.yml l.33"),
    ("ldm_lsun_bedroom", "solver.options.variant", "bh2", "configs/latent_diff_LSUN.yml l.6"),
    ("ldm_lsun_bedroom", "solver.options.order", 3, "configs/latent_diff_LSUN.yml l.8"),
    ("ldm_lsun_bedroom", "learner.time_mode", "time", "configs/latent_diff_LSUN.yml l.14"),
    ("ldm_lsun_bedroom", "learner.main_train_batch_size", 1, "configs/latent_diff_LSUN.yml l.24"),
    ("ldm_lsun_bedroom", "learner.training_rounds_v2", 3, "configs/latent_diff_LSUN.yml l.29"),
    ("ldm_lsun_bedroom", "learner.lr_time_2", 0.001, "configs/latent_diff_LSUN.yml l.32"),
    ("ldm_lsun_bedroom", "teacher.solver.options.variant", "bh2", "gen_data.py l.108 unipc_variant from the yml"),
    ("ldm_cin256", "learner.lr_time_2", 0.001, "configs/latent_diff_imn.yml l.32"),
    ("ldm_cin256", "learner.main_valid_batch_size", 50, "configs/latent_diff_imn.yml l.25"),
    ("sd_v1_5", "solver.options.order", 2, "configs/stable_diff_v1-5.yml l.8"),
    ("sd_v1_5", "learner.num_train", 25, "configs/stable_diff_v1-5.yml l.26"),
    ("sd_v1_5", "learner.main_valid_batch_size", 1, "configs/stable_diff_v1-5.yml l.25"),
    ("sd_v1_4", "teacher.discretization.kind", "time_uniform", "scripts/gen_data.sh l.34 --skip_type time_uniform"),
]


def _get(cfg, path):
    node = cfg
    for k in path.split("."):
        node = node[k]
    return node


@pytest.mark.parametrize("model,key,value,source", REFERENCE_VALUES,
                         ids=[f"{m}-{k}" for m, k, _, _ in REFERENCE_VALUES])
def test_preset_values_are_the_reference_ones(model, key, value, source):
    cfg = _compose([f"model={model}"])  # solver uni_pc (the reference's solver_name)
    got = _get(cfg, key)
    assert got == value, f"{model} {key}: {got!r}, reference {value!r} ({source})"


def test_teacher_grids_are_the_reference_skip_types():
    """The reference's ``get_time_step_edm`` (samplers/general_solver.py l.299-315), written out here: rho = 7 on
    sigma for its VE-wrapped EDM models, on t itself for VP models (sigma_min = t_0, sigma_max = t_T)."""
    from ld3.discretizations import get_timesteps
    from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP

    def rho7(hi, lo, n):
        ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        return (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7

    edm = NoiseScheduleEDM(0.002, 80.0)
    kind = str(_compose(["model=edm_cifar10"]).teacher.discretization.kind)
    assert torch.allclose(get_timesteps(kind, edm, 20), rho7(80.0, 0.002, 20), rtol=1e-10, atol=0)
    # LDM betas (CompVis "linear": linspace(sqrt(0.0015), sqrt(0.0195), 1000)^2); reference T = 1, eps = 1/N
    vp = NoiseScheduleVP("discrete", betas=torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2)
    kind = str(_compose(["model=ldm_lsun_bedroom"]).teacher.discretization.kind)
    assert torch.allclose(get_timesteps(kind, vp, 20), rho7(1.0, 1e-3, 20), rtol=1e-10, atol=0)


def test_command_line_overrides_win_over_presets():
    cfg = _compose(["model=ldm_lsun_bedroom", "learner.lr_time_2=0.05", "solver.options.order=2",
                    "solver.options.variant=bh1", "teacher.steps=8", "teacher.discretization.kind=logSNR",
                    "learner.time_mode=lambda"])
    assert cfg.learner.lr_time_2 == 0.05 and cfg.learner.time_mode == "lambda"
    assert cfg.solver.options.order == 2 and cfg.solver.options.variant == "bh1"
    assert cfg.teacher.steps == 8 and cfg.teacher.discretization.kind == "logSNR"
    # a solver without a preset keeps its defaults; turning the presets off gives the group defaults
    assert _compose(["model=edm_cifar10", "solver=ddim"]).solver.options.eta == 0.0
    off = _compose(["model=edm_cifar10", "~learner_preset", "~solver_preset"])
    assert off.solver.options.order == 2 and off.learner.time_mode == "auto"
    assert off.teacher.discretization.kind == "logSNR"  # the discretization group again
    # the digits model keeps its own preset and the logSNR teacher of the results tables
    d = _compose([])
    assert d.learner.main_train_batch_size == 5 and d.teacher.discretization.kind == "logSNR"
    assert d.solver.options.order == 2


def test_experiments_and_eval_fid_get_the_preset_values():
    e = _compose(["+experiment=ld3_lsun_bedroom_uni_pc_nfe4"])
    assert e.solver.options.variant == "bh2" and e.solver.options.order == 3 and e.learner.lr_time_2 == 0.001
    assert e.teacher.discretization.kind == "poly"
    g = _compose(["+experiment=gits_cifar10_ipndm_nfe5"])
    assert g.solver.options.order == 4  # GITS' own iPNDM (diff-sampler max_order 4) wins over the preset's 3
    sd = _compose(["+experiment=ld3_sd15_ipndm_nfe4"])
    assert sd.teacher.discretization == "gits" and sd.teacher.solver == "ipndm" and sd.solver.options.order == 2
    ev = _compose(["+experiment=ld3_cifar10_uni_pc_nfe6", "discretization=edm"], config_name="eval_fid")
    assert ev.solver.options.order == 3 and ev.solver.options.variant == "bh1"  # scored with the learner's solver


def _reference_checkout() -> Path | None:
    for p in (os.environ.get("LD3_REFERENCE"), "/tmp/LD3ref"):
        if p and (Path(p) / "configs" / "cifar10.yml").is_file():
            return Path(p)
    return None


def test_presets_match_the_reference_checkout():
    ref = _reference_checkout()
    if ref is None:
        pytest.skip("no LD3 reference checkout (set LD3_REFERENCE=/path/to/vinhsuhi/LD3)")
    import yaml

    ymls = {"edm_cifar10": "cifar10.yml", "edm_ffhq": "ffhq.yml", "edm_afhqv2": "afhqv2.yml",
            "ldm_lsun_bedroom": "latent_diff_LSUN.yml", "ldm_cin256": "latent_diff_imn.yml",
            "sd_v1_4": "stable_diff_v1-4.yml", "sd_v1_5": "stable_diff_v1-5.yml"}
    for model, name in ymls.items():
        y = yaml.safe_load((ref / "configs" / name).read_text())
        cfg = _compose([f"model={model}"])
        assert y["solver_name"] == cfg.solver.name == cfg.teacher.solver.name
        assert y["order"] == cfg.solver.options.order == cfg.teacher.solver.options.order, model
        assert y["unipc_variant"] == cfg.solver.options.variant == cfg.teacher.solver.options.variant, model
        for k, v in cfg.learner.items():
            if k in y and k not in ("log_path", "prior_bound", "shift_lr", "seed"):
                assert y[k] == v, f"{model} learner.{k}: ours {v!r}, reference {y[k]!r}"
        assert y["fix_bound"] is False and cfg.learner.prior_bound is None  # both: 0.001 HWC / steps^2
        assert y["shift_lr"] is None and cfg.learner.shift_lr is None  # both: 12 / steps
