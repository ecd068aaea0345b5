"""Our FID numbers beside the published ones (``scripts/report.py --paper TABLE``).

The published numbers live in ONE cited data file, ``ld3/logging/paper_results.yaml``. Our numbers come
from the local results store (rows that ``eval_fid.py`` appends): a row belongs to a table when it was
scored with Inception features against the table's reference statistics (the basename of its
``reference``), or when its config carries ``experiment.table`` equal to the table's name. For each
published row (solver, discretization) and NFE the report shows paper, ours, the difference, and flags
cells off by more than the paper's noise (or, where the paper reports none, ``tolerance`` x paper).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

DATA_FILE = Path(__file__).with_name("paper_results.yaml")
FORMAT = "ld3.paper-results/1"


def load_paper_results(path: Union[str, os.PathLike, None] = None) -> Dict[str, Any]:
    """The ``tables`` mapping of the data file (validated)."""
    import yaml

    path = Path(path) if path else DATA_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    tables = data.get("tables") or {}
    for name, t in tables.items():
        for key in ("title", "source", "reference", "rows"):
            if key not in t:
                raise ValueError(f"{path}: table {name!r} lacks {key!r}")
        for r in t["rows"]:
            if not {"label", "solver", "discretization", "fid"} <= set(r):
                raise ValueError(f"{path}: a row of table {name!r} lacks label/solver/discretization/fid: {r}")
    return tables


def get_table(name: str, path: Union[str, os.PathLike, None] = None) -> Dict[str, Any]:
    tables = load_paper_results(path)
    if name not in tables:
        raise ValueError(f"unknown paper table {name!r}; available: {sorted(tables)}")
    return tables[name]


def _get(row: Dict[str, Any], dotted: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _row_solver_disc_nfe(row: Dict[str, Any]) -> Tuple[Optional[str], Optional[str], Optional[int]]:
    solver = row.get("solver") or _get(row, "config.solver.name")
    disc = row.get("discretization") or _get(row, "config.discretization.kind")
    nfe = row.get("nfe") if row.get("nfe") is not None else row.get("steps")
    return solver, disc, None if nfe is None else int(nfe)


def belongs(row: Dict[str, Any], table_name: str, table: Dict[str, Any]) -> bool:
    """Is this results-store row one of ``table``'s cells (a complete Inception FID on its reference)?"""
    if row.get("fid") is None or row.get("complete") is False:
        return False
    if _get(row, "config.experiment.table") == table_name:
        return True
    ref = str(row.get("reference") or "")
    return row.get("feature") == "inception" and os.path.basename(ref.split(" ")[0]) == table["reference"]


def ours(rows: List[Dict[str, Any]], table_name: str, table: Dict[str, Any]) -> Dict[Tuple[str, str, int], float]:
    """{(solver, discretization, nfe): fid} of our rows for a table; the last row wins."""
    out: Dict[Tuple[str, str, int], float] = {}
    for r in rows:
        if not belongs(r, table_name, table):
            continue
        solver, disc, nfe = _row_solver_disc_nfe(r)
        if solver is None or disc is None or nfe is None:
            continue
        out[(str(solver), str(disc), nfe)] = float(r["fid"])
    return out


def compare(rows: List[Dict[str, Any]], table_name: str, table: Dict[str, Any],
            tolerance: float = 0.1) -> List[Dict[str, Any]]:
    """One entry per published cell: label, nfe, paper, ours (or None), diff, flagged."""
    mine = ours(rows, table_name, table)
    cells = []
    for r in table["rows"]:
        for nfe, paper in sorted((int(k), float(v)) for k, v in r["fid"].items()):
            val = mine.get((r["solver"], r["discretization"], nfe))
            noise = r.get("noise", table.get("noise"))
            allowed = float(noise) if noise is not None else tolerance * paper
            diff = None if val is None else val - paper
            cells.append({"label": r["label"], "solver": r["solver"], "discretization": r["discretization"],
                          "nfe": nfe, "paper": paper, "ours": val, "diff": diff, "allowed": allowed,
                          "flagged": diff is not None and abs(diff) > allowed})
    return cells


