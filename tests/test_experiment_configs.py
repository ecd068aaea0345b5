"""Every ``configs/experiment/*.yaml`` composes with main.py's and eval_fid.py's configs.

Some experiments use model configs of the zoo (adm_*, ldm_*) that land with another change. Until then
those experiments are skipped with the missing file named; once any of the zoo's new model configs is
present, ``test_required_model_configs_present`` requires all of them, so a missing one fails loudly.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))

# model config names the experiments (and the zoo issue) rely on
PRESENT_BEFORE_ZOO = {"digits", "edm_cifar10", "edm_afhqv2", "edm_ffhq", "sd_v1_4", "sd_v1_5"}
# the zoo change's model configs that experiments use (it adds more, e.g. adm_imagenet256, ldm_lsun_church)
ADDED_BY_ZOO = {"adm_imagenet64", "ldm_lsun_bedroom", "ldm_cin256"}


def _model_of(name: str) -> str:
    for line in (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines():
        if line.strip().startswith("- override /model:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"experiment {name} has no model override")


def _compose(config_name, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def test_experiment_files_match_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_experiment_configs", ROOT / "scripts" /
                                                  "make_experiment_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0
    assert len(EXPERIMENTS) == len(list(mod.experiments()))


def test_required_model_configs_present():
    have = {p.stem for p in (CONFIGS / "model").glob("*.yaml")}
    assert PRESENT_BEFORE_ZOO <= have, sorted(PRESENT_BEFORE_ZOO - have)
    used = {_model_of(n) for n in EXPERIMENTS}
    assert used <= PRESENT_BEFORE_ZOO | ADDED_BY_ZOO, sorted(used - PRESENT_BEFORE_ZOO - ADDED_BY_ZOO)
    if not have & ADDED_BY_ZOO:
        pytest.skip(f"the zoo's model configs {sorted(ADDED_BY_ZOO)} are not merged yet")
    assert ADDED_BY_ZOO <= have, f"zoo merged but model configs missing: {sorted(ADDED_BY_ZOO - have)}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    model = _model_of(name)
    if not (CONFIGS / "model" / f"{model}.yaml").is_file():
        pytest.skip(f"configs/model/{model}.yaml not in this checkout yet (added by the zoo change)")
    cfg = _compose("config", [f"+experiment={name}"])
    e = cfg.experiment
    assert e.name == name and e.mirrors and e.paper and e.num_samples > 0
    assert f"nfe{cfg.steps}" in name
    if model == "digits":  # the embedded model: FD in its own feature space against its validation split
        assert cfg.fid.feature == "model" and cfg.fid.reference_images == "digits"
        return
    assert cfg.fid.feature == "inception" and str(cfg.fid.ref_stats).endswith(".npz")
    assert cfg.loss is not None and cfg.learner.name in ("ld3", "timetuner")
    assert os.path.basename(str(cfg.fid.inception_weights)) == "weights-inception-2015-12-05-6726825d.pth"
    # the same experiment drives eval_fid.py; a baseline is picked on the command line
    ev = _compose("eval_fid", [f"+experiment={name}", "discretization=time_uniform"])
    assert ev.discretization.kind == "time_uniform" and ev.steps == cfg.steps
    assert ev.fid.reference_images is None and ev.model.name == cfg.model.name


@pytest.mark.slow
def test_digits_experiment_learns_one_step_and_scores(tmp_path):
    """The embedded family end to end: main.py's learner (1 step) then eval_fid.py on the learned file."""
    from ld3.learners.pipeline import run_ld3
    from ld3.metrics.evaluate import run_from_config

    name = "ld3_digits_uni_pc_nfe4"
    common = ["device=cpu", "logger=disabled", f"paths.data_dir={tmp_path / 'data'}",
              f"paths.fid_refs={tmp_path / 'refs'}"]
    cfg = _compose("config", [f"+experiment={name}", *common, f"learner.log_path={tmp_path / 'learn'}",
                              "learner.max_iters=1", "learner.num_train=4", "learner.num_valid=4",
                              "learner.num_test=0", "learner.main_train_batch_size=2",
                              "learner.main_valid_batch_size=4", "teacher.sampling_batch_size=8"])
    assert cfg.steps == 4 and cfg.solver.name == "uni_pc" and cfg.loss is not None
    run_ld3(cfg)
    found = sorted((tmp_path / "learn").glob("*/discretization.json"))
    assert len(found) == 1
    ev = _compose("eval_fid", [f"+experiment={name}", *common, "discretization=learned",
                               f"discretization.options.path={found[0]}", "num_samples=32", "batch_size=16",
                               f"out_dir={tmp_path / 'fid'}", "progress=false", "save_grid=false"])
    res = run_from_config(ev)
    assert res["complete"] and res["nfe"] == 4 and res["fid"] > 0
