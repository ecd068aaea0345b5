"""Learned (LD3, TimeTuner) against hand-crafted schedules: held-out distance to the teacher, in docs/results.md.

For each model (the embedded ``digits`` with the teacher of ``main.py``: UniPC, 20 steps, logSNR; the
analytic Gaussian mixture with its exact ODE solution as teacher), solver (ipndm, uni_pc, dpm_solver++)
and NFE (4, 6, 8, 10) this runs

* LD3 exactly as ``python main.py model=<m> solver=<s> steps=<N>`` configures it (configs/config.yaml,
  configs/learner/ld3.yaml, configs/learner_preset/<m>.yaml: Hydra composes the same config), and
* TimeTuner as ``python main.py model=<m> solver=<s> steps=<N> learner=timetuner`` plus the overrides
  in :data:`TIMETUNER_OVERRIDES` (the table's TimeTuner settings; docs/results.md lists them),

both through :func:`ld3.learners.pipeline.run_learner` (what main.py calls). The only changes to the
composed configs: ``learner.num_test`` (the held-out pairs), ``learner.log_path`` (under ``--runs-dir``),
the device, no progress bars and, for the analytic mixture, the exact teacher instead of UniPC. Each
learned grid is compared, on ``--num-test`` held-out teacher pairs (seeds after the training and validation
pairs, never used for training, validation or selection), with time_uniform, time_quadratic, logSNR and edm.

Every cell is cached as JSON (``<runs-dir>/cells/<model>-<solver>-N<nfe>-<learner>.json``), so a rerun
resumes; progress lines go to stdout (run it with ``nohup ... > log &`` for the full table).

    python scripts/ld3_results.py                          # the full table (~75 min on 1 CPU thread)
    python scripts/ld3_results.py --models analytic_gmm --solvers ipndm --nfes 4 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ld3.cli import apply_threads, threads_arg  # noqa: E402
from ld3.learners.ld3 import LD3Data  # noqa: E402
from ld3.learners.pipeline import HANDCRAFTED, run_learner  # noqa: E402
from ld3.models.zoo import load_model  # noqa: E402
from ld3.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

LEARNERS = ("ld3", "timetuner")
#: main.py overrides of the table's TimeTuner runs (on top of ``learner=timetuner``): the solver-output
#: objective (ours, documented in docs/timetuner.md) from the best hand-crafted grid of the row's solver
TIMETUNER_OVERRIDES: Dict[str, Any] = {"objective": "solver_output", "lr": 3e-3, "batch_size": 25, "total_iters": 60,
                                       "valid_every": 5}
#: the cells' result keys kept in the cache / JSON
_KEEP = ("task", "model", "solver", "nfe", "loss", "eval_split", "n_eval", "learned", "learned_std", "handcrafted",
         "best_handcrafted", "best_handcrafted_value", "improvement_vs_best", "start", "base_grid", "returned",
         "steps_trained", "train_time_s", "t_ratios", "timesteps", "model_timesteps", "run_dir")


def compose(model: str, solver: str, steps: int, learner: str, args: argparse.Namespace,
            extra: Sequence[str] = ()) -> Dict[str, Any]:
    """The config ``python main.py model=.. solver=.. steps=.. learner=.. <extra>`` runs, as a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [f"model={model}", f"solver={solver}", f"steps={steps}", f"learner={learner}",
                 f"paths.data_dir={args.data_dir}", f"seed={args.seed}", *extra]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    return c


def learner_overrides(learner: str, extra: Sequence[str] = ()) -> List[str]:
    """The table's main.py overrides for ``learner``: its fixed ones, then ``--override`` values (``KEY=V`` for
    every learner, ``<learner>:KEY=V`` for one)."""
    out = [f"++learner.{k}={v}" for k, v in TIMETUNER_OVERRIDES.items()] if learner == "timetuner" else []
    for o in extra:
        head, sep, rest = o.partition(":")
        if sep and head in LEARNERS and "=" not in head:
            if head == learner:
                out.append(rest)
        else:
            out.append(o)
    return out


def gmm_teacher(loaded: Any, n: int, seed: int = 0) -> LD3Data:
    """Exact teacher: the PF-ODE solution (scipy DOP853, rtol 1e-10) from unit-normal latents."""
    ns = loaded.noise_schedule
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, *loaded.shape, generator=g, dtype=torch.float64)
    tgt = loaded.metadata["gmm"].ode_solution(lat, ns.T, ns.eps, rtol=1e-10, atol=1e-11)
    return LD3Data(lat, tgt)


