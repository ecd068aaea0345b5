"""Every experiment family runs one learner step on a tiny real-format model of its family (issue 11).

One experiment per (family, solver, learner) group: its NFE variants differ only in ``steps`` (all of them
compose in tests/test_experiment_configs.py). Each case composes ``+experiment=<name>`` as main.py does,
points the model at a tiny instance in the release's on-disk format (built by the zoo tests' writers:
tests/_edm_fixtures.py, tests/test_zoo_entry_points.py's ADM, tests/test_zoo_ldm.py, tests/_sd_fixtures.py),
keeps everything else the experiment sets (solver and its preset options, guidance, teacher, learner, loss)
and shrinks only sizes, then runs ``ld3.learners.pipeline.run_learner`` (what main.py calls) for one step.
LPIPS uses ``loss.backbone=random`` (no VGG weights offline; the loss's own tests cover the real backbone)
and ``loss.resize_to=16`` (the tiny models make 8x8 images, below VGG's 16x16 minimum).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _group(name: str) -> str:
    return name.rsplit("_nfe", 1)[0]


# one representative per group: the smallest NFE (cheapest)
REPRESENTATIVE = {}
for _n in sorted(EXPERIMENTS, key=lambda n: (int(n.rsplit("_nfe", 1)[1]), n)):
    REPRESENTATIVE.setdefault(_group(_n), _n)
CASES = sorted(v for k, v in REPRESENTATIVE.items() if not k.startswith("ld3_digits"))  # digits: the other file
# main.py cannot run these yet: (why, the start of the error the learner raises today). Once it can, the
# pytest.raises below fails: delete the entry.
KNOWN_GAPS: dict = {}


def _model_of(name: str) -> str:
    for line in (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines():
        if line.strip().startswith("- override /model:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"experiment {name} has no model override")


def _edm(d: Path) -> tuple:
    from _edm_fixtures import write_snapshot

    return [f"model.options.path={write_snapshot('ddpmpp_edm_uncond', d / 'edm.pkl')}"], None


def _adm(d: Path) -> tuple:
    from test_zoo_entry_points import _adm_tiny

    opts = _adm_tiny(d)["options"]
    return [], opts


def _ldm(variant: str):
    def build(d: Path) -> tuple:
        from test_zoo_ldm import write_tiny_ldm_checkpoint

        path, _ = write_tiny_ldm_checkpoint(d, variant)
        # the tiny architecture is in the config.yaml next to the checkpoint (as in the release's folders), not
        # the released variant's
        return [f"++model.options.path={path}", "model.options.variant=null"], None
    return build


def _sd(d: Path) -> tuple:
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from _sd_fixtures import write_tiny_sd_pipeline

    root = write_tiny_sd_pipeline(d / "sd")
    (d / "prompts.txt").write_text("a cat\na dog\n")
    # the preset names the COCO captions file; point it at a tiny prompts file
    return [f"model.options.checkpoint={root.name}", f"model.options.weights_dir={root.parent}",
            "model.options.height=16", "model.options.width=16", f"teacher.prompt_path={d / 'prompts.txt'}"], None


TINY = {"edm_cifar10": _edm, "edm_afhqv2": _edm, "edm_ffhq": _edm, "adm_imagenet64": _adm,
        "ldm_lsun_bedroom": _ldm("lsun_bedroom"), "ldm_cin256": _ldm("cin256"), "sd_v1_5": _sd}


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_every_group_has_a_case_and_a_tiny_model():
    assert len(CASES) == len({_group(n) for n in EXPERIMENTS}) - 3  # 3 digits groups are run elsewhere
    assert {_model_of(n) for n in CASES} <= set(TINY)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_experiment_learns_one_step_on_tiny_model(name, tmp_path):
    from ld3.learners.pipeline import run_learner

    model = _model_of(name)
    if not (CONFIGS / "model" / f"{model}.yaml").is_file():
        pytest.skip(f"configs/model/{model}.yaml not in this checkout")
    base = _compose([f"+experiment={name}"])
    if str(base.loss.get("name", "")).startswith("lpips"):
        pytest.importorskip("lpips")
    model_over, options = TINY[model](tmp_path)
    sizes = ["learner.num_train=2", "learner.num_valid=2", "learner.num_test=0"]
    if base.learner.name == "ld3":
        sizes += ["learner.max_iters=1", "learner.main_train_batch_size=1", "learner.main_valid_batch_size=2",
                  "learner.training_rounds_v1=1", "learner.training_rounds_v2=1"]
    else:
        sizes += ["learner.total_iters=1", "learner.batch_size=2", "learner.eval_batch_size=2"]
    loss = ["loss.backbone=random", "loss.resize_to=16"] if str(base.loss.get("name", "")).startswith("lpips") else []
    cfg = _compose([f"+experiment={name}", *model_over, *sizes, *loss, "device=cpu", "logger=disabled",
                    "teacher.steps=3", "teacher.sampling_batch_size=4", f"paths.data_dir={tmp_path / 'data'}",
                    f"paths.runs_dir={tmp_path / 'runs'}", f"paths.fid_refs={tmp_path / 'refs'}",
                    f"learner.log_path={tmp_path / 'learn'}", f"paths.results={tmp_path / 'results.jsonl'}"])
    if options is not None:  # loader options that are dicts (architectures): replace the release's options
        with open_dict(cfg):
            cfg.model.options = OmegaConf.create(options)
    # what the experiment sets is still there
    for key in ("steps", "solver", "discretization", "loss.name", "loss.net", "model.name", "model.guidance_type",
                "model.guidance_scale", "learner.name", "teacher.solver", "teacher.discretization", "learner.lr",
                "learner.time_mode", "learner.win_rate", "learner.lr_time_1", "learner.tune_type"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(base, key), key
    if name in KNOWN_GAPS:
        why, error = KNOWN_GAPS[name]
        with pytest.raises(ValueError, match=error):
            run_learner(cfg)
        pytest.xfail(why)
    run_learner(cfg)
    found = sorted((tmp_path / "learn").glob("*/discretization.json"))
    assert len(found) == 1, found
    disc = json.loads(found[0].read_text())
    assert disc["nfe"] == cfg.steps
    ts = disc["timesteps"]
    assert all(a > b for a, b in zip(ts, ts[1:], strict=False)), ts
    if cfg.solver.name != "pfdiff":  # PFDiff's grid has more points than NFE + 1 (it skips network calls)
        assert len(ts) == cfg.steps + 1
