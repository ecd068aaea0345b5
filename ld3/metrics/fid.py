"""FID: feature extractors, streaming feature statistics and reference-statistics files.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to features of generated and
reference images. Two feature spaces are registered:

* ``inception``: the pool3 (2048-d) features of the TF-ported Inception-v3 used by the EDM/ADM FID
  code, through ``torchmetrics``' ``NoTrainInceptionV3`` (backed by torch-fidelity) loaded from a LOCAL
  weights file (``weights-inception-2015-12-05-6726825d.pth``; ``scripts/download_model.sh`` fetches it).
  Reference statistics in the EDM convention: ``.npz`` with ``mu`` and ``sigma``.
* ``model``: the model's own ``feature_fn`` (the embedded digits model's feature network), the offline
  analogue of FID for the embedded default.

Statistics are accumulated in float64 (sum and sum of outer products), so 50k samples never need to be
held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from ld3.utils.io import atomic_write_bytes

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
_EXTRACTORS: Dict[str, Callable[..., FeatureFn]] = {}


def register_feature_extractor(name: str):
    def deco(fn):
        _EXTRACTORS[name] = fn
        return fn

    return deco


def get_feature_extractor(name: str, **options) -> FeatureFn:
    """Build a feature function ``images in [-1, 1] (B, C, H, W) -> (B, F)`` by name."""
    if name not in _EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; available: {sorted(_EXTRACTORS)}")
    return _EXTRACTORS[name](**options)


@register_feature_extractor("inception")
def inception_features(
    weights_path: Optional[str] = None, cache_dir: Optional[str] = None, device: str = "cpu"
) -> FeatureFn:
    """Inception-v3 pool3 features from a local torch-fidelity weights file."""
    path = Path(weights_path) if weights_path else Path(cache_dir or ".") / INCEPTION_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. FID needs {INCEPTION_WEIGHTS} locally "
            f"(no download at run time): run scripts/download_model.sh inception, or set fid.inception_weights"
        )
    from ld3.utils.extras import require

    NoTrainInceptionV3 = require("torchmetrics.image.fid", "fid", "Inception features").NoTrainInceptionV3

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path)).to(device).eval()

    def fn(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # the integer images FID is defined on
        with torch.no_grad():
            return net(x).reshape(x.shape[0], -1).double().cpu()

    return fn


@register_feature_extractor("model")
def model_features(feature_fn: Optional[FeatureFn] = None, **_) -> FeatureFn:
    """A model's own feature network (``LoadedModel.feature_fn``)."""
    if feature_fn is None:
        raise ValueError("feature extractor 'model' needs a model with a feature_fn (e.g. the embedded digits model)")

    def fn(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return feature_fn(images).reshape(images.shape[0], -1).double().cpu()

    return fn


class FeatureStats:
    """Streaming mean and covariance of feature vectors (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self._sum: Optional[torch.Tensor] = None
        self._outer: Optional[torch.Tensor] = None

    def update(self, features: torch.Tensor) -> None:
        f = features.detach().double().cpu().reshape(features.shape[0], -1)
        if self._sum is None:
            self._sum = torch.zeros(f.shape[1], dtype=torch.float64)
            self._outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.n += f.shape[0]

    def mu_sigma(self) -> Tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (numpy's ``np.cov`` convention, as the EDM/ADM reference code)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), sigma.numpy()


def save_stats(path: Union[str, os.PathLike], mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write reference statistics (``mu``, ``sigma``) atomically as ``.npz``."""
    import io

    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    return atomic_write_bytes(path, buf.getvalue())


def load_stats(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``.npz`` reference statistics with ``mu`` and ``sigma`` (EDM/ADM convention)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID reference statistics not found: {path}. Fetch them with scripts/download_model.sh fid-refs "
            f"or compute them with eval_fid.py fid.compute_reference=true"
        )
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} must contain arrays 'mu' and 'sigma', found {sorted(f.keys())}")
        return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
