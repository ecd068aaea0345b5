"""scripts/embedded_fid_table.py --keep: an earlier table is read back cell for cell and merged with new cells."""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import embedded_fid_table as script  # noqa: E402


def _rows(text):
    return [line for line in text.split("## Notes")[0].splitlines() if line.startswith(("## ", "| "))]


def _args(tmp_path, keep, solvers=("ipndm",)):
    return argparse.Namespace(solvers=list(solvers), nfe=[4, 5], num_samples=500, seed=0, tt_iters=50, keep=keep,
                              md=str(tmp_path / "out.md"))


def test_keep_merges_cells_columns_sections_and_notes(tmp_path):
    earlier = {("ipndm", 4): {"logSNR": 83.0, "gits": 110.88}, ("ipndm", 5): {"logSNR": 74.69},
               ("ddim", 4): {"untuned": 139.37}}
    text = script.render(earlier, ["logSNR", "gits", "untuned"], _args(tmp_path, None, ["ipndm", "ddim"]), 60.0)
    (tmp_path / "old.md").write_text(text + "\n## Notes\n\n* how it was made\n")
    cells, kinds, solvers = script.read_md_table(tmp_path / "old.md")
    assert cells == earlier and kinds == ["logSNR", "gits", "untuned"] and solvers == ["ipndm", "ddim"]
    args = _args(tmp_path, str(tmp_path / "old.md"))
    script._write_md({}, [], args, time.perf_counter(), cells, kinds, solvers)  # nothing new: the same table
    out = (tmp_path / "out.md").read_text()
    assert _rows(out) == _rows(text) and out.endswith("## Notes\n\n* how it was made\n")
    new = {("ipndm", 4): {"timetuner": 80.0, "logSNR": 82.0}, ("uni_pc", 4): {"timetuner": 9.0}}
    args = _args(tmp_path, str(tmp_path / "old.md"), ["ipndm", "uni_pc"])
    script._write_md(new, ["timetuner"], args, time.perf_counter(), cells, kinds, solvers)
    merged, kinds2, solvers2 = script.read_md_table(tmp_path / "out.md")
    assert kinds2 == [*kinds, "timetuner"] and solvers2 == ["ipndm", "ddim", "uni_pc"]
    assert merged[("ipndm", 4)] == {"logSNR": 82.0, "gits": 110.88, "timetuner": 80.0}  # new cells win
    assert merged[("ipndm", 5)] == {"logSNR": 74.69} and merged[("ddim", 4)] == {"untuned": 139.37}
    assert "| 4 | 82.00 | 110.88 |  | **80.00** |" in (tmp_path / "out.md").read_text()


def test_committed_table_reads_back():
    doc = ROOT / "docs" / "results_embedded_fid.md"
    cells, kinds, solvers = script.read_md_table(doc)
    assert len(solvers) >= 3 and len(kinds) >= 3 and len(cells) >= 21
