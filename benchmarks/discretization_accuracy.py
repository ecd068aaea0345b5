"""Error to the exact ODE solution for every solver x NFE x discretization kind on an analytic Gaussian mixture.

The model is ``AnalyticGMM.random(schedule, dim=16, n_components=4, seed=0)`` (the ``analytic_gmm`` zoo
model), whose denoiser is exact, so the only error is the solver's discretization error. The reference
x_0 is ``AnalyticGMM.ode_solution`` (DOP853, rtol 1e-11). GITS uses its defaults (iPNDM teacher on the
61-point edm grid, 'dev' cost, coeff 1.15) with a separate warm-up batch; DMN uses each solver's order
(max 3). Solvers use their default options unless ``--solver-options`` says otherwise. AYS and learned
grids are not included (no published AYS schedule for this model; learned grids come from the
learners). Prints markdown tables (one per noise schedule) and writes a PNG.

    .venv/bin/python benchmarks/discretization_accuracy.py --nfe 4 5 6 8 10 --png results/discretization_accuracy.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld3.cli import apply_threads, threads_arg  # noqa: E402
from ld3.discretizations import get_discretization, gits_cost_matrix  # noqa: E402
from ld3.discretizations.gits import prior_std  # noqa: E402
from ld3.models.analytic import AnalyticGMM  # noqa: E402
from ld3.schedules import ddpm_linear_betas, make_schedule  # noqa: E402
from ld3.solvers import available, get_solver  # noqa: E402

KINDS = ["time_uniform", "time_quadratic", "logSNR", "edm", "poly", "gits", "dmn"]
SCHEDULES = {"vp_discrete": {"betas": ddpm_linear_betas()}, "edm": {}}


def run_schedule(name: str, args) -> dict:
    ns = make_schedule(name, **SCHEDULES[name])
    gmm = AnalyticGMM.random(ns, dim=16, n_components=4, seed=0)
    scale = prior_std(ns)
    x_T = scale * torch.randn(args.samples, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_warm = scale * torch.randn(args.warmup, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = gmm.ode_solution(x_T, ns.T, ns.eps)

    def model_fn(x, t):
        return gmm.eps(x, t)

    start = time.perf_counter()
    cost = gits_cost_matrix(ns, model_fn, x_warm, progress=False)
    print(f"[{name}] GITS cost matrix: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results = {}
    for solver_name in args.solvers:
        solver = get_solver(solver_name, ns, **args.solver_options.get(solver_name, {}))
        for nfe in args.nfe:
            try:
                solver.num_timesteps(nfe)
            except ValueError:
                continue  # e.g. Heun needs an odd NFE
            row = {}
            for kind in args.kinds:
                opts = {"cost": cost} if kind == "gits" else {}
                grid = get_discretization(kind, ns, nfe, solver=solver, **opts).timesteps
                with torch.no_grad():
                    x = solver.sample(model_fn, x_T, grid)
                row[kind] = float((x - exact).norm(dim=1).mean())
            results[(solver_name, nfe)] = row
    return results


def markdown(name: str, results: dict, kinds) -> str:
    lines = [f"**{name}** (mean L2 error to the exact solution, D = 16; best per row in bold)", ""]
    lines.append("| solver | NFE | " + " | ".join(kinds) + " |")
    lines.append("|---|---|" + "---|" * len(kinds))
    for (solver, nfe), row in results.items():
        best = min(row.values())
        cells = [f"**{row[k]:.4f}**" if row[k] == best else f"{row[k]:.4f}" for k in kinds]
        lines.append(f"| {solver} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(all_results: dict, kinds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = sorted({s for res in all_results.values() for s, _ in res})
    fig, axes = plt.subplots(len(all_results), len(solvers), figsize=(3.2 * len(solvers), 3.0 * len(all_results)),
                             squeeze=False, sharey="row")
    for r, (sched, res) in enumerate(all_results.items()):
        for c, solver in enumerate(solvers):
            ax = axes[r][c]
            for kind in kinds:
                pts = sorted((nfe, row[kind]) for (s, nfe), row in res.items() if s == solver)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=kind)
            ax.set_yscale("log")
            ax.set_title(f"{sched} / {solver}", fontsize=9)
            ax.set_xlabel("NFE")
            if c == 0:
                ax.set_ylabel("mean L2 error")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    p.add_argument("--solvers", nargs="+", default=None, help="default: every registered solver")
    p.add_argument("--nfe", nargs="+", type=int, default=[4, 5, 6, 8, 10])
    p.add_argument("--kinds", nargs="+", default=KINDS)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--warmup", type=int, default=256, help="GITS teacher batch")
    p.add_argument("--png", type=Path, default=Path("results/discretization_accuracy.png"))
    p.add_argument("--threads", type=threads_arg, default=1)
    p.add_argument("--solver-options", type=json.loads, default={},
                   help='JSON dict of per-solver options, e.g. \'{"dpm_solver++": {"order": 3}}\'')
    args = p.parse_args(argv)
    apply_threads(args.threads)
    args.solvers = args.solvers or available()
    warnings.filterwarnings("ignore", category=UserWarning)
    all_results = {}
    for name in args.schedules:
        all_results[name] = run_schedule(name, args)
        print(markdown(name, all_results[name], args.kinds))
        print()
    plot(all_results, args.kinds, args.png)
    wins = {k: 0 for k in args.kinds}
    for res in all_results.values():
        for row in res.values():
            wins[min(row, key=row.get)] += 1
    print("rows won per kind: " + ", ".join(f"{k} {v}" for k, v in wins.items()))
    print(f"wrote {args.png}")
    assert all(math.isfinite(v) for res in all_results.values() for row in res.values() for v in row.values())


if __name__ == "__main__":
    main()
