"""Frechet distance helper against closed forms (ld3/metrics/frechet.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ld3.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features


def _rot(theta: float) -> np.ndarray:
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def test_diagonal_covariances_closed_form():
    # commuting covariances: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1.0 + 0.0 + 2.5**2 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_non_commuting_2d_closed_form():
    # For 2x2 SPD matrices: Tr((S1 S2)^{1/2}) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.diag([3.0, 0.5])
    r = _rot(0.7)
    s2 = r @ np.diag([2.0, 0.1]) @ r.T
    mu1, mu2 = np.array([0.3, -0.2]), np.array([-1.0, 0.4])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_general_spd_matches_symmetric_form():
    # Independent route: Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}), both roots by eigh.
    rng = np.random.default_rng(3)
    d = 12
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = psd_sqrt(s1)
    tr_sqrt = np.trace(psd_sqrt(r1 @ s2 @ r1))
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2) - 2 * tr_sqrt)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)  # symmetric
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_singular_covariance_is_finite():
    # a feature that never varies (rank-deficient covariances), as happens with dead ReLU units
    s1, s2 = np.diag([1.0, 0.0, 2.0]), np.diag([4.0, 0.0, 2.0])
    d = frechet_distance(np.zeros(3), s1, np.zeros(3), s2)
    assert d == pytest.approx((1 - 2) ** 2, abs=1e-4)


def test_feature_statistics_unbiased_and_torch_input():
    f = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mu, sigma = feature_statistics(f)
    np.testing.assert_allclose(mu, [2.0, 2.0])
    # unbiased: sum of squared deviations / (N - 1), by hand
    np.testing.assert_allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])
    assert mu.dtype == np.float64 and sigma.dtype == np.float64


def test_sample_estimate_converges_to_closed_form():
    rng = np.random.default_rng(0)
    r = _rot(0.4)
    s1, s2 = np.diag([1.0, 0.2]), r @ np.diag([0.5, 2.0]) @ r.T
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, -0.5])
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2) - 2 * tr_sqrt)
    assert frechet_distance_from_features(x1, x2) == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)),
        (np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)),
        (np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2)),
    ],
)
def test_bad_inputs_raise(args):
    with pytest.raises(ValueError):
        frechet_distance(*args)


def test_feature_statistics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        feature_statistics(np.zeros(4))
