#!/usr/bin/env python
"""The FID-table pipeline on the embedded digits model, on CPU (FD in the digits feature space).

For every solver x NFE: Fréchet distances of hand-crafted grids, GITS, DMN and, with --ld3, of the LD3
schedule learned by ``main.py`` (teacher data, learner, then ``eval_fid.py discretization=learned``).
Each cell is an ``eval_fid.py`` run (composed from configs/eval_fid.yaml, so the same code path as the
paper tables) with its own out_dir: a rerun only computes what is missing.

    OMP_NUM_THREADS=1 python scripts/embedded_fid_table.py --ld3 --md docs/results_embedded_fid.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def _compose(config_name: str, overrides: List[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _fid(out: Path, solver: str, nfe: int, kind: str, args, extra: Optional[List[str]] = None) -> float:
    from ld3.config_schema import solver_option_defaults
    from ld3.metrics.evaluate import run_from_config

    tag = f"{solver}-N{nfe}-{kind}"
    disc = "learned" if kind in ("ld3", "timetuner", "untuned") else kind
    over = [f"solver={solver}", f"steps={nfe}", f"discretization={disc}",
            f"num_samples={args.num_samples}", f"batch_size={args.batch_size}", f"seed={args.seed}",
            f"out_dir={out / 'fid' / tag}", "progress=false", "save_grid=false", "device=cpu",
            f"paths.results={args.results}", *(extra or [])]
    if kind in ("timetuner", "untuned") and "convert_at" in solver_option_defaults(solver):
        over.append("solver.options.convert_at=grid_time")  # TimeTuner moves only the network's input time
    return float(run_from_config(_compose("eval_fid", over))["fid"])


def _learn(out: Path, solver: str, nfe: int) -> Path:
    from ld3.learners.pipeline import run_ld3

    log_path = out / "learn" / f"{solver}-N{nfe}"
    found = sorted(log_path.glob("*/discretization.json"))
    if not found:
        run_ld3(_compose("config", [f"solver={solver}", f"steps={nfe}", f"learner.log_path={log_path}",
                                    "device=cpu", "logger=disabled"]))
        found = sorted(log_path.glob("*/discretization.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one learned schedule under {log_path}, found {found}")
    return found[0]


def _timetuner(out: Path, nfe: int, args, untuned: bool = False) -> Path:
    """TimeTuner ratios tuned with DDIM on the digits training split (sequential, lr 2e-3), saved as JSON;
    ``untuned``: ratios 1 on the same grid (TimeTuner's default grid, the DDIM baseline it improves)."""
    import torch

    from ld3.learners.timetuner import TimeTuner, dict_loader
    from ld3.models.digits_data import digits_split
    from ld3.models.zoo import load_model

    path = out / "timetuner" / f"ddim-N{nfe}{'-untuned' if untuned else ''}.json"
    if path.is_file():
        return path
    model = load_model("digits", device="cpu")
    images, labels = digits_split("train")
    tt = TimeTuner(model.model_fn(), model.noise_schedule)
    if untuned:
        tt.save_discretization(path, torch.ones(nfe, dtype=torch.float64), num_steps=nfe, model="digits",
                               solver="ddim", config={"untuned": True})
        return path
    loader = dict_loader(images, labels, batch_size=64, seed=args.seed)
    ratios = tt.optimize_timesteps(loader, tt.ddim_step_fn, num_steps=nfe, tune_type="sequential", lr=2e-3,
                                   total_iters=args.tt_iters, verbose=False,
                                   noise_generator=torch.Generator().manual_seed(args.seed),
                                   uncond_condition=model.null_class)
    tt.save_discretization(path, ratios, num_steps=nfe, model="digits", solver="ddim",
                           config={"total_iters": args.tt_iters, "tune_type": "sequential", "lr": 2e-3})
    return path


def read_md_table(path: Path) -> Tuple[Dict[Tuple[str, int], Dict[str, float]], List[str], List[str]]:
    """(cells, kinds in column order, solvers in section order) of a table this script wrote (``--keep``)."""
    table: Dict[Tuple[str, int], Dict[str, float]] = {}
    kinds: List[str] = []
    solvers: List[str] = []
    solver, header = None, None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            solver, header = line[3:].strip(), None
            if solver == "Notes":
                solver = None
            elif solver not in solvers:
                solvers.append(solver)
        elif solver and line.startswith("| NFE |"):
            header = [c.strip() for c in line.strip().strip("|").split("|")][1:]
            kinds += [k for k in header if k not in kinds]
        elif solver and header and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            if len(cells) != len(header) + 1:
                raise ValueError(f"{path}: row {line!r} has {len(cells) - 1} cells for {len(header)} columns")
            values = {k: float(v) for k, v in zip(header, cells[1:], strict=True) if v}
            if values:
                table.setdefault((solver, int(cells[0])), {}).update(values)
    return table, kinds, solvers


def render(table: Dict[Tuple[str, int], Dict[str, float]], kinds: List[str], args, wall: float) -> str:
    lines = [
        "# FID pipeline on the embedded digits model (CPU)", "",
        f"Generated by `OMP_NUM_THREADS=1 python scripts/embedded_fid_table.py {' '.join(sys.argv[1:])}` "
        f"({time.strftime('%Y-%m-%d')}, {wall / 60:.0f} min wall on 1 CPU thread of a shared machine). "
        f"Each cell is the Fréchet distance (digits feature network, 64-d; `fid=model`) between "
        f"{args.num_samples} samples (seeds {args.seed}..{args.seed + args.num_samples - 1}, classifier-free "
        f"guidance 2.0, scored as 8-bit images) and the digits validation split, computed by `eval_fid.py` "
        f"(the code path of the paper tables). Lower is better; **bold** = best in the row. `ld3` = the "
        f"schedule `python main.py model=digits solver=<s> steps=<NFE>` learns (teacher UniPC 20 steps, "
        f"L2; configs/learner_preset/digits.yaml). `timetuner` = TimeTuner ratios tuned with DDIM on the "
        f"digits training split (sequential, Adam 2e-3, {args.tt_iters} batches of 64 per step; the reference "
        f"uses 500) on TimeTuner's default grid, then used by the row's solver (ratios are not re-tuned per "
        f"solver). `ddim` rows: `untuned` = DDIM on TimeTuner's default grid (ratios 1), `timetuner` = the "
        f"same grid tuned.", "",
    ]
    if getattr(args, "keep", None):
        lines[2] = lines[2] + (f" Cells this command did not compute are kept from the earlier table "
                                    f"`{args.keep}` (`--keep`; its commands are in the notes).")
    for solver in args.solvers:
        lines += [f"## {solver}", "", "| NFE | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for nfe in args.nfe:
            row = table.get((solver, nfe), {})
            best = min(row.values()) if row else None
            cells = []
            for k in kinds:
                v = row.get(k)
                cells.append("" if v is None else (f"**{v:.2f}**" if v == best else f"{v:.2f}"))
            lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def merged(table, kinds, solvers, kept, kept_kinds, kept_solvers):
    """This run's cells over the kept ones; columns and sections in the kept table's order, new ones after."""
    out = {key: dict(row) for key, row in kept.items()}
    for key, row in table.items():
        out.setdefault(key, {}).update(row)
    all_kinds = list(kept_kinds) + [k for k in kinds if k not in kept_kinds]
    all_solvers = list(kept_solvers) + [s for s in solvers if s not in kept_solvers]
    return out, all_kinds, all_solvers


def _write_md(table, kinds, args, t0, kept, kept_kinds, kept_solvers) -> None:
    import copy

    shown = copy.copy(args)
    cells, all_kinds, shown.solvers = merged(table, kinds, args.solvers, kept, kept_kinds, kept_solvers)
    text = render(cells, all_kinds, shown, time.perf_counter() - t0)
    if args.keep:  # the earlier table's notes (its commands) travel with its cells
        earlier = Path(args.keep).read_text(encoding="utf-8")
        if "\n## Notes\n" in earlier:
            text += "\n## Notes\n" + earlier.split("\n## Notes\n", 1)[1]
    Path(args.md).write_text(text, encoding="utf-8")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solvers", type=lambda s: s.split(","), default=["ipndm", "uni_pc", "dpm_solver++"])
    p.add_argument("--nfe", type=lambda s: [int(x) for x in s.split(",")], default=list(range(4, 11)))
    p.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k],
                   default=["time_uniform", "time_quadratic", "logSNR", "edm", "gits", "dmn"])
    p.add_argument("--ld3", action="store_true", help="also learn LD3 schedules with main.py and score them")
    p.add_argument("--timetuner", action="store_true", help="also tune TimeTuner ratios (DDIM) and score them")
    p.add_argument("--tt-iters", type=int, default=100, help="TimeTuner batches per step")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/embedded_fid")
    p.add_argument("--results", default="results/embedded_fid.jsonl")
    p.add_argument("--md", default=None, help="write the markdown table here")
    p.add_argument("--keep", default=None, help="an earlier --md table: its cells that this run does not compute "
                                                "are kept (columns and sections merged)")
    args = p.parse_args(argv)
    kept: Dict[Tuple[str, int], Dict[str, float]] = {}
    kept_kinds: List[str] = []
    kept_solvers: List[str] = []
    if args.keep:
        kept, kept_kinds, kept_solvers = read_md_table(Path(args.keep))
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.perf_counter()
    kinds = list(args.kinds) + (["ld3"] if args.ld3 else []) + (["timetuner"] if args.timetuner else [])
    table: Dict[Tuple[str, int], Dict[str, float]] = {}
    for solver in args.solvers:
        for nfe in args.nfe:
            row = table.setdefault((solver, nfe), {})
            for kind in args.kinds:
                row[kind] = _fid(out, solver, nfe, kind, args)
                print(f"{solver} NFE {nfe} {kind}: {row[kind]:.3f}", flush=True)
            if args.ld3:
                path = _learn(out, solver, nfe)
                row["ld3"] = _fid(out, solver, nfe, "ld3", args, [f"discretization.options.path={path}"])
                print(f"{solver} NFE {nfe} ld3: {row['ld3']:.3f}", flush=True)
            if args.timetuner:
                path = _timetuner(out, nfe, args)
                row["timetuner"] = _fid(out, solver, nfe, "timetuner", args,
                                        [f"discretization.options.path={path}",
                                         "discretization.options.allow_mismatch=true"])
                print(f"{solver} NFE {nfe} timetuner: {row['timetuner']:.3f}", flush=True)
            if args.md:
                _write_md(table, kinds, args, t0, kept, kept_kinds, kept_solvers)
    if args.timetuner:
        args.solvers = [*args.solvers, "ddim"]
        for nfe in args.nfe:
            row = table.setdefault(("ddim", nfe), {})
            path = _timetuner(out, nfe, args)
            untuned = _timetuner(out, nfe, args, untuned=True)
            row["untuned"] = _fid(out, "ddim", nfe, "untuned", args, [f"discretization.options.path={untuned}"])
            row["timetuner"] = _fid(out, "ddim", nfe, "timetuner", args, [f"discretization.options.path={path}"])
            print(f"ddim NFE {nfe}: untuned {row['untuned']:.3f} timetuner {row['timetuner']:.3f}", flush=True)
        kinds = [*kinds, "untuned"]
    (out / "table.json").write_text(json.dumps({f"{s}|{n}": r for (s, n), r in table.items()}, indent=1))
    if args.md:
        _write_md(table, kinds, args, t0, kept, kept_kinds, kept_solvers)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
