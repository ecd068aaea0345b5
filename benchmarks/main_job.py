#!/usr/bin/env python
"""Time the main job, ``python main.py`` on the defaults, from an empty data directory; optionally ``make demo``.

For every thread setting (``--threads auto,2``) and machine state (``--busy 0,2``: that many extra busy
processes, one spinning Python loop each, started for the measurement) it runs ``main.py`` in a fresh
directory and reports the wall time split into teacher generation, training and the held-out
evaluation (``result.json``: ``data_time_s``, ``train_time_s``, ``eval_time_s``), with the 1-minute load
average before and after. ``--make-demo`` also clones the repository into a temporary directory and
times ``make demo`` there (venv creation, the lean install, the main job).

The table is printed and, with ``--write``, replaces the block between the ``main-job`` markers of
``docs/benchmarks.md``.

    python benchmarks/main_job.py --threads auto,2 --busy 0,2 --write
    python benchmarks/main_job.py --busy "" --make-demo --rows-from earlier.txt --write   # add make demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"


def load1() -> float:
    return os.getloadavg()[0]


def start_busy(n: int) -> List[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_busy(procs: List[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def time_main(threads: str, busy: int, extra: List[str]) -> Dict[str, Any]:
    """One ``python main.py`` in an empty directory (teacher data generated on the fly)."""
    procs = start_busy(busy)
    try:
        if busy:
            time.sleep(5)  # let the busy processes show in the scheduler
        before = load1()
        with tempfile.TemporaryDirectory(prefix="ld3-main-job-") as d:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            env["PYTHONPATH"] = str(ROOT)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, str(ROOT / "main.py"), f"threads={threads}", *extra], cwd=d,
                                 env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                raise SystemExit(f"main.py failed ({out.returncode}):\n{out.stderr[-3000:]}")
            (res_path,) = Path(d).glob("runs/*/*/result.json")
            res = json.loads(res_path.read_text())
        after = load1()
    finally:
        stop_busy(procs)
    return {"what": "python main.py", "threads": threads, "busy": busy, "wall_s": wall,
            "data_s": res.get("data_time_s"), "train_s": res.get("train_time_s"), "eval_s": res.get("eval_time_s"),
            "load_before": before, "load_after": after}


def time_make_demo(busy: int) -> Dict[str, Any]:
    """``make demo`` on a fresh clone of this repository (its committed HEAD)."""
    procs = start_busy(busy)
    try:
        before = load1()
        with tempfile.TemporaryDirectory(prefix="ld3-demo-") as d:
            clone = Path(d) / "ld3"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            t0 = time.perf_counter()
            out = subprocess.run(["make", "demo"], cwd=clone, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                raise SystemExit(f"make demo failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            (res_path,) = clone.glob("runs/*/*/result.json")
            res = json.loads(res_path.read_text())
            venv_mb = sum(f.stat().st_size for f in (clone / ".venv").rglob("*") if f.is_file()) / 2**20
        after = load1()
    finally:
        stop_busy(procs)
    return {"what": f"make demo (fresh clone; .venv {venv_mb:.0f} MB)", "threads": "auto", "busy": busy,
            "wall_s": wall, "data_s": res.get("data_time_s"), "train_s": res.get("train_time_s"),
            "eval_s": res.get("eval_time_s"), "load_before": before, "load_after": after}


def fmt(v: Any) -> str:
    return "" if v is None else f"{v:.0f}" if isinstance(v, float) else str(v)


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| command | threads | extra busy processes | wall (s) | teacher data (s) | training (s) | "
             "held-out eval (s) | load avg before / after |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['threads']} | {r['busy']} | {fmt(r['wall_s'])} | {fmt(r['data_s'])} | "
                     f"{fmt(r['train_s'])} | {fmt(r['eval_s'])} | {r['load_before']:.2f} / {r['load_after']:.2f} |")
    return "\n".join(lines)


def parse_table(text: str) -> List[Dict[str, Any]]:
    """Rows back from a table this script printed (to combine separate invocations into one table)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 8 or not cells[0] or cells[0] in ("command",) or set(cells[0]) <= {"-"}:
            continue
        num = [float(c) if c else None for c in cells[3:7]]
        before, after = (float(x) for x in cells[7].split("/"))
        rows.append({"what": cells[0], "threads": cells[1], "busy": int(cells[2]), "wall_s": num[0], "data_s": num[1],
                     "train_s": num[2], "eval_s": num[3], "load_before": before, "load_after": after})
    return rows


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(head + BEGIN + "\n" + text + "\n" + END + tail)
    tmp.replace(DOC)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="auto,2", help="comma list of threads= settings for main.py")
    p.add_argument("--busy", default="0,2", help="comma list: extra busy processes during each measurement")
    p.add_argument("--make-demo", action="store_true", help="also time `make demo` on a fresh clone")
    p.add_argument("--write", action="store_true", help=f"replace the main-job block of {DOC.relative_to(ROOT)}")
    p.add_argument("--rows-from", type=Path, default=None,
                   help="start from the rows of a table this script printed earlier (combine invocations)")
    p.add_argument("overrides", nargs="*", help="extra main.py overrides (the benchmark is the defaults)")
    a = p.parse_args(argv)
    rows = parse_table(a.rows_from.read_text()) if a.rows_from else []
    for busy in [int(b) for b in a.busy.split(",") if b]:
        for th in [t for t in a.threads.split(",") if t]:
            rows.append(time_main(th, busy, a.overrides))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    if a.make_demo:
        rows.append(time_make_demo(0))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (f"Machine: {platform.processor() or platform.machine()}, {cpus} CPUs available, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: "
            f"`python benchmarks/main_job.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            + table(rows))
    print(text)
    if a.write:
        write_doc(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
