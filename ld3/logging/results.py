"""The local results store: an append-only JSONL file, one row per finished run; needs no service.

Appends are a single ``write`` of one line under an exclusive ``flock``, so parallel sweep jobs on
one machine never interleave rows. CSV export is provided for spreadsheets.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

PathLike = Union[str, os.PathLike]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


class ResultsStore:
    """Append rows (dicts) to ``path`` (JSONL) and read them back."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def append(self, row: Dict[str, Any]) -> Dict[str, Any]:
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **_jsonable(row)}
        line = json.dumps(row, sort_keys=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return row

    def rows(self) -> List[Dict[str, Any]]:
        return read_results(self.path)

    def to_csv(self, out: PathLike, columns: Optional[Iterable[str]] = None) -> Path:
        rows = self.rows()
        cols = list(columns) if columns else sorted({k for r in rows for k in r})
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        return out


def read_results(path: PathLike) -> List[Dict[str, Any]]:
    """All rows of a JSONL results file; a torn last line (crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
