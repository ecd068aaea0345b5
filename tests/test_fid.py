"""FID plumbing: streaming statistics, reference files, feature extractors, and an end-to-end evaluation."""

import numpy as np
import pytest
import torch

from ld3.metrics.fid import FeatureStats, get_feature_extractor, load_stats, save_stats
from ld3.metrics.frechet import frechet_distance


def test_streaming_stats_match_numpy():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1000, 7, generator=g, dtype=torch.float64) @ torch.randn(7, 7, generator=g, dtype=torch.float64)
    stats = FeatureStats()
    for i in range(0, 1000, 130):
        stats.update(f[i : i + 130])
    mu, sigma = stats.mu_sigma()
    assert np.allclose(mu, f.numpy().mean(0), atol=1e-12)
    assert np.allclose(sigma, np.cov(f.numpy(), rowvar=False), atol=1e-10)


def test_stats_file_roundtrip_and_errors(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    m2, s2 = load_stats(tmp_path / "ref.npz")
    assert np.array_equal(m2, mu) and np.array_equal(s2, sigma)
    with pytest.raises(FileNotFoundError, match="download_model.sh"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")


def test_inception_missing_weights_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth.*download_model.sh"):
        get_feature_extractor("inception", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'"):
        get_feature_extractor("clip")


def test_frechet_distance_closed_form():
    # two Gaussians with commuting covariances: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    fd = frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    assert fd == pytest.approx(3.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-9)


@pytest.mark.slow
def test_evaluate_digits_more_steps_is_closer():
    from ld3.discretizations import get_timesteps
    from ld3.metrics.evaluate import evaluate_fid
    from ld3.models.zoo import load_model
    from ld3.solvers import get_solver

    model = load_model("digits", device="cpu")
    solver = get_solver("ddim", model.noise_schedule)
    out = {}
    for nfe in (2, 20):
        ts = get_timesteps("logSNR", model.noise_schedule, nfe, solver=solver)
        out[nfe] = evaluate_fid(model, solver, ts, num_samples=200, batch_size=100, reference_images="digits",
                                progress=False)
        assert np.isfinite(out[nfe]["fid"]) and out[nfe]["nfe"] == nfe
    assert out[20]["fid"] < out[2]["fid"]
