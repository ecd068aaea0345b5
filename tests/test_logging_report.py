"""Results store, sweep logger and the report script."""

import json
import multiprocessing as mp
import os
import sys

import pytest

from ld3.logging import ResultsStore, make_logger, read_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def _append_many(path, worker, n):
    store = ResultsStore(path)
    for i in range(n):
        store.append({"worker": worker, "i": i, "payload": "x" * 2000})


def test_parallel_appends_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    procs = [mp.get_context("fork").Process(target=_append_many, args=(path, w, 50)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = read_results(path)
    assert len(rows) == 150
    assert sorted((r["worker"], r["i"]) for r in rows) == sorted((w, i) for w in range(3) for i in range(50))


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsStore(path).append({"a": 1})
    with open(path, "a") as f:
        f.write('{"a": 2, "b"')
    assert [r["a"] for r in read_results(path)] == [1]


def test_logger_backends(tmp_path):
    log = make_logger({"backend": "local", "results_path": str(tmp_path / "r.jsonl")}, {"steps": 4}, "run1")
    row = log.log_result({"fid": 2.5, "steps": 4})
    assert row["run"] == "run1" and row["config"] == {"steps": 4}
    log.finish()
    assert read_results(tmp_path / "r.jsonl")[0]["fid"] == 2.5
    off = make_logger({"backend": "disabled", "results_path": str(tmp_path / "x.jsonl")})
    off.log_result({"fid": 1.0})
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(ValueError, match="backend='slack'"):
        make_logger({"backend": "slack"})
    with pytest.raises(ValueError, match="wandb.mode='sometimes'"):
        make_logger({"backend": "wandb", "wandb": {"mode": "sometimes"}})


def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = make_logger({"backend": "wandb", "results_path": str(tmp_path / "r.jsonl"),
                       "wandb": {"mode": "offline", "project": "ld3-test"}}, {"steps": 4}, "offline-run")
    log.log({"loss": 0.5}, step=0)
    log.log_result({"fid": 3.0})
    log.finish()
    assert read_results(tmp_path / "r.jsonl")[0]["fid"] == 3.0
    assert any(p.name.startswith("offline-run") for p in (tmp_path / "wandb").iterdir())


def test_report_table_and_plot(tmp_path):
    import report

    path = tmp_path / "r.jsonl"
    store = ResultsStore(path)
    for solver, base in [("uni_pc", 10.0), ("ipndm", 20.0)]:
        for steps in (4, 6):
            store.append({"fid": base / steps, "config": {"solver": {"name": solver}, "steps": steps}})
    store.append({"fid": 99.0, "config": {"solver": {"name": "uni_pc"}, "steps": 8}})
    out = tmp_path / "rep"
    assert report.main(["--results", str(path), "--metric", "fid", "--group", "solver", "--out", str(out)]) == 0
    md = (tmp_path / "rep.md").read_text()
    assert "| uni_pc | 2.5 | 1.667 | 99 |" in md
    assert "| ipndm | 5 | 3.333 |  |" in md
    assert (tmp_path / "rep.png").stat().st_size > 1000
    assert json.loads(path.read_text().splitlines()[0])["fid"] == 2.5


def test_report_auto_on_every_kind_of_row(tmp_path):
    """LD3 / TimeTuner rows (learned + hand-crafted baselines) and FID rows, as the entry points write them."""
    import report

    path = tmp_path / "r.jsonl"
    store = ResultsStore(path)
    for task, nfe, learned in [("ld3", 4, 0.5), ("ld3", 6, 0.25), ("timetuner", 6, 0.3)]:
        store.append({"task": task, "model": "digits", "solver": "uni_pc", "nfe": nfe, "loss": "l2",
                      "learned": learned, "handcrafted": {"logSNR": 1.0 / nfe, "edm": 2.0 / nfe}})
    store.append({"fid": 12.5, "feature": "model", "model": "digits", "solver": "uni_pc", "steps": 6,
                  "discretization": "learned", "nfe": 6})
    out = tmp_path / "rep"
    assert report.main(["--results", str(path), "--out", str(out)]) == 0
    md = (tmp_path / "rep.md").read_text()
    assert "| learned (ld3) | 0.5 | 0.25 |" in md
    assert "| learned (timetuner) |  | 0.3 |" in md
    assert "| logSNR | 0.25 | 0.1667 |" in md  # the baselines
    assert "l2 distance to the teacher" in md and "FID (model features)" in md
    assert "| uni_pc / learned | 12.5 |" in md
    secs = report.learner_sections(read_results(path))
    assert secs[0]["xs"] == [4, 6] and all(isinstance(x, int) for x in secs[0]["xs"])
    assert (tmp_path / "rep-digits-uni_pc-l2.png").stat().st_size > 1000
    assert (tmp_path / "rep-digits-fid-model.png").stat().st_size > 1000
