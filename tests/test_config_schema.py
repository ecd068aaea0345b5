"""One source of defaults: the structured configs of ld3/config_schema.py and the YAML files built on them.

* ``configs/learner/*.yaml`` and ``configs/solver/*.yaml`` start from a schema made from the dataclass / the
  solver's signature and hold only keys whose value differs from it (a repeated default fails here);
* the option defaults a solver config composes to are the ones the solver uses when given no options
  (compared through ``describe()``, the solver's own account of its settings), for every registered solver;
* a solver built from its composed config is rebuilt identically from its ``describe()`` (class, options and
  samples), for every registered solver;
* ``configs/gen_data.yaml`` and the ``teacher`` section of ``configs/config.yaml`` (kept as plain YAML) agree
  with ``GenDataConfig``'s defaults except for the listed, intended differences; so do the option defaults of
  ``configs/discretization/*.yaml`` with the keyword defaults of their kinds;
* composed configs keep working where configs travel: pickled into a fresh process (multirun launchers).
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ld3  # noqa: F401  (registers the schemas)
from ld3.config_schema import SCHEMA_GROUP, solver_option_defaults
from ld3.data.config import GenDataConfig
from ld3.learners.ld3 import LD3Config
from ld3.learners.timetuner_run import TimeTunerRunConfig
from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleVP
from ld3.solvers import available, get_solver

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
LEARNERS = {"ld3": LD3Config, "timetuner": TimeTunerRunConfig}
#: keys a learner YAML sets that are not dataclass fields (the run layout)
LEARNER_EXTRA = {"name", "log_path"}
#: gen_data.yaml keys that are Hydra / entry-point plumbing, not generator options
GEN_DATA_PLUMBING = {"defaults", "threads", "hydra"}
#: where gen_data.yaml deliberately differs from GenDataConfig (the dataclass also serves the Python API)
GEN_DATA_INTENDED = {"data_dir": "${paths.data_dir}/${model.name}"}
#: where config.yaml's teacher section deliberately differs from GenDataConfig
TEACHER_INTENDED = {
    "sampling_batch_size": 16,  # main.py: the progress bar moves per 16 samples (one invariant block on CPU)
    "data_dir": "${paths.data_dir}/${model.name}",
}


def _compose(config_name: str, overrides=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# ------------------------------------------------------------------------------------------------- learners
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learner_yaml_holds_only_what_differs(name):
    raw = _raw(CONFIGS / "learner" / f"{name}.yaml")
    assert raw.pop("defaults") == [f"/{SCHEMA_GROUP}/learner/{name}@_here_", "_self_"]
    defaults = _defaults(LEARNERS[name])
    for key, value in raw.items():
        assert key in defaults or key in LEARNER_EXTRA, f"learner/{name}.yaml: {key} is not a {name} option"
        assert key not in defaults or value != defaults[key], \
            f"learner/{name}.yaml repeats the default {key}={value!r}; remove it (the dataclass holds it)"


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learner_composes_to_every_dataclass_default(name):
    learner = OmegaConf.to_container(_compose("config", [f"learner={name}", "~learner_preset"]).learner,
                                     resolve=False)
    raw = _raw(CONFIGS / "learner" / f"{name}.yaml")
    expected = {**_defaults(LEARNERS[name]), **{k: v for k, v in raw.items() if k != "defaults"}}
    assert learner.pop("name") == name
    assert learner == expected
    LEARNERS[name].from_dict({k: v for k, v in learner.items() if k not in LEARNER_EXTRA | {"seed"}})


def test_timetuner_schema_accepts_the_ld3_keys_of_a_preset():
    """The digits preset sets LD3 keys; under learner=timetuner they compose (TimeTuner ignores them)."""
    learner = _compose("config", ["learner=timetuner"]).learner
    assert learner.main_train_batch_size == 5 and learner.lr == TimeTunerRunConfig.lr


# ------------------------------------------------------------------------------------------------- solvers
def _solver_yamls():
    return sorted(p.stem for p in (CONFIGS / "solver").glob("*.yaml"))


def test_every_registered_solver_has_a_config_on_its_schema():
    assert set(available()) <= set(_solver_yamls())
    for stem in _solver_yamls():
        raw = _raw(CONFIGS / "solver" / f"{stem}.yaml")
        defaults = raw.pop("defaults")
        if stem in available():
            assert defaults == [f"/{SCHEMA_GROUP}/solver/{stem}@_here_", "_self_"], stem
        else:  # an alias: includes a registered solver's config and adds nothing
            assert len(defaults) == 2 and defaults[0] in available() and defaults[1] == "_self_", stem
        target = stem if stem in available() else defaults[0]
        opts = solver_option_defaults(target)
        assert raw.pop("name", target) == target
        for key, value in (raw.pop("options", None) or {}).items():
            assert key in opts, f"solver/{stem}.yaml: {key} is not an option"
            assert value != opts[key], f"solver/{stem}.yaml repeats the default {key}={value!r}"
        assert not raw, f"solver/{stem}.yaml: unexpected keys {sorted(raw)}"


@pytest.fixture(scope="module")
def problem():
    ns = NoiseScheduleVP("linear")
    return ns, AnalyticGMM.random(ns, dim=2, n_components=2, seed=0, diagonal=True)


@pytest.mark.parametrize("name", available())
def test_config_defaults_are_the_solvers_defaults(name, problem):
    """Built from the composed config or from no options at all, a solver describes itself the same way."""
    ns, _ = problem
    scfg = OmegaConf.to_container(_compose("gen_data", [f"solver={name}"]).solver, resolve=True)
    assert scfg["name"] == name
    from_config = get_solver(name, ns, **scfg["options"]).describe()
    assert from_config == get_solver(name, ns).describe()
    for key, value in from_config.items():  # what the solver reports equals the config wherever the config says
        if key in scfg["options"] and scfg["options"][key] is not None:
            assert scfg["options"][key] == value, (name, key)


@pytest.mark.parametrize("name", available())
def test_describe_rebuilds_the_solver_of_every_config(name, problem):
    """A solver built from its Hydra config and one rebuilt from its ``describe()``: same class, same
    description, bitwise the same samples (tests/test_solvers_common.py does this for the option cases)."""
    ns, gmm = problem
    scfg = OmegaConf.to_container(_compose("gen_data", [f"solver={name}"]).solver, resolve=True)
    solver = get_solver(name, ns, **scfg["options"])
    desc = solver.describe()
    rebuilt = get_solver(desc["name"], ns, **{k: v for k, v in desc.items() if k != "name"})
    assert type(rebuilt) is type(solver) and rebuilt.describe() == desc
    nfe = next(n for n in range(6, 10) if _fits(solver, n))
    lam = torch.linspace(float(ns.marginal_lambda(torch.tensor(ns.T, dtype=torch.float64))),
                         float(ns.marginal_lambda(torch.tensor(ns.eps, dtype=torch.float64))),
                         solver.num_timesteps(nfe), dtype=torch.float64)
    ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = ns.T, ns.eps
    x = torch.randn(3, gmm.D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = solver.sample(gmm.eps, x, ts)
    assert torch.isfinite(out).all() and not torch.equal(out, x)
    assert torch.equal(rebuilt.sample(gmm.eps, x, ts), out)


def _fits(solver, nfe: int) -> bool:
    try:
        solver.num_timesteps(nfe)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------- teacher data (YAML)
def test_gen_data_yaml_agrees_with_gen_data_config():
    raw = {k: v for k, v in _raw(CONFIGS / "gen_data.yaml").items() if k not in GEN_DATA_PLUMBING}
    defaults = _defaults(GenDataConfig)
    defaults.pop("raw")
    assert set(defaults) == set(raw), "gen_data.yaml and GenDataConfig must list the same options"
    for key, value in raw.items():
        expected = GEN_DATA_INTENDED.get(key, defaults[key])
        assert value == expected, f"gen_data.yaml: {key}={value!r} but GenDataConfig's default is {defaults[key]!r}"


def test_teacher_section_agrees_with_gen_data_config():
    teacher = _raw(CONFIGS / "config.yaml")["teacher"]
    defaults = _defaults(GenDataConfig)
    fields = {f.name for f in dataclasses.fields(GenDataConfig)}
    assert set(teacher) <= fields, sorted(set(teacher) - fields)
    assert teacher["solver"]["options"] == {} and set(teacher["discretization"]) == {"kind", "options"}
    for key, value in teacher.items():
        if key in ("solver", "discretization"):
            continue
        expected = TEACHER_INTENDED.get(key, defaults[key])
        assert value == expected, f"config.yaml teacher.{key}={value!r}; GenDataConfig's default is {defaults[key]!r}"


def test_discretization_yamls_agree_with_the_kinds_signatures():
    """configs/discretization/*.yaml (plain YAML) spell out option defaults: each must be the kind's keyword
    default (``{}`` stands for a None mapping default, ``???`` for a required argument)."""
    import inspect

    from ld3.discretizations.base import lookup

    for path in sorted((CONFIGS / "discretization").glob("*.yaml")):
        raw = _raw(path)
        params = inspect.signature(lookup(raw["kind"])).parameters
        for key, value in (raw.get("options") or {}).items():
            assert key in params, f"{path.name}: {key} is not an option of {raw['kind']}"
            default = params[key].default
            if default is inspect.Parameter.empty:
                assert value == "???", (path.name, key)
            elif value == {}:
                assert default is None, (path.name, key, default)
            else:
                assert value == default, f"{path.name}: {key}={value!r} but the kind's default is {default!r}"


# ------------------------------------------------------------------------------------------------- plumbing
def test_composed_config_unpickles_in_a_fresh_process(tmp_path):
    """Multirun launchers (joblib, submitit) pickle the job's config: its schema types must be importable."""
    path = tmp_path / "cfg.pkl"
    path.write_bytes(pickle.dumps(_compose("config", ["learner=timetuner", "solver=deis"])))
    code = ("import pickle, sys; c = pickle.load(open(sys.argv[1], 'rb')); "
            "print(c.learner.lr, c.solver.options.quadrature_points)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(TimeTunerRunConfig.lr), "16"]
