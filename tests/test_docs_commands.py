"""Every entry-point command shown in README.md and docs/*.md composes and passes the config checks.

Each ``python main.py|gen_data.py|eval_fid.py ...`` line of a bash block is checked the way the entry
point checks it before running (``ld3.cli.check_overrides`` + ``ld3.config_validation.validate_config``),
without running it: a renamed key, a removed option or a bad value in the docs fails here. Sweeps
(``-m``) are checked with the first value of each comma list. Commands that name files the docs cannot
contain (a learned grid of a run: ``discretization=learned``) are left to tests/test_readme.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY = {"main.py": ("config", "main"), "gen_data.py": ("gen_data", "gen_data"),
         "eval_fid.py": ("eval_fid", "eval_fid")}


def doc_commands():
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split(" #")[0].strip()
                m = re.match(r"^(?:\.venv/bin/)?python (main\.py|gen_data\.py|eval_fid\.py)\b(.*)$", line)
                if m:
                    out.append((doc.name, m.group(1), m.group(2).strip()))
    return out


COMMANDS = [c for c in doc_commands() if "discretization=learned" not in c[2]]


def _first_of_sweep(arg: str) -> str:
    key, _, value = arg.partition("=")
    if "," in value and not value.startswith(("[", "'[", '"[')):
        value = value.split(",")[0]
    return f"{key}={value}"


def test_docs_have_commands():
    assert len(COMMANDS) >= 10
    assert {c[1] for c in COMMANDS} == set(ENTRY)


@pytest.mark.parametrize(("doc", "script", "args"), COMMANDS, ids=[f"{d}:{s} {a}" for d, s, a in COMMANDS])
def test_doc_command_passes_the_config_checks(doc, script, args, monkeypatch, tmp_path):
    from ld3.cli import check_overrides
    from ld3.config_validation import validate_config

    argv = shlex.split(args)
    sweep = "-m" in argv or "--multirun" in argv
    argv = [a for a in argv if not a.startswith("-")]
    if sweep:
        argv = [_first_of_sweep(a) for a in argv]
    monkeypatch.chdir(tmp_path)
    config_name, entry = ENTRY[script]
    validate_config(check_overrides(config_name, argv, script), entry)
    assert list(tmp_path.iterdir()) == []
