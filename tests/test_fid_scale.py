"""FID at scale: sharded accumulation, resume after an interruption, PNG export, image-folder references.

Oracles are independent of the code under test: ``np.cov`` of features computed in one pass over all
images (``ld3.metrics.frechet.feature_statistics``), files read back with PIL, and the closed form
FD(P, P) = 0.
"""

import os
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from ld3.metrics.accumulate import accumulate_features
from ld3.metrics.fid import FeatureStats, inception_input, load_stats, save_stats
from ld3.metrics.frechet import feature_statistics, frechet_distance
from ld3.metrics.images import ImageSet, png_path, write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NFE = 3


@pytest.fixture(scope="module")
def digits():
    from ld3.models.zoo import load_model

    return load_model("digits", device="cpu")


def _grid(model, nfe=NFE):
    from ld3.discretizations import get_timesteps
    from ld3.solvers import get_solver

    solver = get_solver("ddim", model.noise_schedule)
    return solver, get_timesteps("logSNR", model.noise_schedule, nfe, solver=solver)


class CountingSolver:
    """Wraps a solver; counts sample() calls and raises on call number ``fail_on`` (an injected crash)."""

    def __init__(self, inner, fail_on=None):
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def nfe(self, n):
        return self.inner.nfe(n)

    def sample(self, *args, **kwargs):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise RuntimeError("injected failure")
        return self.inner.sample(*args, **kwargs)


def _eval(model, solver, ts, **kw):
    from ld3.metrics.evaluate import evaluate_fid

    kw.setdefault("num_samples", 96)
    kw.setdefault("batch_size", 32)
    return evaluate_fid(model, solver, ts, reference_images="digits", progress=False, device="cpu",
                        run_info={"test": "fid_scale"}, **kw)


def test_feature_stats_add_and_state_roundtrip():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(300, 5, generator=g, dtype=torch.float64)
    a, b = FeatureStats(), FeatureStats()
    a.update(f[:100])
    b.update(f[100:])
    c = FeatureStats.from_state(a.state()).add(b)
    mu, sigma = c.mu_sigma()
    mu_np, sigma_np = feature_statistics(f)
    assert c.n == 300 and np.allclose(mu, mu_np, atol=1e-12) and np.allclose(sigma, sigma_np, atol=1e-12)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        c.add(FeatureStats.from_sums(2, torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)))


