#!/usr/bin/env python
"""Accuracy of every solver against the exact ODE solution of an analytic Gaussian mixture.

For each noise schedule (default: DDPM's discrete VP and EDM), hand-crafted discretization
(time_uniform, time_quadratic, logSNR, edm; ``ld3.discretizations.get_timesteps`` with the solver, so
heun / pfdiff get their own grid lengths) and NFE in {3, 4, 5, 6, 8, 10, 15, 20}, x_T is transported to
t_min by the solver and compared with the probability-flow ODE solution (``AnalyticGMM.ode_solution``,
solve_ivp DOP853, rtol 1e-10). The error is the RMSE per coordinate, averaged over the batch,
relative to the RMS of the exact solution. "-" marks an NFE the solver cannot spend exactly (heun:
odd NFE only; pfdiff with the DPM-Solver-2 base: even only).

Writes ``<out>/solver_accuracy.md`` (one table per schedule x discretization) and
``<out>/solver_accuracy.png``.

Usage::

    python benchmarks/solver_accuracy.py                     # dim 64, 8 components, batch 32
    python benchmarks/solver_accuracy.py --schedules edm --out benchmarks/results
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from tqdm import tqdm

from ld3.cli import apply_threads, threads_arg
from ld3.discretizations import get_timesteps
from ld3.models import AnalyticGMM
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP, ddpm_linear_betas
from ld3.solvers import get_solver
from ld3.utils.io import atomic_write_bytes, atomic_write_text

NFES = (3, 4, 5, 6, 8, 10, 15, 20)
KINDS = ("time_uniform", "time_quadratic", "logSNR", "edm")
#: (registry name, options): the project defaults of every solver plus a few notable variants
SOLVERS: Tuple[Tuple[str, Dict], ...] = (
    ("ddim", {}),
    ("euler", {}),
    ("heun", {}),
    ("ipndm", {}),
    ("ipndm", {"variable_step": True}),
    ("dpm_solver++", {}),
    ("dpm_solver++", {"order": 3}),
    ("uni_pc", {}),
    ("uni_pc", {"variant": "bh2", "order": 3}),
    ("deis", {}),
    ("pfdiff", {}),
    ("pfdiff", {"k": 3, "h": 2}),
)
SCHEDULES = {
    "vp_discrete": lambda: NoiseScheduleVP("discrete", betas=ddpm_linear_betas()),
    "edm": lambda: NoiseScheduleEDM(),
}


def label(name: str, options: Dict) -> str:
    return name + ("" if not options else "(" + ",".join(f"{k}={v}" for k, v in options.items()) + ")")


def run(schedule: str, dim: int, components: int, batch: int, seed: int) -> Dict[str, Dict[str, Dict[int, float]]]:
    ns = SCHEDULES[schedule]()
    gmm = AnalyticGMM.random(ns, dim=dim, n_components=components, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    t_max = torch.tensor(ns.T, dtype=torch.float64)
    x_T = torch.randn(batch, dim, dtype=torch.float64, generator=g) * float(ns.marginal_std(t_max))
    t0 = time.perf_counter()
    ref = gmm.ode_solution(x_T, ns.T, ns.eps, rtol=1e-10, atol=1e-11)
    print(f"[{schedule}] reference solution in {time.perf_counter() - t0:.1f} s")
    scale = float(ref.pow(2).mean().sqrt())
    results: Dict[str, Dict[str, Dict[int, float]]] = {}
    jobs = [(kind, name, opts) for kind in KINDS for name, opts in SOLVERS]
    for kind, name, opts in tqdm(jobs, desc=f"{schedule}", leave=False):
        solver = get_solver(name, ns, **opts)
        row = results.setdefault(kind, {}).setdefault(label(name, opts), {})
        for nfe in NFES:
            try:
                ts = get_timesteps(kind, ns, nfe, solver=solver)
            except ValueError:
                continue  # this solver cannot spend exactly nfe evaluations
            with torch.no_grad():
                out = solver.sample(gmm.eps, x_T, ts)
            err = (out - ref).pow(2).mean(dim=1).sqrt().mean() / scale
            row[nfe] = float(err)
    return results


def fmt(v: float) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "nan"
    return f"{v:.2e}"


def to_markdown(all_results, args) -> str:
    lines = [
        "# Solver accuracy on an analytic Gaussian mixture",
        "",
        f"Command: `python benchmarks/solver_accuracy.py --dim {args.dim} --components {args.components} "
        f"--batch {args.batch} --seed {args.seed} --schedules {' '.join(args.schedules)}`",
        "",
        f"Mixture: dim {args.dim}, {args.components} components (covariance eigenvalues in [0.01, 0.25]), "
        f"batch {args.batch}. Entry: relative RMSE of x at t_min against the exact ODE solution; "
        "'-': NFE not reachable exactly by that solver.",
        "",
    ]
    for schedule, results in all_results.items():
        for kind in KINDS:
            lines += [f"## {schedule}, {kind} grid", "", "| solver | " + " | ".join(f"NFE {n}" for n in NFES) + " |"]
            lines.append("|---|" + "---:|" * len(NFES))
            for name, row in results[kind].items():
                best = [n for n in NFES if n in row]
                lines.append(f"| {name} | " + " | ".join(fmt(row.get(n)) for n in NFES) + " |" if best else "")
            lines.append("")
    return "\n".join(lines)


def plot(all_results) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rows = len(all_results)
    fig, axes = plt.subplots(rows, len(KINDS), figsize=(4.2 * len(KINDS) + 2.5, 3.6 * rows), squeeze=False, sharey=True)
    colors = plt.get_cmap("tab20").colors
    styles = ("-", "--")
    for r, (schedule, results) in enumerate(all_results.items()):
        for c, kind in enumerate(KINDS):
            ax = axes[r][c]
            for k, (name, row) in enumerate(results[kind].items()):
                xs = [n for n in NFES if n in row]
                ax.loglog(xs, [row[n] for n in xs], marker="o", ms=3, label=name, color=colors[(2 * k) % 20 + k // 10],
                          linestyle=styles[k % 2])
            ax.set_title(f"{schedule} / {kind}", fontsize=9)
            ax.set_xlabel("NFE")
            ax.set_xticks(list(NFES))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
        axes[r][0].set_ylabel("relative RMSE")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    p.add_argument("--threads", type=threads_arg, default=1)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.dim < 64:
        raise ValueError(f"--dim must be >= 64 for this benchmark, got {args.dim}")
    apply_threads(args.threads)
    all_results = {s: run(s, args.dim, args.components, args.batch, args.seed) for s in args.schedules}
    out = Path(args.out)
    md = to_markdown(all_results, args)
    atomic_write_text(out / "solver_accuracy.md", md)
    atomic_write_bytes(out / "solver_accuracy.png", plot(all_results))
    print(md)
    print(f"wrote {out / 'solver_accuracy.md'} and {out / 'solver_accuracy.png'}")


if __name__ == "__main__":
    main()
