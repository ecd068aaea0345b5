"""Frechet distance between Gaussians fitted to feature vectors (the distance behind FID).

For N(mu1, S1) and N(mu2, S2) the squared 2-Wasserstein (Frechet) distance is
(Dowson & Landau 1982; Heusel et al. 2017, Eq. 6)

    d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}).

FID reports d^2 (not d). The matrix square root is ``scipy.linalg.sqrtm`` of S1 S2; when that product is
singular (scipy warns) or not finite, eps * I is added to both covariances (the convention of the public FID code), and
an imaginary part of the root beyond round-off raises an error. Feature statistics use the unbiased
covariance (``np.cov(features, rowvar=False)``), like the EDM/ADM reference statistics.
The functions are generic (any feature space, any dimension); FID and the embedded digits distance are
built on them.
"""

from __future__ import annotations

import warnings
from typing import Tuple, Union

import numpy as np
import torch
from scipy import linalg

ArrayLike = Union[np.ndarray, torch.Tensor]


def _np64(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def feature_statistics(features: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of an (N, F) feature matrix, float64."""
    f = _np64(features)
    if f.ndim != 2:
        raise ValueError(f"features must be an (N, F) matrix, got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6
) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID value)."""
    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D of equal length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must have shape ({d}, {d}), got {s1.shape} and {s2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(s1 @ s2)
        except linalg.LinAlgWarning:  # singular product: retry with the offset below
            covmean = np.full((d, d), np.nan)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(covmean).max()))
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3 * scale):
            raise ValueError(
                f"matrix square root has a significant imaginary part (max {np.abs(covmean.imag).max():.3g}); "
                f"are the covariances positive semi-definite?"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(features1: ArrayLike, features2: ArrayLike, eps: float = 1e-6) -> float:
    """Squared Frechet distance between Gaussians fitted to two (N, F) feature matrices."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), eps=eps)
