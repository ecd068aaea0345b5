"""Teacher data (ld3/data, gen_data.py): per-seed reproducibility, resume after SIGKILL, checksums and
repair, config binding, LD3-format reading, conditions, PNGs, the Hydra entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _teacher_models as tm
import numpy as np
import pytest
import torch

from ld3.data import (
    GenDataConfig,
    TeacherDataError,
    TeacherDataset,
    generate_teacher_data,
    latent_for_seed,
    load_prompts,
    parse_seeds,
    prior_transform,
    read_manifest,
    teacher_data_dir,
)
from ld3.discretizations import get_timesteps
from ld3.schedules import NoiseScheduleEDM
from ld3.solvers import get_solver

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GMM = {"name": "analytic_gmm", "options": {"dim": 16, "n_components": 4, "seed": 0},
       "guidance_type": "uncond", "guidance_scale": 1.0, "default_loss": "l2"}


def cfg_for(data_dir, model=None, **kw):
    cfg = {
        "model": dict(model or GMM),
        "solver": {"name": "ddim", "options": {}},
        "discretization": {"kind": "logSNR", "options": {}},
        "steps": 6,
        "total_samples": 20,
        "sampling_batch_size": 4,
        "shard_size": 8,
        "data_dir": str(data_dir),
        "progress": False,
    }
    cfg.update(kw)
    return cfg


def model_cfg(name, **kw):
    d = {"name": name, "options": {}, "guidance_type": "uncond", "guidance_scale": 1.0}
    d.update(kw)
    return d


def load_all(path, **kw):
    ds = TeacherDataset(path, **kw)
    return TeacherDataset.collate([ds[i] for i in range(len(ds))])


def shard_table(path):
    m = read_manifest(path)
    return [(e["file"], e["positions"], e["seeds"], e["sha256"]) for e in m["shards"]]


def direct_teacher(model, z, steps=6, condition=None, unconditional_condition=None, guidance=None, scale=None,
                   dtype=torch.float32):
    """Independent per-sample teacher: the solver called directly on one x_T."""
    ns = model.noise_schedule
    solver = get_solver("ddim", ns)
    ts = get_timesteps("logSNR", ns, steps, solver=solver)
    fn = model.model_fn(guidance_type=guidance, guidance_scale=scale)

    def f(x, t):
        return fn(x, t, condition=condition, unconditional_condition=unconditional_condition)

    with torch.no_grad():
        return solver.sample(f, prior_transform(ns, z).to(dtype)[None], ts)[0]


# ---------------------------------------------------------------------------- seeds and latents
def test_parse_seeds():
    assert parse_seeds("0-99") == list(range(100))
    assert parse_seeds("3-5,9, 12-13") == [3, 4, 5, 9, 12, 13]
    assert parse_seeds(7, total_samples=3) == [7, 8, 9]
    assert parse_seeds(None, None, seed=2) == list(range(2, 102))
    assert parse_seeds([5, 1, 9]) == [5, 1, 9]
    assert parse_seeds("0-9", total_samples=10) == list(range(10))
    for bad, match in [("0-", "cannot parse"), ("5-2", "empty"), ([1, 1], "duplicates"), ([-1], "non-negative"),
                       (1.5, "not supported")]:
        with pytest.raises(ValueError, match=match):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="disagrees"):
        parse_seeds("0-9", total_samples=5)


def test_latent_is_a_function_of_its_seed_and_prior_transform():
    z = latent_for_seed(123, (1, 4, 4))
    assert torch.equal(z, torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(123)))
    edm = NoiseScheduleEDM(0.002, 80.0)
    assert torch.equal(prior_transform(edm, z), 80.0 * z)
    vp = tm.pixel_gmm().noise_schedule
    assert torch.equal(prior_transform(vp, z), z)


def test_config_validation_names_bad_values(tmp_path):
    with pytest.raises(ValueError, match="eta=0.5 makes the teacher stochastic"):
        GenDataConfig.from_mapping(cfg_for(tmp_path, solver={"name": "ddim", "options": {"eta": 0.5}}))
    with pytest.raises(ValueError, match="unknown teacher-data options"):
        GenDataConfig.from_mapping(cfg_for(tmp_path, total_sample=3))
    with pytest.raises(ValueError, match="img_space='rgb'"):
        GenDataConfig.from_mapping(cfg_for(tmp_path, img_space="rgb"))
    with pytest.raises(ValueError, match="store nothing"):
        GenDataConfig.from_mapping(cfg_for(tmp_path, save_pt=False, save_png=False))
    named = teacher_data_dir(cfg_for(tmp_path, seeds="10-19", total_samples=None))
    assert named == tmp_path / "ddim_NFE6_logSNR_seed10"


# ---------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("which", ["conv_float32", "gmm_float64"])
def test_same_seeds_different_batch_sizes_bitwise_identical(tmp_path, which):
    if which == "conv_float32":
        model, mcfg, dtype = tm.conv_model(), model_cfg("conv_model"), "float32"
    else:
        model, mcfg, dtype = tm.pixel_gmm(), model_cfg("pixel_gmm"), "float64"
    runs = []
    for i, (bs, shard) in enumerate([(1, 5), (7, 32), (23, 13)]):
        cfg = cfg_for(tmp_path / str(i), mcfg, total_samples=23, sampling_batch_size=bs, shard_size=shard,
                      dtype=dtype, device="cpu", invariant_block=8)
        res = generate_teacher_data(cfg, model=model)
        assert res.generated == 23
        runs.append(load_all(res.path))
    for r in runs[1:]:
        assert r["seed"].tolist() == list(range(23))
        assert torch.equal(r["latent"], runs[0]["latent"])
        assert torch.equal(r["img"], runs[0]["img"])  # bitwise
    # independent check: each latent is its seed's randn and each img is the solver run on that sample alone
    for k in (0, 11, 22):
        assert torch.equal(runs[0]["latent"][k], latent_for_seed(k, model.shape))
        ref = direct_teacher(model, runs[0]["latent"][k], dtype=getattr(torch, dtype))
        assert torch.allclose(runs[0]["img"][k], ref, rtol=1e-5, atol=1e-5)


def test_process_split_equals_single_process(tmp_path):
    single = generate_teacher_data(cfg_for(tmp_path / "one", total_samples=30))
    for idx in (1, 0):
        res = generate_teacher_data(cfg_for(tmp_path / "two", total_samples=30, process_index=idx, process_count=2))
        assert res.generated == (16 if idx == 0 else 14)  # shards 0, 2 (8 + 8) and shards 1, 3 (8 + 6)
    assert res.complete
    assert shard_table(res.path) == shard_table(single.path)


def test_extending_the_seed_list_generates_only_the_new_samples(tmp_path):
    first = generate_teacher_data(cfg_for(tmp_path / "grow", total_samples=10))
    more = generate_teacher_data(cfg_for(tmp_path / "grow", total_samples=20))
    assert (first.generated, more.generated, more.existing) == (10, 10, 10)
    fewer = generate_teacher_data(cfg_for(tmp_path / "grow", total_samples=5))
    assert fewer.generated == 0 and "nothing to do" in fewer.summary()
    once = generate_teacher_data(cfg_for(tmp_path / "once", total_samples=20))
    a, b = load_all(more.path), load_all(once.path)
    assert a["seed"].tolist() == b["seed"].tolist() == list(range(20))
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["latent"], b["latent"])


def test_ensure_teacher_data_from_a_main_config(tmp_path):
    from ld3.data import ensure_teacher_data

    main_cfg = {
        "model": GMM, "steps": 4, "seed": 3, "device": "auto", "learner": {"num_train": 6},
        "teacher": {"solver": {"name": "ddim", "options": {}}, "steps": 6,
                    "discretization": {"kind": "logSNR", "options": {}}, "seed": 0, "data_dir": str(tmp_path),
                    "sampling_batch_size": 8, "labels": None, "progress": False},
    }
    path = ensure_teacher_data(cfg=main_cfg, model=None, num_samples=10, device=torch.device("cpu"))
    assert path == tmp_path / "ddim_NFE6_logSNR_seed0" and len(TeacherDataset(path)) == 10
    stamps = {p: p.stat().st_mtime_ns for p in path.rglob("*.pt")}
    assert ensure_teacher_data(main_cfg, num_samples=4) == path  # more than enough: reused untouched
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*.pt")} == stamps
    ensure_teacher_data(main_cfg, num_samples=14)  # too few: extended
    same = load_all(generate_teacher_data(cfg_for(tmp_path / "ref", total_samples=14)).path)
    assert torch.equal(load_all(path)["img"], same["img"])


def test_gits_teacher_grid_is_computed_for_the_model_and_checked_on_resume(tmp_path):
    gits = {"kind": "gits", "options": {"grid_size": 21, "num_samples": 16, "progress": False}}
    cfg = cfg_for(tmp_path, solver={"name": "ipndm", "options": {}}, discretization=gits, steps=5, total_samples=6)
    first = generate_teacher_data(cfg)
    grid = read_manifest(first.path)["timesteps"]
    assert len(grid) == 6 and grid[0] == 1.0 and grid[-1] == pytest.approx(1e-3)
    assert generate_teacher_data(cfg, total_samples=10).generated == 4  # same grid recomputed: accepted
    m = read_manifest(first.path)
    m["timesteps"][2] *= 1.01
    (first.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TeacherDataError, match="time grid computed now"):
        generate_teacher_data(cfg, total_samples=12)


# ---------------------------------------------------------------------------- resume after SIGKILL
_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import _teacher_models
_teacher_models.register_slow_gmm()
from ld3.data import generate_teacher_data
generate_teacher_data(json.loads(sys.argv[1]))
"""


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path):
    opts = {"dim": 16, "n_components": 4, "seed": 0}
    mcfg = model_cfg("slow_gmm", options=opts)
    cfg = cfg_for(tmp_path / "killed", mcfg, total_samples=24, shard_size=8, sampling_batch_size=4,
                  invariant_block=4, device="cpu")
    out = teacher_data_dir(cfg)
    env = dict(os.environ, LD3_TEST_DELAY="0.05", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(tests=str(TESTS)), json.dumps(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            m = read_manifest(out)  # written atomically: never half-written
            if m is not None and m["shards"]:
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the generator exited before its first shard: {proc.communicate()[1].decode()[-2000:]}")
            time.sleep(0.005)
        else:
            pytest.fail("no shard landed within 120 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    m = read_manifest(out)
    shards_at_kill = len(m["shards"])
    assert 1 <= shards_at_kill < 3 and not m["complete"], "the run must have been killed mid-way"

    resumed = generate_teacher_data(cfg, model=tm.slow_gmm(**opts))
    assert resumed.existing == 8 * shards_at_kill and resumed.generated == 24 - 8 * shards_at_kill
    assert resumed.complete
    assert not list(out.rglob("*.tmp")), "temp files of the killed writer must be cleaned up"
    reference = generate_teacher_data(cfg_for(tmp_path / "clean", mcfg, total_samples=24, shard_size=8,
                                              sampling_batch_size=4, invariant_block=4, device="cpu"),
                                      model=tm.slow_gmm(**opts))
    assert shard_table(out) == shard_table(reference.path)  # same files, same sha256
    a, b = load_all(out), load_all(reference.path)
    assert a["seed"].tolist() == list(range(24))  # no duplicate, no missing seed
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["latent"], b["latent"])


# ---------------------------------------------------------------------------- checksums and repair
def test_corrupted_and_truncated_shards_are_detected_and_repaired(tmp_path):
    cfg = cfg_for(tmp_path, total_samples=24)
    res = generate_teacher_data(cfg)
    before = shard_table(res.path)
    original = load_all(res.path)
    entries = read_manifest(res.path)["shards"]
    corrupt, truncated = res.path / entries[0]["file"], res.path / entries[2]["file"]
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    for call in (lambda: generate_teacher_data(cfg), lambda: TeacherDataset(res.path)):
        with pytest.raises(TeacherDataError) as err:
            call()
        msg = str(err.value)
        assert str(corrupt) in msg and "corrupted" in msg
        assert str(truncated) in msg and "truncated" in msg
        assert "repair=true" in msg
        assert str(res.path / entries[1]["file"]) not in msg

    fixed = generate_teacher_data(cfg, repair=True)
    assert fixed.generated == 16 and fixed.complete
    assert shard_table(res.path) == before  # regenerated bit for bit
    again = load_all(res.path)
    assert torch.equal(again["img"], original["img"])
    (res.path / entries[1]["file"]).unlink()
    with pytest.raises(TeacherDataError, match="missing"):
        generate_teacher_data(cfg)


# ---------------------------------------------------------------------------- binding and no-op
def test_config_change_for_an_existing_directory_is_refused(tmp_path):
    generate_teacher_data(cfg_for(tmp_path, total_samples=8))
    other = dict(GMM, options=dict(GMM["options"], seed=1), guidance_scale=2.0)
    with pytest.raises(TeacherDataError) as err:
        generate_teacher_data(cfg_for(tmp_path, other, total_samples=8))
    msg = str(err.value)
    assert "different configuration" in msg
    assert "model.options.seed: 0 (existing) != 1 (requested)" in msg
    assert "model.guidance_scale" in msg and "model.options.dim" not in msg
    with pytest.raises(TeacherDataError, match="dtype"):
        generate_teacher_data(cfg_for(tmp_path, total_samples=8, dtype="float64"))
    # run options may change freely
    res = generate_teacher_data(cfg_for(tmp_path, total_samples=8, sampling_batch_size=3, shard_size=5))
    assert res.generated == 0


def test_rerun_after_completion_is_a_noop(tmp_path, monkeypatch, caplog):
    cfg = cfg_for(tmp_path, total_samples=12)
    first = generate_teacher_data(cfg)
    stamps = {p: p.stat().st_mtime_ns for p in first.path.rglob("*.pt")}

    def no_model(*a, **k):
        raise AssertionError("a completed directory must not load the model")

    monkeypatch.setattr("ld3.models.zoo.load_model", no_model)
    with caplog.at_level("INFO", logger="ld3.data.generate"):
        res = generate_teacher_data(cfg)
    assert res.generated == 0 and res.existing == 12 and res.complete
    assert "nothing to do: all 12 requested samples already exist" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in first.path.rglob("*.pt")} == stamps


def test_incomplete_directory_is_refused_by_the_reader(tmp_path):
    res = generate_teacher_data(cfg_for(tmp_path, total_samples=16, process_count=2))
    assert not res.complete
    with pytest.raises(TeacherDataError, match="incomplete"):
        TeacherDataset(res.path)
    assert len(TeacherDataset(res.path, require_complete=False)) == 8


# ---------------------------------------------------------------------------- conditions
def test_class_labels_uniform_per_seed_and_given(tmp_path):
    model = tm.pixel_gmm()
    mcfg = model_cfg("pixel_gmm", guidance_type="classifier-free", guidance_scale=2.0)
    res = generate_teacher_data(cfg_for(tmp_path / "u", mcfg, total_samples=9), model=model)
    b = load_all(res.path)
    for k, s in enumerate(b["seed"].tolist()):
        g = torch.Generator().manual_seed(s)
        torch.randn(model.shape, generator=g)
        assert int(b["cond"][k]) == int(torch.randint(3, (1,), generator=g))
    assert b["uncond"].tolist() == [3] * 9  # the null class, not uc = c
    k = 4
    ref = direct_teacher(model, b["latent"][k], condition=b["cond"][k:k + 1],
                         unconditional_condition=b["uncond"][k:k + 1], guidance="classifier-free", scale=2.0)
    assert torch.allclose(b["img"][k], ref, rtol=1e-5, atol=1e-5)

    res = generate_teacher_data(cfg_for(tmp_path / "l", mcfg, total_samples=7, labels=[2, 0]), model=model)
    assert load_all(res.path)["cond"].tolist() == [2, 0, 2, 0, 2, 0, 2]
    res = generate_teacher_data(cfg_for(tmp_path / "i", model_cfg("pixel_gmm"), total_samples=3, labels=1), model=model)
    b = load_all(res.path)
    assert b["cond"].tolist() == [1, 1, 1] and b["uncond"] is None  # conditional, unguided
    with pytest.raises(ValueError, match="out of range"):
        generate_teacher_data(cfg_for(tmp_path / "bad", mcfg, total_samples=3, labels=5), model=model)
    res = generate_teacher_data(cfg_for(tmp_path / "n", model_cfg("pixel_gmm"), total_samples=3), model=model)
    assert load_all(res.path)["cond"] is None


def test_prompts_from_text_and_coco_json(tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("a cat\n\n  a red car  \nthe sea\nskip me\n")
    assert load_prompts(str(txt)) == ["a cat", "a red car", "the sea", "skip me"]
    assert load_prompts(str(txt), num_prompts=2) == ["a cat", "a red car"]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "id": 5, "caption": "A dog. "},
                                                              {"image_id": 2, "id": 6, "caption": "Two birds"}]}))
    assert load_prompts(str(coco)) == ["A dog.", "Two birds"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompts(str(tmp_path / "nope.txt"))

    model = tm.text_gmm()
    mcfg = model_cfg("text_gmm", guidance_type="classifier-free", guidance_scale=1.5)
    res = generate_teacher_data(cfg_for(tmp_path / "d", mcfg, total_samples=5, prompt_path=str(txt), num_prompts=3),
                                model=model)
    b = load_all(res.path)
    assert b["cond"] == ["a cat", "a red car", "the sea", "a cat", "a red car"]
    assert b["uncond"] == [""] * 5
    assert json.loads((res.path / "prompts.json").read_text()) == ["a cat", "a red car", "the sea"]
    ref = direct_teacher(model, b["latent"][2], condition=["the sea"], unconditional_condition=[""],
                         guidance="classifier-free", scale=1.5)
    assert torch.allclose(b["img"][2], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="class-conditional"):
        generate_teacher_data(cfg_for(tmp_path / "x", model_cfg("pixel_gmm"), total_samples=2, prompt_path=str(txt)),
                              model=tm.pixel_gmm())


# ---------------------------------------------------------------------------- PNGs, latent models, low_gpu
def test_save_png_and_latent_models(tmp_path):
    from PIL import Image

    res = generate_teacher_data(cfg_for(tmp_path / "p", model_cfg("pixel_gmm"), total_samples=5, save_png=True),
                                model=tm.pixel_gmm())
    b = load_all(res.path)
    for k in range(5):
        png = np.asarray(Image.open(res.path / "png" / f"{k:06d}.png"))
        expect = np.clip(np.rint((b["img"][k, 0].numpy().astype(np.float64) + 1) * 127.5), 0, 255)
        assert png.shape == (4, 4) and png.dtype == np.uint8 and (png == expect).all()
    with pytest.raises(ValueError, match="save_png needs image samples"):
        generate_teacher_data(cfg_for(tmp_path / "q", total_samples=2, save_png=True))

    lat = tm.latent_gmm()
    pix = generate_teacher_data(cfg_for(tmp_path / "lp", model_cfg("latent_gmm"), total_samples=4), model=lat)
    raw = generate_teacher_data(cfg_for(tmp_path / "ll", model_cfg("latent_gmm"), total_samples=4, img_space="latent",
                                        save_png=True), model=lat)
    bp, bl = load_all(pix.path), load_all(raw.path)
    assert bp["img"].shape == (4, 1, 4, 4) and bl["img"].shape == (4, 16)
    assert read_manifest(raw.path)["img_space"] == "latent" and read_manifest(pix.path)["img_space"] == "pixel"
    assert torch.equal(bp["img"], torch.tanh(bl["img"]).reshape(4, 1, 4, 4))
    assert (raw.path / "png" / "000003.png").exists()

    # save_pt=false: PNGs only (the shards keep seeds, latents and conditions for resume)
    only = generate_teacher_data(cfg_for(tmp_path / "po", model_cfg("pixel_gmm"), total_samples=3, save_pt=False,
                                         save_png=True), model=tm.pixel_gmm())
    assert len(list((only.path / "png").glob("*.png"))) == 3
    rec = torch.load(only.path / read_manifest(only.path)["shards"][0]["file"], weights_only=True)
    assert "img" not in rec and rec["seed"].tolist() == [0, 1, 2]
    with pytest.raises(TeacherDataError, match="save_pt=false"):
        TeacherDataset(only.path)

    # save_png turned on later: PNGs are written from the stored shards, nothing is regenerated
    late = generate_teacher_data(cfg_for(tmp_path / "p2", model_cfg("pixel_gmm"), total_samples=3),
                                 model=tm.pixel_gmm())
    again = generate_teacher_data(cfg_for(tmp_path / "p2", model_cfg("pixel_gmm"), total_samples=3, save_png=True))
    assert again.generated == 0 and sorted(p.name for p in (late.path / "png").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]


def test_low_gpu_sub_batches_give_the_same_samples(tmp_path):
    model, mcfg = tm.conv_model(), model_cfg("conv_model")
    kw = {"total_samples": 12, "sampling_batch_size": 12, "shard_size": 12, "invariant_block": 4}
    base = load_all(generate_teacher_data(cfg_for(tmp_path / "a", mcfg, **kw), model=model).path)
    low = load_all(generate_teacher_data(cfg_for(tmp_path / "b", mcfg, low_gpu=True, **kw), model=model).path)
    assert torch.equal(base["img"], low["img"])

    # without batch invariance: the network really sees sub-batches of low_gpu_chunk rows
    spy, rows = tm.pixel_gmm(), []
    net = spy.network

    def counting(x, *a, **k):
        rows.append(x.shape[0])
        return net(x, *a, **k)

    spy.network = counting
    full = load_all(generate_teacher_data(cfg_for(tmp_path / "c", model_cfg("pixel_gmm"), batch_invariant=False,
                                                  **kw), model=spy).path)
    assert max(rows) == 12
    rows.clear()
    free = load_all(generate_teacher_data(cfg_for(tmp_path / "d", model_cfg("pixel_gmm"), batch_invariant=False,
                                                  low_gpu=True, low_gpu_chunk=5, **kw), model=spy).path)
    assert max(rows) == 5 and sorted(set(rows)) == [2, 5]
    assert torch.allclose(full["img"], free["img"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- LD3 reference format
def test_reading_an_ld3_reference_directory(tmp_path):
    d = tmp_path / "uni_pc_NFE20_edm_seed0"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    recs = []
    for idx in [0, 1, 2, 3, 10]:
        rec = {"latent": torch.randn(3, 4, 4, generator=g), "img": torch.rand(3, 4, 4, generator=g) * 2 - 1,
               "c": torch.randn(2, 8, generator=g), "uc": torch.zeros(2, 8)}
        torch.save(rec, d / f"latent_{idx:06d}.pt")
        recs.append(rec)
    (d / "000000.png").write_bytes(b"not a tensor")  # LD3 writes PNGs next to the .pt files
    ds = TeacherDataset(d)
    assert ds.format == "ld3_reference" and len(ds) == 5
    for k in range(5):
        item = ds[k]
        assert torch.equal(item["latent"], recs[k]["latent"]) and torch.equal(item["img"], recs[k]["img"])
        assert torch.equal(item["cond"], recs[k]["c"]) and item["seed"] is None
    batch = TeacherDataset.collate([ds[i] for i in range(3)])
    assert batch["latent"].shape == (3, 3, 4, 4) and batch["cond"].shape == (3, 2, 8) and batch["seed"] is None
    assert len(TeacherDataset(d, limit=2)) == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=TeacherDataset.collate)
    assert [b["img"].shape[0] for b in loader] == [2, 2, 1]

    uncond = tmp_path / "uncond"
    uncond.mkdir()
    torch.save({"latent": torch.zeros(2), "img": torch.ones(2), "c": None, "uc": None}, uncond / "latent_000000.pt")
    item = TeacherDataset(uncond)[0]
    assert item["cond"] is None and item["uncond"] is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TeacherDataError, match="neither"):
        TeacherDataset(empty)


# ---------------------------------------------------------------------------- gen_data.py (Hydra)
def _gen_data(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "gen_data.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_gen_data_cli_end_to_end(tmp_path):
    args = ["model=analytic_gmm", "solver=ddim", "discretization=logSNR", "steps=4", "seeds=10-15",
            f"data_dir={tmp_path / 'data'}", "sampling_batch_size=4", "shard_size=4", "progress=false",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    p = _gen_data(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "data" / "ddim_NFE4_logSNR_seed10"  # ${data_dir}/${solver}_NFE${steps}_${kind}_seed${seed}
    m = read_manifest(out)
    assert m["complete"] and m["seeds"] == list(range(10, 16)) and len(m["shards"]) == 2
    assert m["config"]["model"]["name"] == "analytic_gmm" and m["config"]["steps"] == 4
    assert "generated 6 samples" in p.stdout + p.stderr and "samples/s" in p.stdout + p.stderr
    assert len(TeacherDataset(out)) == 6
    p = _gen_data(args, tmp_path)
    assert p.returncode == 0 and "nothing to do: all 6 requested samples" in p.stdout + p.stderr


def test_gen_data_help(tmp_path):
    p = _gen_data(["--help"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "total_samples" in p.stdout and "sampling_batch_size" in p.stdout



def test_teacher_identity_is_the_same_from_main_and_gen_data(tmp_path):
    """The README order: gen_data.py's full solver group, then main.py's teacher section with only what differs
    (and the other way round) describe one teacher; a real difference is still refused, naming the key."""
    from ld3.data import ensure_teacher_data, generate_teacher_data
    from ld3.data.config import GenDataConfig
    from ld3.data.generate import teacher_config_from_main
    from ld3.data.store import TeacherDataError

    full = {"name": "ddim", "options": {"eta": 0.0, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                                         "sample_max_value": 1.0}}
    gen_cfg = {"model": GMM, "solver": full, "discretization": {"kind": "logSNR", "options": {"t_min": None}},
               "steps": 6, "total_samples": 6, "data_dir": str(tmp_path), "progress": False}
    main_cfg = {"model": GMM, "device": "cpu",
                "teacher": {"solver": {"name": "ddim", "options": {}}, "steps": 6,
                            "discretization": {"kind": "logSNR", "options": {}}, "seed": 0,
                            "data_dir": str(tmp_path), "progress": False}}
    a = GenDataConfig.from_mapping(gen_cfg).identity()
    b = GenDataConfig.from_mapping(teacher_config_from_main(main_cfg)).identity()
    assert a == b
    assert a["solver"]["options"]["eta"] == 0.0 and a["discretization"]["options"] == {"t_max": None, "t_min": None}
    path = generate_teacher_data(gen_cfg).path
    assert ensure_teacher_data(main_cfg, num_samples=8) == path  # extended, not refused
    changed = {"name": "ddim", "options": {"thresholding": True}}
    other = dict(main_cfg, teacher={**main_cfg["teacher"], "solver": changed})
    with pytest.raises(TeacherDataError, match="solver.options.thresholding"):
        ensure_teacher_data(other, num_samples=8)
