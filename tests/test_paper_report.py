"""``scripts/report.py --paper TABLE``: published numbers beside ours, from a results store built here."""

import importlib.util
from pathlib import Path

import pytest

from ld3.logging import ResultsStore
from ld3.logging.paper import get_table, load_paper_results

ROOT = Path(__file__).resolve().parents[1]


def _report_main():
    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_paper_file_holds_the_abstract_numbers():
    # independent of the data file: the LD3 abstract states 2.38 (CIFAR-10, 10 NFE) and 2.27 (AFHQv2, 10 NFE);
    # the PFDiff abstract 138.81 -> 16.46 (ImageNet-64, 4 NFE); the TimeTuner abstract 9.65 -> 6.07
    tables = load_paper_results()
    ld3 = {r["label"]: r["fid"] for r in tables["ld3_cifar10"]["rows"]}
    assert ld3["iPNDM, LD3"][10] == 2.38
    assert {r["label"]: r["fid"] for r in tables["ld3_afhqv2"]["rows"]}["iPNDM, LD3"][10] == 2.27
    assert [r["fid"][4] for r in tables["pfdiff_imagenet64"]["rows"]] == [138.81, 16.46]
    assert [r["fid"][10] for r in tables["timetuner_lsun_bedroom"]["rows"]] == [9.65, 6.07]
    for name, t in tables.items():
        for r in t["rows"]:
            assert all(isinstance(v, float) and v > 0 for v in r["fid"].values()), (name, r["label"])
    with pytest.raises(ValueError, match="unknown paper table 'nope'"):
        get_table("nope")


def test_report_paper_ld3_cifar10_from_store(tmp_path):
    store = ResultsStore(tmp_path / "results.jsonl")
    ref = "/cache/fid-refs/cifar10-32x32.npz"
    # as eval_fid.py logs them: close to the paper, far from it, an extra grid, and rows of other tables
    store.append({"model": "edm", "solver": "ipndm", "steps": 4, "nfe": 4, "discretization": "logSNR",
                  "fid": 35.50, "feature": "inception", "reference": ref, "complete": True})
    store.append({"model": "edm", "solver": "ipndm", "steps": 10, "nfe": 10, "discretization": "learned",
                  "fid": 4.00, "feature": "inception", "reference": ref, "complete": True})
    store.append({"model": "edm", "solver": "ipndm", "steps": 6, "nfe": 6, "discretization": "edm",
                  "fid": 20.0, "feature": "inception", "reference": ref, "complete": True})
    store.append({"model": "edm", "solver": "ipndm", "steps": 4, "nfe": 4, "discretization": "logSNR",
                  "fid": 99.0, "feature": "inception", "reference": "/x/ffhq-64x64.npz", "complete": True})
    store.append({"model": "digits", "solver": "ipndm", "steps": 4, "nfe": 4, "discretization": "gits",
                  "fid": 1.0, "feature": "model", "reference": "digits:val", "complete": True})
    store.append({"model": "edm", "solver": "uni_pc", "steps": 8, "nfe": 8, "discretization": "dmn",
                  "fid": 6.0, "feature": "inception", "reference": "x", "complete": True,
                  "config": {"experiment": {"table": "ld3_cifar10"}}})
    out = tmp_path / "rep" / "cifar"
    rc = _report_main()(["--results", str(tmp_path / "results.jsonl"), "--paper", "ld3_cifar10", "--out", str(out)])
    assert rc == 0
    md = (tmp_path / "rep" / "cifar.md").read_text()
    png = tmp_path / "rep" / "cifar.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| iPNDM")
             or line.startswith("| UniPC")}
    # 35.50 vs 35.04: +0.46 (within 10%), 4.00 vs 2.38: +1.62 (flagged)
    assert "35.04 / 35.50 (+0.46)" in lines["iPNDM, LogSNR"] and "**!**" not in lines["iPNDM, LogSNR"]
    assert "2.38 / 4.00 (+1.62) **!**" in lines["iPNDM, LD3"]
    assert "5.90 / 6.00 (+0.10)" in lines["UniPC, DMN"]  # matched through config.experiment.table
    assert "15.63 / -" in lines["iPNDM, GITS"]  # not run: paper only
    assert "99.00" not in md and "1.00 |" not in md  # other tables' rows stay out
    assert "| ipndm, edm | 6 | 20.00 |" in md  # ours without a published number
    assert "3/28 published cells have our number; 1 flagged." in md
