"""Align Your Steps (Sabour, Fidler & Kreis 2024, arXiv 2404.14507): the published 10-step schedules.

AYS optimizes schedules per model with a KL upper bound on stochastic samplers; no optimizer code is
public, so only the published schedules can be used, and only for the models they were made for.

Published schedules (11 points = 10 steps, noisiest first):

* ``sd15`` (Stable Diffusion 1.5): discrete timesteps [999, 850, 736, 645, 545, 455, 343, 233, 124,
  24, 0], from NVIDIA's AYS quick-start page (research.nvidia.com/labs/toronto-ai/AlignYourSteps/
  howto.html). Paper Table 3 gives the same schedule as noise levels [14.615, ..., 0.029].
* ``sdxl`` (SDXL): discrete timesteps [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0], as given by
  diffusers' ``AysSchedules["StableDiffusionXLTimesteps"]`` (citing the AYS page); they agree with
  the paper's Table 3 noise levels [14.615, 6.315, ..., 0.029] to the rounding of integer timesteps.
* ``svd`` (Stable Video Diffusion, an EDM-type model with sigma in [0.002, 700]): noise levels
  [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002] (paper Table 3).

(The paper's Table 3 also lists DeepFloyd-IF stage 1; it starts at sigma = 160.41, below the
model's T, so it does not fit this package's "t_max = T" grids and is not included.)

Discrete timesteps k map to continuous time t = (k + 1) / N (N = 1000; DPM-Solver's convention), so
k = 999 is t = T = 1 and k = 0 is t = eps = 1/N. Other lengths use the quick-start page's log-linear
interpolation: log sigma~ (sigma~ = sigma_t / alpha_t) is interpolated linearly in the normalized
step index between the published points, then mapped back to t with
``noise_schedule.inverse_edm_sigma``. The published length is returned exactly.
"""

from __future__ import annotations

import re
from typing import Dict, List

import torch

from ld3.discretizations.base import Discretization, Request, register_kind
from ld3.schedules import RANGE_TOLERANCE, NoiseSchedule

#: published schedules: ("timesteps", [k...]) for 1000-step discrete VP models, ("sigma", [...]) otherwise
PUBLISHED: Dict[str, Dict] = {
    "sd15": {
        "form": "timesteps",
        "values": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0],
        "sigmas": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
        "source": "NVIDIA AYS quick-start page; paper Table 3",
    },
    "sdxl": {
        "form": "timesteps",
        "values": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0],
        "sigmas": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
        "source": "diffusers AysSchedules (from the AYS page); paper Table 3 noise levels",
    },
    "svd": {
        "form": "sigma",
        "values": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
        "source": "paper Table 3",
    },
}

_ALIASES = {
    "sd15": "sd15", "sdv15": "sd15", "stablediffusion15": "sd15", "stablediffusionv15": "sd15",
    "sdxl": "sdxl", "sdxlbase": "sdxl", "stablediffusionxl": "sdxl", "sdxl10": "sdxl",
    "svd": "svd", "stablevideodiffusion": "svd",
}

#: total number of training steps the published integer timesteps refer to
DISCRETE_STEPS = 1000


def published_models() -> List[str]:
    return sorted(PUBLISHED)


def resolve_model(model: str | None) -> str:
    """Map a model id (``sd15``, ``sd-v1-5``, ``stable_diffusion_xl``, ...) to a published key."""
    if model is None or str(model) == "":
        raise ValueError(f"the 'ays' kind needs model=<id>; published schedules exist for {published_models()}")
    key = re.sub(r"[^a-z0-9]", "", str(model).lower())
    if key not in _ALIASES:
        raise ValueError(
            f"no published Align-Your-Steps schedule for model {model!r}; AYS publishes schedules only for "
            f"{published_models()} (its optimizer is not public). Use another kind (e.g. 'gits' or 'dmn') "
            "or pass model=<one of those> explicitly if your model shares that noise schedule."
        )
    return _ALIASES[key]


def loglinear_interp(values: torch.Tensor, n: int) -> torch.Tensor:
    """Resample a decreasing positive sequence to ``n`` points, linearly in log value over [0, 1]."""
    m = values.numel()
    if n == m:
        return values.clone()
    logs = torch.log(values.flip(0))  # increasing
    xs = torch.linspace(0.0, 1.0, m, dtype=torch.float64)
    new = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    idx = torch.searchsorted(xs, new).clamp(1, m - 1)
    x0, x1 = xs[idx - 1], xs[idx]
    y0, y1 = logs[idx - 1], logs[idx]
    out = torch.exp(y0 + (new - x0) * (y1 - y0) / (x1 - x0)).flip(0)
    out[0], out[-1] = values[0], values[-1]  # endpoints exactly as published
    return out


def _check_sigma_range(sig: torch.Tensor, ns: NoiseSchedule, name: str) -> None:
    lo = float(ns.edm_sigma(torch.tensor(ns.eps, dtype=torch.float64)))
    hi = float(ns.edm_sigma(torch.tensor(ns.T, dtype=torch.float64)))
    s_max, s_min = float(sig.max()), float(sig.min())
    if s_max > hi * (1 + 1e-4) or s_min < lo * (1 - 1e-4):
        raise ValueError(
            f"the AYS schedule for {name!r} spans noise levels [{s_min}, {s_max}], outside this model's "
            f"range [{lo:.6g}, {hi:.6g}] ({ns.kind}); it was published for a different noise schedule"
        )


@register_kind("ays")
def ays(req: Request, *, model: str | None = None) -> Discretization:
    """The published AYS schedule of ``model``, log-linearly resampled to the requested length."""
    key = resolve_model(model)
    entry = PUBLISHED[key]
    ns = req.noise_schedule
    n = req.num_points
    if entry["form"] == "timesteps":
        if ns.discrete_steps != DISCRETE_STEPS:
            raise ValueError(
                f"the AYS schedule for {key!r} is given in integer timesteps of a {DISCRETE_STEPS}-step "
                f"discrete VP model; this model's schedule is {ns.kind} with N={ns.discrete_steps}"
            )
        t_pub = (torch.tensor(entry["values"], dtype=torch.float64) + 1.0) / DISCRETE_STEPS
        if n == t_pub.numel():
            t = t_pub
        else:
            sig = loglinear_interp(ns.edm_sigma(t_pub), n)
            t = torch.cat([t_pub[:1], ns.inverse_edm_sigma(sig[1:-1]), t_pub[-1:]])
    else:
        sig_pub = torch.tensor(entry["values"], dtype=torch.float64)
        _check_sigma_range(sig_pub, ns, key)
        sig = loglinear_interp(sig_pub, n)
        t = ns.time_from_unit(sig, "sigma")  # EDM: t = sigma exactly
        # clamp the rounding of the published endpoints onto the schedule's range
        tol = RANGE_TOLERANCE * max(abs(ns.T), 1.0)
        t = torch.where((t > ns.T) & (t <= ns.T * (1 + 1e-4) + tol), torch.full_like(t, ns.T), t)
        t = torch.where((t < ns.eps) & (t >= ns.eps * (1 - 1e-4) - tol), torch.full_like(t, ns.eps), t)
    return Discretization(
        timesteps=t,
        source=f"ays:{key}",
        model=key,
        config={"published": list(entry["values"]), "form": entry["form"], "reference": entry["source"]},
    )
