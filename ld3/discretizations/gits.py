"""Geometry-Inspired Time Scheduling (Chen, Zhou, Wang, Shen & Lyu 2024, "On the Trajectory Regularity
of ODE-based Diffusion Sampling", ICML; reference zju-pi/diff-sampler ``gits-main/gits_utils.py``).

1. Teacher: sample a batch x_T with a fine-grid solver (default iPNDM on ``grid_size`` = 61 points of
   the ``edm`` rho = 7 schedule, as in the reference's launch settings) and keep the trajectory
   {x_i} and the noise predictions eps_i at every fine-grid point.
2. Cost: for every pair i < j of fine-grid points, jump from the teacher's x_i to t_j with one step of
   the base method using eps_i (default ``ddim`` = Euler in the EDM noise level on y = x / alpha:
   y_j' = y_i + (s~_j - s~_i) eps_i), and compare with the teacher's y_j:
   ``l2``/``l1``: mean over the batch of ||y_j' - y_j||; ``dev`` (the reference's default): the
   distance of y_j' from the straight line through y_T and the teacher's final y_0, minus the
   teacher's own distance at j. Costs are measured in y = x / alpha (EDM coordinates), where the
   reference works.
3. Dynamic programming with ``coeff`` (default 1.15): V(i, 1) = C(i, M-1),
   V(j, k) = min_{j < i < M-1} C(j, i) + coeff * V(i, k - 1); backtracking from V(0, K) picks
   K + 1 = ``solver.num_timesteps(nfe)`` fine-grid points including both ends.

The cost matrix does not depend on the NFE or the student solver: compute it once with
:func:`gits_cost_matrix` and pass it as ``cost=`` to reuse it for several NFEs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ld3.discretizations.base import Discretization, Request, TimeLike, json_safe, lookup, register_kind
from ld3.schedules import NoiseSchedule

METRICS = ("dev", "l2", "l1")


@dataclass
class GITSCost:
    """Fine grid (descending) and the cost C[i, j] of a one-step jump from grid[i] to grid[j] (i < j)."""

    grid: torch.Tensor
    cost: np.ndarray
    config: Dict[str, Any] = field(default_factory=dict)


def prior_std(ns: NoiseSchedule) -> float:
    """Standard deviation of x_T used when drawing it: sigma_max for EDM models, 1 for VP models."""
    return float(ns.prior_scale)


def _resolve_solver(solver: Any, ns: NoiseSchedule, options: dict | None, what: str):
    from ld3.solvers import available, get_solver

    if isinstance(solver, str):
        if solver not in available():
            raise ValueError(f"{what}={solver!r} is not a registered solver; available: {available()}")
        return get_solver(solver, ns, **(options or {}))
    if solver is None or not hasattr(solver, "sample"):
        raise ValueError(f"{what} must be a solver name or a Solver object, got {solver!r}")
    return solver


def _teacher_trajectory(ns, model_fn, x_T, grid, teacher):
    """Run the teacher on the fine grid; return the states and noise predictions at every grid point."""
    calls: List[tuple] = []

    def recording_fn(x, t, *args, **kwargs):
        out = model_fn(x, t, *args, **kwargs)
        calls.append((x, t, out))
        return out

    with torch.no_grad():
        x0, traj = teacher.sample(recording_fn, x_T, grid, return_trajectory=True)
        if len(traj) != grid.numel():
            raise ValueError(
                f"teacher {getattr(teacher, 'name', teacher)!r} returned {len(traj)} trajectory states for a grid of "
                f"{grid.numel()} points; GITS needs one state per grid point"
            )
        traj = list(traj)
        traj[-1] = x0
        reuse = len(calls) == grid.numel() - 1 and all(
            torch.equal(c[0], traj[i]) and torch.allclose(torch.as_tensor(c[1], dtype=torch.float64).flatten()[0].cpu(),
                                                          grid[i].cpu())
            for i, c in enumerate(calls)
        )
        if reuse:
            eps = [c[2] for c in calls]
        else:  # multi-stage teachers evaluate elsewhere: one extra call per grid point
            eps = [model_fn(traj[i], grid[i].to(x_T.device).to(x_T.dtype).expand(x_T.shape[0]))
                   for i in range(grid.numel() - 1)]
    return traj, eps


def _deviation(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per-sample distance of ``points`` (B, D) from the line through start and end (B, D)."""
    bc = end - start
    unit = bc / bc.norm(dim=1, keepdim=True).clamp_min(1e-30)
    ac = end - points
    perp = ac - (ac * unit).sum(1, keepdim=True) * unit
    return perp.norm(dim=1)


