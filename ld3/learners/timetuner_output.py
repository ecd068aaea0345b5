"""TimeTuner's ratios tuned through any solver against the teacher's final samples (``objective: solver_output``).

TimeTuner (Xia et al., CVPR 2024) feeds the network the time r_i * t_i at step i while every solver
coefficient stays at t_i. The paper tunes each r_i for DDIM with a per-step objective (the noise
prediction after the step should match the one before it; :meth:`ld3.learners.timetuner.TimeTuner.
optimize_timesteps`, ``objective: ddim_step``). Ratios tuned for DDIM do not carry over to higher-order
solvers (iPNDM, UniPC, DPM-Solver++), whose steps combine several network outputs.

This objective (ours, not the paper's) keeps TimeTuner's parameterisation - one network-time ratio per
grid point that starts a step, coefficients at the fixed grid - and tunes all ratios jointly through the
run's own solver, minimising the run's loss between the solver's output and the teacher's final sample
on the training pairs (as LD3 does for its grid). Ratios are log-parameterised (r = exp(u), u = 0 at the
start) and trained with Adam on mini-batches; the network time r_i t_i is clamped to the schedule's
[eps, T]. Every ``valid_every`` iterations (and at the end) the ratios are scored on the validation pairs
(original latents); the best scoring ratios are returned, and all ratios 1 (the base grid) when no
candidate beats the base grid on validation.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple

import torch

from ld3.learners.ld3 import LD3Data, evaluate_grid, prior_scale

ModelFnFactory = Callable[[Any, Any], Callable[..., torch.Tensor]]


def ratio_model_timesteps(timesteps: torch.Tensor, ratios: torch.Tensor, noise_schedule: Any) -> torch.Tensor:
    """Network times: clamp(r_i t_i, eps, T) at the points that start a step; the end point keeps its time."""
    mt = (ratios.to(timesteps) * timesteps[:-1]).clamp(float(noise_schedule.eps), float(noise_schedule.T))
    return torch.cat([mt, timesteps[-1:]])


def tune_ratios_solver_output(
    solver: Any,
    make_model_fn: ModelFnFactory,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train: LD3Data,
    valid: LD3Data,
    timesteps: torch.Tensor,
    *,
    lr: float,
    total_iters: int,
    batch_size: int,
    valid_every: int = 10,
    seed: int = 0,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eval_batch_size: int = 256,
    device: Any = "cpu",
    on_iter: Callable[[Dict[str, Any]], None] | None = None,
) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Tune one ratio per step through ``solver``; returns (ratios (float64 CPU, one per step), info).

    ``info``: ``history`` (one row per iteration: train loss, and the validation loss where scored),
    ``valid_loss_base`` / ``valid_loss_tuned`` (validation loss of all ratios 1 / of the returned ratios),
    ``best_iter`` (0: the base grid was kept).
    """
    if not (isinstance(total_iters, int) and total_iters >= 1):
        raise ValueError(f"total_iters must be an integer >= 1, got {total_iters!r}")
    if not (isinstance(valid_every, int) and valid_every >= 1):
        raise ValueError(f"valid_every must be an integer >= 1, got {valid_every!r}")
    if not (math.isfinite(float(lr)) and float(lr) > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    device = torch.device(device)
    ns = solver.noise_schedule
    ts = timesteps.detach().to(torch.float64).cpu()
    n = ts.numel() - 1
    sel = valid if len(valid) else train
    ev = dict(decode=decode, batch_size=eval_batch_size, device=device)

    def score(r: torch.Tensor) -> float:
        with torch.no_grad():
            mt = ratio_model_timesteps(ts, r, ns)
            return evaluate_grid(solver, make_model_fn, loss_fn, sel, ts, mt, **ev)["loss"]

    u = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([u], lr=float(lr))
    base = score(torch.ones(n, dtype=torch.float64))
    best = (base, torch.ones(n, dtype=torch.float64), 0)
    gen = torch.Generator().manual_seed(int(seed))
    scale = prior_scale(ns)
    bs = min(int(batch_size), len(train))
    history: List[Dict[str, Any]] = []
    order = torch.randperm(len(train), generator=gen)
    pos = 0
    t_dev = ts.to(device)
    for it in range(1, total_iters + 1):
        if pos + bs > len(train):
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        cond, uncond = train.cond(idx, device)
        fn = make_model_fn(cond, uncond)
        mt = ratio_model_timesteps(t_dev, torch.exp(u).to(device), ns)
        x0 = solver.sample(fn, train.latents[idx].to(device) * scale, t_dev, model_timesteps=mt)
        out = x0 if decode is None else decode(x0)
        loss = loss_fn(out, train.targets[idx].to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row: Dict[str, Any] = {"kind": "train", "iter": it, "train_loss": float(loss.detach()),
                               "ratios": torch.exp(u.detach()).tolist()}
        if not math.isfinite(row["train_loss"]) or not torch.isfinite(u.detach()).all():
            raise FloatingPointError(f"TimeTuner (solver_output) iteration {it}: loss {row['train_loss']} / "
                                     f"ratios {row['ratios']} became non-finite")
        if it % valid_every == 0 or it == total_iters:
            r = torch.exp(u.detach())
            row["valid_loss"] = score(r)
            if row["valid_loss"] < best[0]:
                best = (row["valid_loss"], r.clone(), it)
        history.append(row)
        if on_iter is not None:
            on_iter(row)
    # report the ratios the solver actually used (the clamp to [eps, T] included)
    ratios = ratio_model_timesteps(ts, best[1], ns)[:-1] / ts[:-1]
    return ratios, {"history": history, "valid_loss_base": base, "valid_loss_tuned": best[0], "best_iter": best[2]}


__all__ = ["ratio_model_timesteps", "tune_ratios_solver_output"]
