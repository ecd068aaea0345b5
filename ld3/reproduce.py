"""Reproduce a published FID table: ``python scripts/reproduce.py TABLE`` (docs/reproduce.md).

A table is the set of ``configs/experiment/*.yaml`` whose ``experiment.table`` is TABLE. For each cell:

1. download checks: model weights, Inception weights and FID reference statistics exist locally (else the
   ``scripts/download_model.sh`` command that fetches them is printed and nothing runs);
2. teacher data + learner: ``main.py +experiment=CELL`` (main.py generates the teacher data when it is
   absent and resumes itself) unless the cell's ``discretization.json`` exists;
3. FID: ``eval_fid.py +experiment=CELL discretization=B`` for every baseline B and for the learned schedule;
   each has its own ``out_dir`` whose checkpoints make a rerun finish only what is missing (a finished cell
   is a no-op);
4. the report: ``scripts/report.py --paper TABLE``.

Every step is a command line, so ``--dry-run`` prints the whole plan. GPU hours are estimated from the
per-family costs in :data:`COST` (assumptions stated there, not measurements) and printed before running.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

# Rough costs for the estimate (ASSUMPTIONS, not measurements; override with --sec-per-image-nfe / --learn-min):
# seconds of one network evaluation per image on one A100-class GPU at a large batch, by model family, and
# minutes of learner time per cell (LD3's abstract: 5-10 min for CIFAR-10, ~20 min for ImageNet-256).
COST = {
    "edm": {"sec_per_image_nfe": 2.0e-4, "learn_min": 10.0},
    "ldm": {"sec_per_image_nfe": 2.0e-3, "learn_min": 20.0},
    "adm": {"sec_per_image_nfe": 1.0e-3, "learn_min": 20.0},
    "stable_diffusion": {"sec_per_image_nfe": 3.0e-2, "learn_min": 30.0},
    "digits": {"sec_per_image_nfe": 1.0e-5, "learn_min": 1.0},
}


@dataclass
class Step:
    kind: str                 # check | learn | fid | report
    cell: str
    argv: List[str]
    done_file: Optional[Path] = None
    note: str = ""

    @property
    def done(self) -> bool:
        return self.done_file is not None and self.done_file.is_file()

    def line(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


@dataclass
class Plan:
    table: str
    steps: List[Step] = field(default_factory=list)
    missing: Dict[str, str] = field(default_factory=dict)  # file -> how to get it
    gpu_hours: float = 0.0
    breakdown: Dict[str, float] = field(default_factory=dict)


def experiment_cells(table: str, config_dir: Path = REPO / "configs") -> List[str]:
    """Names of the experiment configs of one table (from their ``experiment.table``)."""
    import yaml

    cells, tables = [], set()
    for p in sorted((config_dir / "experiment").glob("*.yaml")):
        meta = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("experiment") or {}
        tables.add(meta.get("table"))
        if meta.get("table") == table:
            cells.append(p.stem)
    if not cells:
        raise ValueError(f"no experiment config for table {table!r}; available: {sorted(t for t in tables if t)}")
    return cells


def compose(cell: str, config_name: str = "eval_fid", overrides: Sequence[str] = (),
            config_dir: Path = REPO / "configs") -> Any:
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hcompose(config_name=config_name, overrides=[f"+experiment={cell}", *overrides])


EDM_FID_REFS = {"cifar10-32x32.npz", "afhqv2-64x64.npz", "ffhq-64x64.npz", "imagenet-64x64.npz"}


def _how_to_get(path: str, model_cfg: str) -> str:
    name = Path(path).name
    if name in EDM_FID_REFS:
        return "bash scripts/download_model.sh fid-refs"
    if name.startswith("VIRTUAL_"):
        return "ADM reference batch (openai/guided-diffusion evaluations), by hand into paths.fid_refs"
    if name.startswith("coco2014"):
        return "python eval_fid.py mode=ref fid=coco30k images=<the 30k COCO val2014 images> ref_out=" + path
    if name.startswith("captions"):
        return "the 30k COCO val2014 captions used by LD3 (docs/reproduce.md)"
    if name.startswith("weights-inception"):
        return "bash scripts/download_model.sh inception"
    if name.startswith("edm-") and name.endswith(".pkl"):
        return "bash scripts/download_model.sh edm"
    if name.startswith("stable-diffusion"):
        return "bash scripts/download_model.sh sd"
    return f"see configs/model/{model_cfg}.yaml"


def _required_files(cfg: Any) -> List[str]:
    """Local files (or weight directories) a cell needs."""
    need: List[str] = []
    opts = cfg.model.get("options") or {}
    if opts.get("checkpoint") and opts.get("weights_dir"):
        need.append(str(Path(str(opts.weights_dir)) / str(opts.checkpoint)))
    if cfg.fid.get("ref_stats"):
        need.append(str(cfg.fid.ref_stats))
    if cfg.fid.get("feature") == "inception" and cfg.fid.get("inception_weights"):
        need.append(str(cfg.fid.inception_weights))
    if cfg.fid.get("captions"):
        need.append(str(cfg.fid.captions))
    return need


def build_plan(table: str, out_root: Path, python: str = sys.executable, launcher: Sequence[str] = (),
               num_samples: Optional[int] = None, extra: Sequence[str] = (),
               cost_override: Optional[Dict[str, float]] = None, check_files: bool = True,
               config_dir: Path = REPO / "configs") -> Plan:
    """Every command of a table's reproduction, with the file whose existence marks each as done."""
    plan = Plan(table)
    fid_cmd = [*launcher] if launcher else [python]
    for cell in experiment_cells(table, config_dir):
        cfg = compose(cell, overrides=list(extra), config_dir=config_dir)
        e = cfg.experiment
        n = int(num_samples or e.num_samples)
        cell_dir = out_root / table / cell
        if check_files:
            model_cfg = next((d.split(":", 1)[1].strip() for d in
                              (config_dir / "experiment" / f"{cell}.yaml").read_text().splitlines()
                              if d.strip().startswith("- override /model:")), str(cfg.model.name))
            for path in _required_files(cfg):
                if not Path(path).exists():
                    plan.missing[path] = _how_to_get(path, model_cfg)
        family = str(cfg.model.name)
        cost = dict(COST.get(family, COST["ldm"]))
        cost.update(cost_override or {})
        nfe = int(cfg.steps)
        evals = []
        for solver in e.baseline_solvers:
            for base in e.baselines:
                evals.append((f"{solver}-{base}", [f"solver={solver}", f"discretization={base}"]))
        if e.learned:
            learn_dir = cell_dir / "learn"
            learned_file = learn_dir / "discretization.json"
            plan.steps.append(Step("learn", cell, [python, "main.py", f"+experiment={cell}",
                                                   f"learner.log_path={learn_dir}", *extra],
                                   done_file=learned_file, note="teacher data + learner"))
            plan.breakdown["learn"] = plan.breakdown.get("learn", 0.0) + cost["learn_min"] / 60
            evals.append((f"{cfg.solver.name}-learned", ["discretization=learned",
                                                         f"discretization.options.path={learned_file}"]))
        for tag, over in evals:
            out_dir = cell_dir / f"fid-{tag}"
            argv = [*fid_cmd, "eval_fid.py", f"+experiment={cell}", *over, f"num_samples={n}",
                    f"out_dir={out_dir}", *extra]
            plan.steps.append(Step("fid", cell, argv, done_file=out_dir / "fid.json"))
            plan.breakdown["fid"] = plan.breakdown.get("fid", 0.0) + n * nfe * cost["sec_per_image_nfe"] / 3600
    from ld3.logging.paper import load_paper_results

    if table in load_paper_results():
        plan.steps.append(Step("report", table, [python, "scripts/report.py", "--paper", table,
                                                 "--out", str(out_root / table / "report")]))
    else:  # no published numbers (e.g. the embedded model): the plain report of the table's results
        plan.steps.append(Step("report", table, [python, "scripts/report.py", "--metric", "fid",
                                                 "--group", "solver,discretization",
                                                 "--out", str(out_root / table / "report")]))
    plan.gpu_hours = sum(plan.breakdown.values())
    return plan