def cell_path(args: argparse.Namespace, model: str, solver: str, nfe: int, learner: str) -> Path:
    return Path(args.runs_dir) / "cells" / f"{model}-{solver}-N{nfe}-{learner}.json"


def run_cell(args: argparse.Namespace, model: str, solver: str, nfe: int, learner: str, loaded: Any,
             data: LD3Data | None) -> Dict[str, Any]:
    """One learner run (cached as JSON): the composed main.py config with the table's few changes."""
    path = cell_path(args, model, solver, nfe, learner)
    if path.is_file():
        return json.loads(path.read_text())
    overrides = learner_overrides(learner, args.override)
    cfg = compose(model, solver, nfe, learner, args, overrides)
    cfg["learner"].update(num_test=args.num_test, log_path=str(Path(args.runs_dir) / model))
    if learner == "timetuner":
        cfg["learner"]["verbose"] = False
    cfg.update(device=args.device, progress=False)
    cfg["logger"] = {"backend": "local", "results_path": str(Path(args.runs_dir) / "results.jsonl")}
    if data is not None:  # the analytic mixture: the exact teacher replaces main.py's UniPC teacher
        cfg["teacher"] = {"exact": "solve_ivp DOP853 rtol 1e-10", "seed": 0}
    t0 = time.time()
    res = run_learner(cfg, data=data, loaded=loaded)
    out = {k: res[k] for k in _KEEP if k in res}
    out.update(learner=learner, wall_s=time.time() - t0, overrides=overrides)
    atomic_write_json(path, out)
    return out


def run_all(args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows = []
    n_cells = len(args.models) * len(args.solvers) * len(args.nfes) * len(args.learners)
    for model in args.models:
        loaded, data = None, None
        for solver in args.solvers:
            for nfe in args.nfes:
                for learner in args.learners:
                    cached = cell_path(args, model, solver, nfe, learner).is_file()
                    if loaded is None and not cached:
                        loaded, data = load(model, args)
                    t0 = time.time()
                    r = run_cell(args, model, solver, nfe, learner, loaded, data)
                    rows.append(r)
                    print(f"[{len(rows)}/{n_cells}] {model:12s} {solver:12s} NFE {nfe:2d} {learner:9s}: learned "
                          f"{r['learned']:.4g} vs best {r['best_handcrafted']} {r['best_handcrafted_value']:.4g} "
                          f"({100 * r['improvement_vs_best']:+.1f}%) [{time.time() - t0:.0f} s"
                          f"{', cached' if cached else ''}]", flush=True)
    return rows


def load(model: str, args: argparse.Namespace) -> tuple:
    """The model, and for the analytic mixture its exact teacher pairs (as many as any learner needs)."""
    base = compose(model, args.solvers[0], args.nfes[0], "ld3", args)
    mcfg = base["model"]
    loaded = load_model(mcfg["name"], **dict(mcfg.get("options") or {}))
    if model != "analytic_gmm":
        return loaded, None  # main.py's teacher data (generated on first use)
    need = 0
    for learner in args.learners:
        lc = compose(model, args.solvers[0], args.nfes[0], learner, args, learner_overrides(learner, args.override))
        need = max(need, lc["learner"]["num_train"] + lc["learner"]["num_valid"] + args.num_test)
    return loaded, gmm_teacher(loaded, need)


def fmt(v: float) -> str:
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.2e}"


def short(r: Dict[str, Any]) -> bool:
    """A miss: not lower than the best hand-crafted grid, or LD3 under 30% at NFE 4."""
    imp = r["improvement_vs_best"]
    return imp <= 0 or (r["learner"] == "ld3" and r["nfe"] == 4 and imp < 0.3)


