#!/usr/bin/env python
"""Reproduce one published FID table end to end (ld3/reproduce.py; docs/reproduce.md).

    python scripts/reproduce.py ld3_cifar10 --dry-run          # the plan and the expected GPU hours
    python scripts/reproduce.py ld3_cifar10                    # run what is missing (idempotent)
    python scripts/reproduce.py ld3_cifar10 --launcher "torchrun --nproc_per_node=8"   # FID on 8 GPUs

Tables: the ``experiment.table`` values of configs/experiment/*.yaml (ld3_cifar10, ld3_afhqv2, ld3_ffhq,
ld3_lsun_bedroom, ld3_imagenet256, ld3_sd15, gits_cifar10, pfdiff_imagenet64, timetuner_lsun_bedroom).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld3.reproduce import build_plan, run_plan  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table")
    p.add_argument("--out", default="runs/reproduce", help="root of every cell's learner and FID directories")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the GPU-hour estimate only")
    p.add_argument("--launcher", default="", help='command that runs eval_fid.py, e.g. "torchrun --nproc_per_node=8"')
    p.add_argument("--num-samples", type=int, default=None, help="FID samples per cell (default: the paper's)")
    p.add_argument("--sec-per-image-nfe", type=float, default=None, help="override the cost assumption")
    p.add_argument("--learn-min", type=float, default=None, help="override the learner-minutes assumption")
    p.add_argument("overrides", nargs="*", help="Hydra overrides passed to every main.py / eval_fid.py call")
    args = p.parse_args(argv)
    cost = {k: v for k, v in (("sec_per_image_nfe", args.sec_per_image_nfe), ("learn_min", args.learn_min))
            if v is not None}
    plan = build_plan(args.table, Path(args.out), launcher=shlex.split(args.launcher),
                      num_samples=args.num_samples, extra=args.overrides, cost_override=cost)
    return run_plan(plan, dry_run=args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