def _learned_path(step: Step) -> None:
    """main.py writes {log_path}/<run name>/discretization.json; expose it at the cell's fixed path."""
    learn_dir = step.done_file.parent
    found = sorted(learn_dir.glob("*/discretization.json"))
    if len(found) == 1 and not step.done_file.exists():
        step.done_file.write_bytes(found[0].read_bytes())
    elif len(found) > 1:
        raise RuntimeError(f"several learned runs under {learn_dir}: {found}; keep one")


def run_plan(plan: Plan, dry_run: bool = False, runner: Callable[[List[str]], int] | None = None,
             echo: Callable[[str], None] = print) -> int:
    """Run the steps that are not done (idempotent); ``dry_run`` prints them only."""
    echo(f"table {plan.table}: {len(plan.steps)} steps; expected GPU hours ~{plan.gpu_hours:.1f} "
         f"({', '.join(f'{k} {v:.1f}' for k, v in sorted(plan.breakdown.items()))}; assumed per-family costs, "
         f"see ld3/reproduce.py COST)")
    if plan.missing:
        echo("missing local files (nothing runs until they exist):")
        for path, how in sorted(plan.missing.items()):
            echo(f"  {path}  ({how})")
        if not dry_run:
            return 2
    runner = runner or (lambda argv: subprocess.run(argv, cwd=REPO).returncode)
    for step in plan.steps:
        if step.kind == "learn" and not dry_run and step.done_file is not None:
            _learned_path(step)
        if step.done:
            echo(f"[done] {step.kind} {step.cell}: {step.done_file}")
            continue
        echo(f"[{'plan' if dry_run else 'run'}] {step.line()}")
        if dry_run:
            continue
        rc = runner(step.argv)
        if rc != 0:
            echo(f"step failed with exit code {rc}: {step.line()} (rerun to continue from here)")
            return rc
        if step.kind == "learn":
            _learned_path(step)
    return 0
