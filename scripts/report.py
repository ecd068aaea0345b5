#!/usr/bin/env python
"""Turn the local results store (JSONL) into a markdown table and metric-vs-NFE plots.

Usage:
    python scripts/report.py --results results/results.jsonl --metric fid --out docs/report
    python scripts/report.py --metric val_distance --group solver,discretization
    python scripts/report.py --paper ld3_cifar10     # ours beside the published FIDs (ld3/logging/paper.py)

Rows are grouped by ``--group`` columns (looked up in the row, then in its ``config``) and pivoted over
``--x`` (default ``steps``, i.e. NFE). The last value wins when a cell was run several times.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

from ld3.logging import read_results
from ld3.utils.io import atomic_write_text


def lookup(row: Dict[str, Any], key: str) -> Optional[Any]:
    """``key`` may be dotted (``config.solver.name``); plain keys are searched in the row, then its config."""
    for source in (row, row.get("config") or {}):
        cur: Any = source
        ok = True
        for part in key.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                ok = False
                break
        if ok:
            if isinstance(cur, dict) and "name" in cur:
                return cur["name"]
            if isinstance(cur, dict) and "kind" in cur:
                return cur["kind"]
            return cur
    return None


def pivot(rows: List[Dict[str, Any]], metric: str, group: List[str], x: str):
    table: Dict[tuple, Dict[Any, float]] = defaultdict(dict)
    xs = set()
    for r in rows:
        val = lookup(r, metric)
        xv = lookup(r, x)
        if val is None or xv is None:
            continue
        key = tuple(str(lookup(r, g)) for g in group)
        table[key][xv] = float(val)
        xs.add(xv)
    return table, sorted(xs)


def markdown(table, xs, group: List[str], metric: str, x: str) -> str:
    head = "| " + " | ".join(group) + " | " + " | ".join(f"{x}={v}" for v in xs) + " |"
    sep = "|" + "---|" * (len(group) + len(xs))
    lines = [f"{metric} by {x}", "", head, sep]
    for key in sorted(table):
        cells = [f"{table[key][v]:.4g}" if v in table[key] else "" for v in xs]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table, xs, metric: str, x: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted(table):
        pts = sorted(table[key].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" / ".join(key))
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results/results.jsonl")
    p.add_argument("--metric", default="fid")
    p.add_argument("--group", default="model,solver,discretization")
    p.add_argument("--x", default="steps")
    p.add_argument("--out", default="results/report", help="output prefix: <out>.md and <out>.png")
    p.add_argument("--paper", default=None, help="a published table (ld3/logging/paper_results.yaml) to compare with")
    p.add_argument("--tolerance", type=float, default=0.1, help="--paper: flag |ours - paper| > tolerance x paper "
                   "where the paper reports no noise")
    args = p.parse_args(argv)
    if args.paper:
        from ld3.logging.paper import paper_report

        out = f"results/paper_{args.paper}" if args.out == "results/report" else args.out
        res = paper_report(read_results(args.results), args.paper, out, tolerance=args.tolerance)
        print(res["markdown"])
        print(f"wrote {res['md']} and {res['png']}")
        return 0
    rows = read_results(args.results)
    if not rows:
        raise SystemExit(f"no rows in {args.results}: run main.py / eval_fid.py first")
    group = [g for g in args.group.split(",") if g]
    table, xs = pivot(rows, args.metric, group, args.x)
    if not table:
        raise SystemExit(f"no row of {args.results} has both {args.metric!r} and {args.x!r}")
    md = markdown(table, xs, group, args.metric, args.x)
    atomic_write_text(args.out + ".md", md)
    plot(table, xs, args.metric, args.x, Path(args.out + ".png"))
    print(md)
    print(f"wrote {args.out}.md and {args.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