def gits_cost_matrix(
    noise_schedule: NoiseSchedule,
    model_fn: Callable[..., torch.Tensor],
    x_T: torch.Tensor,
    *,
    grid: torch.Tensor | None = None,
    grid_size: int = 61,
    grid_kind: str = "edm",
    grid_options: dict | None = None,
    t_min: TimeLike | None = None,
    t_max: TimeLike | None = None,
    teacher: Any = "ipndm",
    teacher_options: dict | None = None,
    base: str = "ddim",
    metric: str = "dev",
    progress: bool = True,
) -> GITSCost:
    """Teacher trajectories on a fine grid and the one-step-jump cost matrix (steps 1-2 above)."""
    ns = noise_schedule
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not supported; allowed: {list(METRICS)}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 3:
        raise ValueError(f"grid_size must be an integer >= 3, got {grid_size!r}")
    if not isinstance(x_T, torch.Tensor) or x_T.dim() < 2 or x_T.shape[0] < 1:
        raise ValueError("x_T must be a batch tensor of shape (B, ...) with B >= 1")
    if grid is None:
        req = Request(ns, nfe=grid_size - 1, num_points=grid_size)
        grid = lookup(grid_kind)(req, t_min=t_min, t_max=t_max, **(grid_options or {}))
    grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    from ld3.solvers import validate_timesteps

    validate_timesteps(grid, ns, name="GITS fine grid")
    m = grid.numel()
    teacher_solver = _resolve_solver(teacher, ns, teacher_options, "teacher")
    traj, eps = _teacher_trajectory(ns, model_fn, x_T, grid, teacher_solver)

    b = x_T.shape[0]
    alpha = ns.marginal_alpha(grid, check=False)
    sig = ns.edm_sigma(grid, check=False)
    ys = [(traj[i].reshape(b, -1).to(torch.float64) / float(alpha[i])) for i in range(m)]

    base_solver = None
    if base != "ddim":
        base_solver = _resolve_solver(base, ns, None, "base")
        if base_solver.nfe(2) != 1:
            raise ValueError(f"base={base!r} spends {base_solver.nfe(2)} network calls per step; GITS needs 1")

    def jump(i: int, j: int) -> torch.Tensor:
        if base_solver is None:
            return ys[i] + (float(sig[j]) - float(sig[i])) * eps[i].reshape(b, -1).to(torch.float64)
        cached = eps[i]
        with torch.no_grad():
            xj = base_solver.sample(lambda x, t, *a, **k: cached, traj[i], grid[[i, j]])
        return xj.reshape(b, -1).to(torch.float64) / float(alpha[j])

    if metric == "dev":
        start, end = ys[0], ys[-1]
        dev_teacher = [float(_deviation(ys[j], start, end).mean()) for j in range(m)]
        dev_teacher[-1] = 0.0
    cost = np.full((m, m), np.inf)
    rows = tqdm(range(m - 1), desc="GITS cost matrix", disable=not progress, leave=False)
    for i in rows:
        for j in range(i + 1, m):
            y_next = jump(i, j)
            if metric == "l2":
                cost[i, j] = float((y_next - ys[j]).norm(dim=1).mean())
            elif metric == "l1":
                cost[i, j] = float((y_next - ys[j]).abs().sum(dim=1).mean())
            else:
                cost[i, j] = float(_deviation(y_next, start, end).mean()) - dev_teacher[j]
    config = {
        "grid_size": m,
        "grid_kind": grid_kind,
        "grid_options": json_safe(grid_options or {}),
        "teacher": getattr(teacher_solver, "name", str(teacher)),
        "teacher_options": json_safe(teacher_options or {}),
        "base": base,
        "metric": metric,
        "num_samples": b,
    }
    return GITSCost(grid=grid, cost=cost, config=config)


def gits_select(cost: Union[GITSCost, np.ndarray], num_points: int, coeff: float = 1.15) -> List[int]:
    """Indices of ``num_points`` fine-grid points chosen by the dynamic program (step 3 above)."""
    c = cost.cost if isinstance(cost, GITSCost) else np.asarray(cost, dtype=np.float64)
    m = c.shape[0]
    k_max = num_points - 1
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    if k_max > m - 1:
        raise ValueError(f"cannot pick {num_points} points from a fine grid of {m}; raise grid_size")
    if not coeff > 0:
        raise ValueError(f"coeff must be > 0, got {coeff}")
    v = np.full((m, k_max + 1), np.inf)
    arg = np.full((m, k_max + 1), -1, dtype=np.int64)
    v[:, 1] = c[:, m - 1]
    v[m - 1, 1] = np.inf  # a jump needs two distinct points
    for k in range(2, k_max + 1):
        for j in range(m - 2):
            cand = c[j, j + 1 : m - 1] + coeff * v[j + 1 : m - 1, k - 1]
            if cand.size == 0:
                continue
            best = int(np.argmin(cand))
            if np.isfinite(cand[best]):
                v[j, k] = cand[best]
                arg[j, k] = j + 1 + best
    if not np.isfinite(v[0, k_max]):
        raise ValueError(f"no path of {k_max} steps through the fine grid of {m} points")
    path, w = [0], 0
    for k in range(k_max, 1, -1):
        w = int(arg[w, k])
        path.append(w)
    path.append(m - 1)
    return path