def render_markdown(table_name: str, table: Dict[str, Any], cells: List[Dict[str, Any]],
                    tolerance: float, extra: Optional[Dict[Tuple[str, str, int], float]] = None) -> str:
    nfes = sorted({c["nfe"] for c in cells})
    noise = table.get("noise")
    rule = f"noise {noise}" if noise is not None else f"no noise reported: flagged when |diff| > {tolerance:g} x paper"
    lines = [f"## {table['title']} (`{table_name}`)", "",
             f"Source: {table['source']} (ld3/logging/paper_results.yaml). Reference statistics: "
             f"`{table['reference']}`. Cells: paper / ours (ours - paper); **!** = off by more than allowed "
             f"({rule}); `-` = not run yet.", ""]
    if table.get("teacher_fid") is not None:
        lines += [f"Teacher FID (paper): {table['teacher_fid']}", ""]
    lines += ["| row | ours as | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
              "|---|---|" + "---|" * len(nfes)]
    labels = []
    for c in cells:
        if c["label"] not in labels:
            labels.append(c["label"])
    for label in labels:
        row_cells = {c["nfe"]: c for c in cells if c["label"] == label}
        any_c = next(iter(row_cells.values()))
        out = []
        for n in nfes:
            c = row_cells.get(n)
            if c is None:
                out.append("")
            elif c["ours"] is None:
                out.append(f"{c['paper']:.2f} / -")
            else:
                flag = " **!**" if c["flagged"] else ""
                out.append(f"{c['paper']:.2f} / {c['ours']:.2f} ({c['diff']:+.2f}){flag}")
        lines.append(f"| {label} | {any_c['solver']}, {any_c['discretization']} | " + " | ".join(out) + " |")
    if extra:
        lines += ["", "Ours without a published number:", "", "| solver, discretization | NFE | FID |",
                  "|---|---|---|"]
        for (s, d, n), v in sorted(extra.items()):
            lines.append(f"| {s}, {d} | {n} | {v:.2f} |")
    flagged = sum(c["flagged"] for c in cells)
    have = sum(c["ours"] is not None for c in cells)
    lines += ["", f"{have}/{len(cells)} published cells have our number; {flagged} flagged."]
    return "\n".join(lines) + "\n"


def plot_table(table_name: str, table: Dict[str, Any], cells: List[Dict[str, Any]], out: Path) -> Path:
    """FID vs NFE: published (dashed, open markers) and ours (solid) per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = []
    for c in cells:
        if c["label"] not in labels:
            labels.append(c["label"])
    for i, label in enumerate(labels):
        color = f"C{i % 10}"
        pts = sorted((c["nfe"], c["paper"], c["ours"]) for c in cells if c["label"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", marker="o", mfc="none", color=color,
                label=f"{label} (paper)")
        mine = [(p[0], p[2]) for p in pts if p[2] is not None]
        if mine:
            ax.plot([p[0] for p in mine], [p[1] for p in mine], "-", marker="s", color=color, label=f"{label} (ours)")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FID")
    ax.set_yscale("log")
    ax.set_title(table["title"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out


def paper_report(rows: List[Dict[str, Any]], table_name: str, out_prefix: Union[str, os.PathLike],
                 tolerance: float = 0.1, data_file: Union[str, os.PathLike, None] = None) -> Dict[str, Any]:
    """Write ``<out_prefix>.md`` and ``<out_prefix>.png`` for one table; returns paths, markdown and cells."""
    from ld3.utils.io import atomic_write_text

    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    table = get_table(table_name, data_file)
    cells = compare(rows, table_name, table, tolerance)
    published = {(c["solver"], c["discretization"], c["nfe"]) for c in cells}
    extra = {k: v for k, v in ours(rows, table_name, table).items() if k not in published}
    md = render_markdown(table_name, table, cells, tolerance, extra)
    md_path = atomic_write_text(str(out_prefix) + ".md", md)
    png_path = plot_table(table_name, table, cells, Path(str(out_prefix) + ".png"))
    return {"markdown": md, "md": md_path, "png": png_path, "cells": cells}
