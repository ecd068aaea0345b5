"""benchmarks/learner_speed.py runs our side alone, with a clear message, when no reference checkout is given."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_learner_speed_without_reference(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("learner_speed", ROOT / "benchmarks" / "learner_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "speed.md"
    assert mod.main(["--reference", str(tmp_path / "absent"), "--nfe", "2", "--batch", "2", "--speed-iters", "3",
                     "--num-valid", "2", "--no-convergence", "--out", str(out)]) == 0
    text = out.read_text()
    assert "reference skipped: no LD3 checkout at" in capsys.readouterr().out
    row = [ln for ln in text.splitlines() if ln.startswith("| 2 | 2 |")]
    assert len(row) == 1 and "| n/a | n/a |" in row[0]
    assert float(row[0].split("|")[3]) > 0  # ours: seconds per iteration measured