@register_kind("gits")
def gits(
    req: Request,
    *,
    model_fn: Callable[..., torch.Tensor] | None = None,
    x_T: torch.Tensor | None = None,
    shape: tuple | None = None,
    num_samples: int = 256,
    seed: int = 0,
    generator: torch.Generator | None = None,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    coeff: float = 1.15,
    grid_size: int = 61,
    grid_kind: str = "edm",
    grid_options: dict | None = None,
    teacher: Any = "ipndm",
    teacher_options: dict | None = None,
    base: str = "ddim",
    metric: str = "dev",
    t_min: TimeLike | None = None,
    t_max: TimeLike | None = None,
    cost: GITSCost | None = None,
    progress: bool = True,
) -> Discretization:
    """GITS schedule for the model at hand (needs ``model_fn`` and ``x_T``, or ``shape`` to draw x_T)."""
    ns = req.noise_schedule
    if cost is None:
        if model_fn is None:
            raise ValueError("the 'gits' kind needs model_fn=<noise-prediction model function> or a precomputed cost=")
        if x_T is None:
            if shape is None:
                raise ValueError("the 'gits' kind needs x_T=<batch of initial noise> or shape=<sample shape>")
            if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
                raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
            gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
            x_T = torch.randn((num_samples, *tuple(shape)), generator=gen, dtype=dtype) * prior_std(ns)
            if device is not None:
                x_T = x_T.to(device)
        cost = gits_cost_matrix(
            ns, model_fn, x_T, grid_size=grid_size, grid_kind=grid_kind, grid_options=grid_options,
            t_min=t_min, t_max=t_max, teacher=teacher, teacher_options=teacher_options, base=base,
            metric=metric, progress=progress,
        )
    elif not isinstance(cost, GITSCost):
        raise ValueError(f"cost must be a GITSCost from gits_cost_matrix, got {type(cost).__name__}")
    idx = gits_select(cost, req.num_points, coeff)
    t = cost.grid[idx].clone()
    return Discretization(
        timesteps=t,
        source="gits",
        solver=req.solver_name,
        nfe=req.nfe,
        config={**cost.config, "coeff": coeff, "indices": idx},
    )


# ----------------------------------------------------------------------------- the model at hand
def gits_model_fn(
    model: Any, guidance_type: str | None = None, guidance_scale: float | None = None
) -> Callable[..., torch.Tensor]:
    """The noise predictor GITS measures for a loaded zoo model (one rule for the learner, gen_data, eval_fid).

    GITS calls ``model_fn(x, t)`` without conditions. Models without classes run as configured when
    unguided and as the unconditional network otherwise (``guidance_type='uncond'``; text models:
    no prompt). Class-conditional models run the configured sampler (guidance type and scale) on
    balanced labels ``i mod num_classes`` for row i (deterministic), with the null class as the
    unconditional condition where the model has one: every guidance type works, including
    classifier-free guidance, which needs both conditions.
    """
    gtype = guidance_type or getattr(model, "default_guidance", "uncond")
    n_cls = getattr(model, "num_classes", None)
    if not n_cls:
        if gtype == "uncond":
            return model.model_fn(guidance_type="uncond", guidance_scale=guidance_scale)
        return model.model_fn(guidance_type="uncond")
    guided = model.model_fn(guidance_type=gtype, guidance_scale=guidance_scale)
    null = getattr(model, "null_class", None)

    def fn(x: torch.Tensor, t: Any) -> torch.Tensor:
        labels = torch.arange(x.shape[0], device=x.device) % int(n_cls)
        uncond = None if null is None else torch.full_like(labels, int(null))
        return guided(x, t, condition=labels, unconditional_condition=uncond)

    return fn


def with_model_options(
    kind: str, options: Dict[str, Any], model: Any, device: Any = None,
    guidance_type: str | None = None, guidance_scale: float | None = None,
) -> Dict[str, Any]:
    """``options`` of a discretization ``kind`` completed for a loaded model: for ``gits`` without a
    precomputed ``cost`` or a ``model_fn``, :func:`gits_model_fn`, the sample ``shape`` and ``device``."""
    opts = dict(options or {})
    if str(kind).lower() == "gits" and opts.get("cost") is None and opts.get("model_fn") is None:
        opts["model_fn"] = gits_model_fn(model, guidance_type, guidance_scale)
        opts.setdefault("shape", tuple(model.shape))
        if device is not None:
            opts.setdefault("device", device)
    return opts
