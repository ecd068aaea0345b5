#!/usr/bin/env python
"""Turn the local results store (JSONL) into markdown tables and metric-vs-NFE plots.

Usage:
    python scripts/report.py                                   # every kind of row in results/results.jsonl
    python scripts/report.py --results results/results.jsonl --out results/report
    python scripts/report.py --metric fid --group solver,discretization     # one explicit metric
    python scripts/report.py --paper ld3_cifar10     # ours beside the published FIDs (ld3/logging/paper.py)

By default (``--metric auto``) every kind of row the project writes gets its own table and plot:

* learner rows (``main.py``: LD3, TimeTuner): the held-out distance to the teacher of the learned grid
  and of every hand-crafted grid (the baselines, dashed lines), by NFE, per model / solver / loss;
* FID rows (``eval_fid.py``): the Frechet distance by NFE, per model / solver / discretization.

With an explicit ``--metric KEY`` rows are grouped by ``--group`` columns (looked up in the row, then in
its ``config``) and pivoted over ``--x`` (default: the NFE). The last value wins when a cell was run
several times. Outputs: ``<out>.md`` and ``<out>.png`` (``<out>-<kind>.png`` in auto mode).
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


def nfe_of(row: Dict[str, Any], x: str = "nfe") -> Optional[Any]:
    """The x value of a row; ``nfe`` falls back to ``steps`` (and the other way round)."""
    v = lookup(row, x)
    if v is None and x in ("nfe", "steps"):
        v = lookup(row, "steps" if x == "nfe" else "nfe")
    return v


def pivot(rows: List[Dict[str, Any]], metric: str, group: List[str], x: str):
    table: Dict[tuple, Dict[Any, float]] = defaultdict(dict)
    xs = set()
    for r in rows:
        val = lookup(r, metric)
        xv = nfe_of(r, x)
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


def plot(table, xs, metric: str, x: str, out: Path, baselines=None, title: str = "") -> Path:
    """One line per table row (solid, markers); ``baselines`` (same layout) as dashed lines; integer x ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted(table):
        pts = sorted(table[key].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" / ".join(key))
    for key in sorted(baselines or {}):
        pts = sorted(baselines[key].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker="x", alpha=0.8, label=" / ".join(key))
    ax.set_xticks([v for v in xs if isinstance(v, (int, float))])
    ax.set_xticklabels([f"{v:g}" for v in xs if isinstance(v, (int, float))])
    ax.set_xlabel("NFE" if x in ("nfe", "steps") else x)
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=9)
    positive = [v for t in (table, baselines or {}) for row in t.values() for v in row.values()]
    if positive and min(positive) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------- auto mode
def _as_int(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def learner_sections(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Learner rows (a ``learned`` value and a ``handcrafted`` dict): one section per model / solver / loss."""
    by: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if isinstance(r.get("learned"), (int, float)) and isinstance(r.get("handcrafted"), dict):
            by[(r.get("model"), r.get("solver"), r.get("loss"))].append(r)
    out = []
    for (model, solver, loss), rs in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        learned: Dict[tuple, Dict[Any, float]] = defaultdict(dict)
        base: Dict[tuple, Dict[Any, float]] = defaultdict(dict)
        for r in rs:
            nfe = _as_int(nfe_of(r))
            learned[(f"learned ({r.get('task', 'ld3')})",)][nfe] = float(r["learned"])
            for k, v in r["handcrafted"].items():
                base[(k,)][nfe] = float(v)
        xs = sorted({x for t in (learned, base) for row in t.values() for x in row})
        out.append({"kind": "learner", "title": f"{model} / {solver}: held-out {loss} distance to the teacher",
                    "metric": f"{loss} distance to the teacher", "table": dict(learned), "baselines": dict(base),
                    "xs": xs, "slug": f"{model}-{solver}-{loss}"})
    return out


def fid_sections(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """FID rows (``eval_fid.py``): one section per model (and feature network)."""
    by: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if isinstance(r.get("fid"), (int, float)) and nfe_of(r) is not None:
            by[(lookup(r, "model"), r.get("feature", "model"))].append(r)
    out = []
    for (model, feature), rs in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        table, xs = pivot(rs, "fid", ["solver", "discretization"], "nfe")
        table = {k: {_as_int(x): v for x, v in row.items()} for k, row in table.items()}
        out.append({"kind": "fid", "title": f"{model}: FID ({feature} features)", "metric": f"FID ({feature})",
                    "table": table, "baselines": {}, "xs": sorted({_as_int(x) for x in xs}),
                    "slug": f"{model}-fid-{feature}"})
    return out


def section_markdown(sec: Dict[str, Any]) -> str:
    rows = {**{k: v for k, v in sec["table"].items()}, **{k: v for k, v in sec["baselines"].items()}}
    head = "| grid | " + " | ".join(f"NFE {x}" for x in sec["xs"]) + " |"
    lines = [f"### {sec['title']}", "", head, "|" + "---|" + "---:|" * len(sec["xs"])]
    for key, row in rows.items():
        cells = [f"{row[x]:.4g}" if x in row else "" for x in sec["xs"]]
        lines.append("| " + " / ".join(key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def auto_report(rows: List[Dict[str, Any]], out: str) -> str:
    """Every kind of row: markdown (returned and written to ``<out>.md``) and one plot per section."""
    sections = learner_sections(rows) + fid_sections(rows)
    if not sections:
        raise SystemExit("no learner (main.py) or FID (eval_fid.py) rows in the results store")
    parts = []
    for sec in sections:
        png = Path(f"{out}-{sec['slug']}.png")
        plot(sec["table"], sec["xs"], sec["metric"], "nfe", png, baselines=sec["baselines"], title=sec["title"])
        parts.append(section_markdown(sec) + f"\n![{sec['title']}]({png.name})\n")
    md = "\n".join(parts)
    atomic_write_text(out + ".md", md)
    return md


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results/results.jsonl")
    p.add_argument("--metric", default="auto", help="auto (every kind of row) or a row key such as fid")
    p.add_argument("--group", default="model,solver,discretization", help="with an explicit --metric")
    p.add_argument("--x", default="nfe", help="with an explicit --metric (nfe falls back to steps)")
    p.add_argument("--out", default="results/report", help="output prefix: <out>.md and <out>*.png")
    p.add_argument("--paper", default=None, help="a published table (ld3/logging/paper_results.yaml) to compare with")
    p.add_argument("--tolerance", type=float, default=0.1, help="--paper: flag |ours - paper| > tolerance x paper "
                   "where the paper reports no noise")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
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
    if args.metric == "auto":
        md = auto_report(rows, args.out)
        print(md)
        print(f"wrote {args.out}.md and {args.out}-*.png")
        return 0
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