def table(rows: List[Dict[str, Any]], model: str, learners: Sequence[str]) -> List[str]:
    by = {(r["solver"], r["nfe"], r["learner"]): r for r in rows if r["model"] == model}
    keys = sorted({(s, n) for s, n, _ in by})
    names = {"ld3": "LD3", "timetuner": "TimeTuner"}
    head = ("| solver | NFE | " + " | ".join(HANDCRAFTED) + " | best hand-crafted | "
            + " | ".join(f"{names[lrn]} | vs best" for lrn in learners) + " |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for s, n in keys:
        any_r = next(by[(s, n, lrn)] for lrn in learners if (s, n, lrn) in by)
        hand = any_r["handcrafted"]
        cells = [s, str(n)] + [fmt(hand[k]) for k in HANDCRAFTED]
        cells.append(f"{any_r['best_handcrafted']} {fmt(any_r['best_handcrafted_value'])}")
        for lrn in learners:
            r = by.get((s, n, lrn))
            if r is None:
                cells += ["-", "-"]
                continue
            cells += [fmt(r["learned"]), f"{100 * r['improvement_vs_best']:+.1f}%" + (" (short)" if short(r) else "")]
        out.append("| " + " | ".join(cells) + " |")
    return out


def summary(rows: List[Dict[str, Any]], learners: Sequence[str]) -> List[str]:
    names = {"ld3": "LD3", "timetuner": "TimeTuner"}
    lines = []
    for lrn in learners:
        rs = [r for r in rows if r["learner"] == lrn]
        wins = [r for r in rs if r["improvement_vs_best"] > 0]
        n4 = [r["improvement_vs_best"] for r in rs if r["nfe"] == 4]
        misses = [f"{r['model']} {r['solver']} NFE {r['nfe']} ({100 * r['improvement_vs_best']:+.1f}%)"
                  for r in rs if short(r)]
        lines.append(f"* {names[lrn]}: lower than the best hand-crafted grid in {len(wins)}/{len(rs)} settings; "
                     f"smallest gain {100 * min((r['improvement_vs_best'] for r in rs), default=float('nan')):+.1f}%"
                     f", at NFE 4 {100 * min(n4, default=float('nan')):+.1f}%"
                     + (f"; misses: {', '.join(misses)}." if misses else "; no misses."))
    return lines


def misses_notes(rows: List[Dict[str, Any]]) -> List[str]:
    """What each miss started from and returned (generated from the cells)."""
    names = {"ld3": "LD3", "timetuner": "TimeTuner"}
    out = []
    for r in rows:
        if not short(r):
            continue
        start = r.get("start") if r["learner"] == "ld3" else r.get("base_grid")
        what = "start" if r["learner"] == "ld3" else "base grid"
        got = ("the tuned " + ("grid" if r["learner"] == "ld3" else "ratios")) if r.get("returned") == "learned" \
            else f"its {what} (nothing beat it on validation)"
        best = f"{r['best_handcrafted']} scores {fmt(r['best_handcrafted_value'])}"
        if start == r["best_handcrafted"]:
            held = f"{start} is also the best hand-crafted grid ({fmt(r['best_handcrafted_value'])})"
        elif start in r["handcrafted"]:
            held = f"{start} scores {fmt(r['handcrafted'][start])} and {best}"
        else:
            held = best
        out.append(f"* {r['model']} {r['solver']} NFE {r['nfe']}, {names[r['learner']]}: {what} {start} (lowest "
                   f"validation loss), returned {got}; on the held-out pairs {held}, the learned grid "
                   f"{fmt(r['learned'])}.")
    if not out:
        return []
    return ["### Misses", "",
            "Per-sample distances to the teacher are heavy-tailed (a few samples carry much of the mean), so the 50 "
            "validation pairs and the 100 held-out pairs can disagree on which grid is better when the gain is "
            "small. A cell misses when the tuned grid or ratios are better on validation but not on the held-out "
            "pairs, when the validation pairs pick a different hand-crafted start than the held-out pairs would, or "
            "when nothing beats the start on validation (the start is returned: a tie):",
            ""] + out + [""]


def write_markdown(rows: List[Dict[str, Any]], args: argparse.Namespace, elapsed: float) -> None:
    wall = sum(r.get("wall_s", 0.0) for r in rows)
    tt = " ".join(o for o in learner_overrides("timetuner"))
    lines = [
        "# Learned vs hand-crafted time discretizations",
        "",
        f"Generated by `python scripts/ld3_results.py` ({time.strftime('%Y-%m-%d')}; {wall / 60:.0f} min of learner "
        f"runs on {args.device} with {torch.get_num_threads()} thread(s), this invocation {elapsed / 60:.0f} min; "
        f"cells are cached in `{args.runs_dir}/cells/`). Each cell is the mean per-sample L2 distance (mean "
        "squared error per pixel / coordinate) between a sampler's output and the teacher's, on "
        f"{args.num_test} held-out teacher pairs (the seeds after the training and validation pairs) that were used "
        "for neither training, validation nor any selection. Learned and hand-crafted grids are evaluated on "
        "the same pairs with the same solver.",
        "",
        "* **LD3** runs exactly as `python main.py model=<model> solver=<solver> steps=<NFE>` configures it: "
        "configs/learner/ld3.yaml (the reference's defaults: 50 training and 50 validation pairs, time_mode auto "
        "= time for these VP models, `init: auto`: the run starts from the better, on the validation pairs, of the "
        "reference's start (time-uniform in time mode) and the best hand-crafted grid, and never returns a grid "
        "worse on validation than its start) plus configs/learner_preset/<model>.yaml where one exists (digits: "
        "batch 5, rounds 2 + 3).",
        f"* **TimeTuner** runs as `python main.py model=<model> solver=<solver> steps=<NFE> learner=timetuner {tt}`"
        ": configs/learner/timetuner.yaml (base grid: the hand-crafted grid of the row's solver with the lowest "
        "validation loss; 50 training and 50 validation pairs) with the solver-output objective (ours, "
        "docs/timetuner.md): the per-step network-time ratios r_i (network time r_i t_i, solver coefficients "
        "at t_i) are tuned jointly through the row's solver to the teacher's final samples, and the ratios with "
        "the lowest validation loss are returned (all ratios 1, the base grid, if none beats it). The paper's "
        "per-step DDIM objective (`learner.objective=ddim_step`, the default) tunes the ratios for DDIM, not for "
        "the row's solver (`++`: `objective` and `valid_every` are not yet keys of configs/learner/timetuner.yaml).",
        "* **vs best** is 1 - learned / best hand-crafted (per row, the best of the four grids on the held-out "
        "pairs); the target is > 0 everywhere and, for LD3, >= 30% at NFE 4. Misses are marked (short).",
        "* The digits teacher is main.py's (UniPC, 20 steps, logSNR, classifier-free guidance 2.0); the analytic "
        "mixture's is its exact ODE solution (scipy DOP853, rtol 1e-10) from the same latents.",
        "",
        "## Summary",
        "",
    ]
    lines += summary(rows, args.learners) + [""]
    lines += misses_notes(rows)
    titles = {"digits": "Embedded `digits` model (teacher: UniPC, 20 steps, logSNR; classifier-free guidance 2.0)",
              "analytic_gmm": "Analytic Gaussian mixture (dim 16, 4 components; teacher: exact ODE solution)"}
    for model in args.models:
        lines += [f"## {titles.get(model, model)}", ""] + table(rows, model, args.learners) + [""]
    if args.fid_note:
        lines += [
            "",
            "## FID pipeline on the embedded model",
            "",
            "The paper-table pipeline (eval_fid.py Fréchet distances of hand-crafted, GITS, DMN, LD3 and TimeTuner",
            "schedules, 3 solvers x NFE 4-10) on the embedded digits model: "
            "[results_embedded_fid.md](results_embedded_fid.md).",
        ]
    out = Path(args.out) if Path(args.out).is_absolute() else REPO / args.out
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_json(Path(args.runs_dir) / "ld3_results.json", rows)
    print(f"wrote {out}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,analytic_gmm")
    p.add_argument("--solvers", default="ipndm,uni_pc,dpm_solver++")
    p.add_argument("--nfes", default="4,6,8,10")
    p.add_argument("--learners", default="ld3,timetuner")
    p.add_argument("--num-test", type=int, default=100, help="held-out teacher pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_arg, default="auto")
    p.add_argument("--runs-dir", default="runs/ld3_results")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--override", action="append", default=[],
                   help="extra main.py override: KEY=VALUE for every learner, LEARNER:KEY=VALUE for one "
                        "(e.g. timetuner:learner.total_iters=5 for a quick check)")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--no-fid-note", dest="fid_note", action="store_false")
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.solvers = args.solvers.split(",")
    args.nfes = [int(x) for x in args.nfes.split(",")]
    args.learners = args.learners.split(",")
    bad = [x for x in args.learners if x not in LEARNERS]
    if bad:
        p.error(f"unknown learner(s) {bad}; allowed: {list(LEARNERS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    t0 = time.time()
    rows = run_all(args)
    write_markdown(rows, args, time.time() - t0)


if __name__ == "__main__":
    main()
