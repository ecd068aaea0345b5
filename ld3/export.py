"""Export a learned discretization to the arguments of other libraries' samplers.

    python -m ld3.export RUN_DIR --to diffusers [--scheduler-config PATH]

``RUN_DIR`` is a learner's run directory (its ``discretization.json``) or a discretization file itself.
The noise schedule comes from ``--scheduler-config`` (a diffusers ``scheduler_config.json``, or a pipeline
folder holding ``scheduler/scheduler_config.json``); without it, the run's ``config.json`` model is loaded
to read its schedule (needs the weights).

``--to diffusers`` prints, for stock diffusers schedulers (checked on diffusers 0.42):

* ``sigmas=[...]`` for ``EulerDiscreteScheduler.set_timesteps(sigmas=...)``: the integration grid as
  diffusers' VP noise level sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod) = sigma_t / alpha_t, all
  N + 1 points (the last is the final sigma). Exact for the integration grid.
* ``timesteps=[...]`` for ``set_timesteps(timesteps=...)`` of DPMSolverMultistepScheduler,
  DPMSolverSinglestepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, DDPMScheduler: the N integer
  training steps k = round(N_train t - 1) of the grid without its last point (the schedulers end at their
  ``final_sigmas_type``; 'sigma_min' is t = 1 / N_train). Rounding moves the grid when it is off the
  integer steps; the largest shift is printed.

Lost in both forms: the decoupled network times (``model_timesteps``): stock schedulers feed the network
the times of their own grid. The solver and its options are not carried either. ``LD3Scheduler``
(:mod:`ld3.integrations.diffusers`) keeps all of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ld3.discretizations import Discretization, load
from ld3.schedules import NoiseScheduleVP

#: schedulers whose ``set_timesteps`` accepts each form (diffusers 0.42)
TIMESTEPS_SCHEDULERS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler",
                        "HeunDiscreteScheduler", "DDPMScheduler")
SIGMAS_SCHEDULERS = ("EulerDiscreteScheduler",)


def _discretization_path(run: Path) -> Path:
    if run.is_file():
        return run
    for name in ("discretization.json", "best_v2.pt"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run}: no discretization.json or best_v2.pt found (is it a learner's run directory?)")


def _scheduler_config(path: Path) -> Dict[str, Any]:
    if path.is_dir():
        for cand in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise FileNotFoundError(f"{path}: no scheduler/scheduler_config.json or scheduler_config.json inside")
    return json.loads(path.read_text(encoding="utf-8"))


def _schedule_from_run(run: Path) -> NoiseScheduleVP:
    cfg_path = (run if run.is_dir() else run.parent) / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"no --scheduler-config given and {cfg_path} does not exist; pass --scheduler-config")
    model = json.loads(cfg_path.read_text(encoding="utf-8")).get("model") or {}
    from ld3.models.zoo import load_model

    ns = load_model(model["name"], **dict(model.get("options") or {})).noise_schedule
    if not isinstance(ns, NoiseScheduleVP) or ns.discrete_steps is None:
        raise ValueError(f"model {model.get('name')!r} has a {ns.kind} schedule; diffusers' stock schedulers need a "
                         f"discrete VP (DDPM-style) schedule")
    return ns


def _fmt(values: List[float]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def to_diffusers(d: Discretization, ns: NoiseScheduleVP) -> Dict[str, Any]:
    """The diffusers forms of a discretization (see the module docstring) and what each loses."""
    n_train = ns.discrete_steps
    if n_train is None:
        raise ValueError(f"a {ns.kind} schedule has no training steps; diffusers' stock schedulers need a discrete one")
    t = ns.check_grid(ns.time_from_unit(d.timesteps, d.time_unit).to(torch.float64), name="timesteps")
    mt = t if d.model_timesteps is None else ns.time_from_unit(d.model_timesteps, d.time_unit).to(torch.float64)
    sigmas = ns.edm_sigma(t)
    k_exact = t[:-1] * n_train - 1.0
    ks = torch.round(k_exact)
    if ks.min() < 0 or (ks[1:] >= ks[:-1]).any():
        ks_note = "the rounded steps are not distinct and in [0, N_train): the timesteps= form is not possible"
        ks_list: Optional[List[int]] = None
    else:
        ks_note = ""
        ks_list = [int(k) for k in ks.tolist()]
    decoupled = float((mt - t).abs().max())
    return {
        "sigmas": [float(s) for s in sigmas.tolist()],
        "timesteps": ks_list,
        "timesteps_note": ks_note,
        "max_step_shift": float((ks - k_exact).abs().max()),
        "final_t": float(t[-1]),
        "final_is_sigma_min": abs(float(t[-1]) - 1.0 / n_train) < 1e-9,
        "max_decoupling": decoupled,
        "num_train_timesteps": n_train,
        "solver": d.solver,
    }


def report_diffusers(d: Discretization, ns: NoiseScheduleVP, source: str) -> str:
    """The text printed by ``--to diffusers``."""
    e = to_diffusers(d, ns)
    lines = [f"# {source}: solver {e['solver']}, nfe {d.nfe}, {len(e['sigmas'])} grid points, "
             f"N_train = {e['num_train_timesteps']}",
             f"# {', '.join(SIGMAS_SCHEDULERS)}.set_timesteps(sigmas=...) (all points; the last is the final sigma):",
             f"sigmas = {_fmt(e['sigmas'])}"]
    if e["timesteps"] is None:
        lines.append(f"# timesteps=: {e['timesteps_note']}")
    else:
        lines += [f"# {', '.join(TIMESTEPS_SCHEDULERS)}.set_timesteps(timesteps=...) (integer training steps; the "
                  f"grid was moved by up to {e['max_step_shift']:.3g} steps by rounding):",
                  f"timesteps = {_fmt(e['timesteps'])}"]
        if e["final_is_sigma_min"]:
            lines.append("# the grid ends at t = 1/N_train: use final_sigmas_type='sigma_min'")
        else:
            lines.append(f"# LOST in timesteps=: the grid's end point t = {e['final_t']!r} (schedulers end at "
                         f"their final_sigmas_type)")
    if e["max_decoupling"] > 0:
        lines.append(f"# LOST in both forms: the decoupled network times (model_timesteps, up to "
                     f"{e['max_decoupling']:.3g} from the grid in t); stock schedulers feed the network their grid's "
                     f"times. Use ld3.integrations.diffusers.LD3Scheduler.from_discretization to keep them.")
    else:
        lines.append("# no decoupled network times in this file (model_timesteps == timesteps)")
    lines.append(f"# not carried: the solver ({e['solver']}) and its options; pick the matching stock scheduler")
    return "\n".join(lines)


EXPORTERS: Dict[str, Callable[[Discretization, NoiseScheduleVP, str], str]] = {"diffusers": report_diffusers}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ld3.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a learner's run directory or a discretization file")
    p.add_argument("--to", required=True, choices=sorted(EXPORTERS), help="target library")
    p.add_argument("--scheduler-config", type=Path, default=None,
                   help="diffusers scheduler_config.json (or a pipeline folder) giving the noise schedule")
    args = p.parse_args(argv)
    path = _discretization_path(args.run)
    d = load(path)
    if args.scheduler_config is not None:
        from ld3.models.zoo.diffusers_models import schedule_from_scheduler_config

        ns = schedule_from_scheduler_config(_scheduler_config(args.scheduler_config))
    else:
        ns = _schedule_from_run(args.run)
    print(EXPORTERS[args.to](d, ns, str(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