def test_accumulate_resumes_and_refuses_other_runs(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.rand(70, 3, 2, 2, generator=g) * 2 - 1
    calls = []

    def produce(b):
        calls.append(b)
        return data[b * 10 : (b + 1) * 10]

    feat = lambda x: x.reshape(x.shape[0], -1).double()  # noqa: E731
    part = accumulate_features(7, produce, feat, checkpoint_dir=tmp_path, run_fingerprint="A", max_batches=3,
                               progress=False)
    assert not part.complete and part.done_batches == 3 and calls == [0, 1, 2]
    full = accumulate_features(7, produce, feat, checkpoint_dir=tmp_path, run_fingerprint="A", progress=False)
    assert full.complete and calls == [0, 1, 2, 3, 4, 5, 6]  # only the missing batches
    again = accumulate_features(7, produce, feat, checkpoint_dir=tmp_path, run_fingerprint="A", progress=False)
    assert again.computed_batches == 0 and len(calls) == 7  # a finished run is a no-op
    mu, sigma = full.stats.mu_sigma()
    mu_np, sigma_np = feature_statistics(data.reshape(70, -1))
    assert np.allclose(mu, mu_np, atol=1e-12) and np.allclose(sigma, sigma_np, atol=1e-12)
    assert np.array_equal(again.stats.mu_sigma()[1], sigma)
    with pytest.raises(ValueError, match="another configuration"):
        accumulate_features(7, produce, feat, checkpoint_dir=tmp_path, run_fingerprint="B", progress=False)


def test_injected_crash_then_rerun_matches_uninterrupted(digits, tmp_path):
    inner, ts = _grid(digits)
    reference = _eval(digits, inner, ts)  # one uninterrupted run, no checkpoints
    crashing = CountingSolver(inner, fail_on=3)  # dies while sampling the third batch
    with pytest.raises(RuntimeError, match="injected failure"):
        _eval(digits, crashing, ts, checkpoint_dir=tmp_path / "ckpt")
    rerun = CountingSolver(inner)
    out = _eval(digits, rerun, ts, checkpoint_dir=tmp_path / "ckpt")
    assert rerun.calls == 1  # batches 0 and 1 were kept; only batch 2 is sampled again
    assert out["complete"] and out["fid"] == pytest.approx(reference["fid"], rel=1e-10)
    done = CountingSolver(inner)
    again = _eval(digits, done, ts, checkpoint_dir=tmp_path / "ckpt")
    assert done.calls == 0 and again["fid"] == pytest.approx(reference["fid"], rel=1e-12)
    # the record of the feature extractor travels with the score
    assert again["feature_extractor"]["name"] == "model" and again["feature_extractor"]["weights_sha256"]


def test_png_export_layout_and_rescoring_matches(digits, tmp_path):
    from ld3.metrics.evaluate import reference_statistics, score_images
    from ld3.metrics.fid import get_feature_extractor

    solver, ts = _grid(digits)
    out = _eval(digits, solver, ts, num_samples=40, batch_size=16, seed=990, png_dir=tmp_path / "png")
    assert png_path(tmp_path, 1234) == tmp_path / "001000" / "001234.png"
    files = sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png"))
    assert files[0] == "000000/000990.png" and files[-1] == "001000/001029.png" and len(files) == 40
    from PIL import Image

    with Image.open(tmp_path / "png" / "001000" / "001000.png") as im:
        assert im.mode == "L" and im.size == (16, 16)
    feat = get_feature_extractor("model", feature_fn=digits.feature_fn)
    mu, sigma, _ = reference_statistics(feat, None, "digits", "val", None)
    fd, n, _ = score_images(feat, str(tmp_path / "png"), mu, sigma)
    assert n == 40 and fd == pytest.approx(out["fid"], rel=1e-6)  # the PNGs hold exactly the scored images


def test_reference_from_folder_and_zip_self_score_zero(digits, tmp_path):
    from ld3.metrics.evaluate import image_statistics, quantize_8bit, score_images
    from ld3.metrics.fid import get_feature_extractor
    from ld3.models.digits_data import digits_split

    images, _ = digits_split("val")
    images = images[:150]
    folder = write_image_folder(tmp_path / "real", images)
    with zipfile.ZipFile(tmp_path / "real.zip", "w") as z:  # EDM dataset_tool layout: images + dataset.json
        for p in sorted(folder.rglob("*.png")):
            z.write(p, p.relative_to(folder).as_posix())
        z.writestr("dataset.json", '{"labels": null}')
    feat = get_feature_extractor("model", feature_fn=digits.feature_fn)
    stats, desc = image_statistics(feat, str(folder), batch_size=64)
    assert stats.n == 150 and "folder" in desc
    mu, sigma = stats.mu_sigma()
    oracle_mu, oracle_sigma = feature_statistics(feat(quantize_8bit(images)))
    assert np.allclose(mu, oracle_mu, atol=1e-9) and np.allclose(sigma, oracle_sigma, atol=1e-9)
    zstats, _ = image_statistics(feat, str(tmp_path / "real.zip"), batch_size=64)
    assert zstats.n == 150 and np.allclose(zstats.mu_sigma()[1], sigma, atol=1e-12)
    # an EDM/ADM-style .npz (float32 arrays, extra keys) loads as it is
    np.savez(tmp_path / "edm.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32), extra=np.zeros(1))
    emu, esigma = load_stats(tmp_path / "edm.npz")
    fd, n, _ = score_images(feat, str(folder), emu, esigma)
    assert n == 150 and abs(fd) < 1e-3 * np.trace(sigma)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    fd64, _, _ = score_images(feat, str(tmp_path / "real.zip"), *load_stats(tmp_path / "ref.npz"))
    # the digits features have a singular covariance, so frechet_distance adds eps * I inside the square
    # root only (the public FID convention): FD(P, P) = -2 * F * eps = -1.28e-4 here, vs Tr(sigma) ~ 2.5e3
    assert abs(fd64) <= 2 * mu.shape[0] * 1e-6 + 1e-9


def test_real_digits_score_lower_than_nfe3_samples(digits, tmp_path):
    from ld3.metrics.evaluate import reference_statistics, score_images
    from ld3.metrics.fid import get_feature_extractor
    from ld3.models.digits_data import digits_split

    solver, ts = _grid(digits)
    n = 128
    sampled = _eval(digits, solver, ts, num_samples=n, batch_size=64)
    real = write_image_folder(tmp_path / "train", digits_split("train")[0][:n])
    feat = get_feature_extractor("model", feature_fn=digits.feature_fn)
    mu, sigma, _ = reference_statistics(feat, None, "digits", "val", None)
    fd_real, _, _ = score_images(feat, str(real), mu, sigma)
    assert fd_real < 0.5 * sampled["fid"], (fd_real, sampled["fid"])


def test_image_set_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a folder nor a .zip"):
        ImageSet(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageSet(tmp_path / "empty")
    write_image_folder(tmp_path / "mixed", torch.zeros(1, 1, 8, 8))
    write_image_folder(tmp_path / "mixed", torch.zeros(1, 3, 8, 8), start=1)
    with pytest.raises(ValueError, match="one size and channel count"):
        ImageSet(tmp_path / "mixed").load([0, 1])


def test_inception_resize_pipelines_differ_and_are_named():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    outs = {k: inception_input(x, k) for k in ("tf1", "torchmetrics", "clean")}
    assert all(v.shape == (2, 3, 299, 299) for v in outs.values())
    flat = torch.zeros(1, 1, 32, 32)  # a constant image stays constant under every resize
    assert all(torch.allclose(inception_input(flat, k), torch.full((1, 3, 299, 299), 128.0)) for k in outs)
    assert (outs["tf1"] - outs["clean"]).abs().mean() > 1.0
    with pytest.raises(ValueError, match="unknown inception resize 'bicubic'"):
        inception_input(x, "bicubic")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        return compose(config_name="eval_fid", overrides=overrides)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """``torchrun --nproc_per_node=2`` (gloo on CPU) gives the one-process score, also when resuming."""
    import json

    from ld3.metrics.evaluate import run_from_config

    common = [f"steps={NFE}", "solver=ddim", "num_samples=128", "batch_size=32", "progress=false", "logger=disabled",
              "device=cpu", "save_grid=false", f"paths.fid_refs={tmp_path / 'refs'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no dependence on the host name resolving

    def launch(extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}",
               "eval_fid.py", *common, *extra]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        return res.stdout

    launch([f"out_dir={tmp_path / 'two'}"])
    two = json.loads((tmp_path / "two" / "fid.json").read_text())
    assert two["processes"] == 2 and two["complete"]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("shard-*")) == [
        "shard-rank0-of2.pt", "shard-rank1-of2.pt"]
    one = run_from_config(_compose(common + [f"out_dir={tmp_path / 'one'}"]))
    assert one["processes"] == 1
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-10)
    # interrupted with 2 processes (one batch each), finished by one process: the same number
    stdout = launch([f"out_dir={tmp_path / 'mixed'}", "max_batches=1"])
    assert "partial: 2/4 batches" in stdout
    mixed = run_from_config(_compose(common + [f"out_dir={tmp_path / 'mixed'}"]))
    assert mixed["batches_computed"] == 2 and mixed["fid"] == pytest.approx(one["fid"], rel=1e-10)
    # an independent oracle: all 128 samples in one batch, np.cov of their features
    from ld3.models.zoo import load_model

    model = load_model("digits", device="cpu")
    solver, ts = _grid(model)
    from ld3.data.latents import latents_and_labels
    from ld3.metrics.evaluate import quantize_8bit

    lat, lab = latents_and_labels(range(128), model.shape, model.num_classes)
    fn = model.model_fn(condition=lab, unconditional_condition=torch.full_like(lab, model.null_class))
    with torch.no_grad():
        x0 = quantize_8bit(model.to_pixels(solver.sample(fn, lat, ts)).clamp(-1, 1))
        f = model.feature_fn(x0).double()
    ref_mu, ref_sigma = load_stats(tmp_path / "refs" / "digits-val-model-q8.npz")
    oracle = frechet_distance(*feature_statistics(f), ref_mu, ref_sigma)
    assert one["fid"] == pytest.approx(oracle, rel=1e-4)
