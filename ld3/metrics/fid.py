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


def get_feature_extractor(name: str, **options) -> "FeatureExtractor":
    """Build a feature function ``images in [-1, 1] (B, C, H, W) -> (B, F)`` by name."""
    if name not in _EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; available: {sorted(_EXTRACTORS)}")
    return _EXTRACTORS[name](**options)


class FeatureExtractor:
    """A feature function ``images in [-1, 1] (B, C, H, W) -> (B, F) float64`` with a description.

    ``info`` (name, implementation, weights file and checksum, resizing, the published pipeline it
    reproduces) is recorded with every score, so two numbers are only compared when they share it.
    """

    def __init__(self, fn: FeatureFn, info: Dict[str, object],
                 outputs_fn: Optional[Callable[[torch.Tensor], Dict[str, torch.Tensor]]] = None,
                 num_classes: Optional[int] = None) -> None:
        self.fn = fn
        self.info = dict(info)
        self.outputs_fn = outputs_fn
        self.num_classes = num_classes  # classes of ``outputs()['logits']`` (Inception Score); None: no logits

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)

    def outputs(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{'features': (B, F)}`` plus ``'logits': (B, num_classes)`` when the network classifies, from one
        forward pass (the Inception Score uses the logits)."""
        if self.outputs_fn is None:
            return {"features": self.fn(images)}
        return self.outputs_fn(images)


INCEPTION_RESIZE = {
    # name -> (torchmetrics ``antialias`` flag, pre-resize with PIL bicubic to 299, published pipeline)
    "tf1": (False, False, "TF-Inception FID as in the TF/ADM evaluator and EDM fid.py (NVIDIA's "
            "inception-2015-12-05.pkl is the same TF graph): TF1 bilinear resize to 299 (torch-fidelity's port)"),
    "torchmetrics": (True, False, "torchmetrics FrechetInceptionDistance default: torch bilinear resize with "
                     "antialias (half-pixel centres); differs from the TF pipeline"),
    "clean": (False, True, "clean-fid (Parmar et al. 2022) style: PIL bicubic resize to 299 of the float image, "
              "re-rounded to 8 bits (the torch-fidelity network takes uint8; clean-fid feeds floats), then the same "
              "network; differs from the TF pipeline by the resizing"),
}


def _pil_bicubic_299(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, 299, 299): per-channel PIL bicubic resize in float32 ('F' mode)."""
    from PIL import Image

    out = np.empty((x.shape[0], x.shape[1], 299, 299), dtype=np.float32)
    arr = x.cpu().numpy().astype(np.float32)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[b, c], mode="F").resize((299, 299), resample=Image.BICUBIC)
            out[b, c] = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(out)


def inception_input(images: torch.Tensor, resize: str = "tf1") -> torch.Tensor:
    """The 299x299 float tensor (values in [0, 255]) a pipeline feeds to Inception-v3's first convolution.

    Used to measure how far the supported resizing conventions are apart (no weights needed).
    """
    if resize not in INCEPTION_RESIZE:
        raise ValueError(f"unknown inception resize {resize!r}; allowed: {sorted(INCEPTION_RESIZE)}")
    antialias, pil, _ = INCEPTION_RESIZE[resize]
    x = to_uint8_batch(images)
    if pil:
        return _pil_bicubic_299(x)
    xf = x.float()
    if antialias:
        return torch.nn.functional.interpolate(xf, size=(299, 299), mode="bilinear", align_corners=False,
                                               antialias=True)
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(xf, size=(299, 299), align_corners=False)


def to_uint8_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, 3, H, W), grey repeated to RGB, rounded as EDM's generate.py."""
    x = images
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@register_feature_extractor("inception")
def inception_features(
    weights_path: Optional[str] = None, cache_dir: Optional[str] = None, device: str = "cpu", resize: str = "tf1",
) -> FeatureExtractor:
    """Inception-v3 pool3 (2048-d) features from a local torch-fidelity weights file.

    ``resize`` picks the published pipeline (:data:`INCEPTION_RESIZE`): ``tf1`` (default) reproduces the
    TF/ADM/EDM FID; ``torchmetrics`` and ``clean`` are the other two conventions in common use.
    """
    if resize not in INCEPTION_RESIZE:
        raise ValueError(f"unknown inception resize {resize!r}; allowed: {sorted(INCEPTION_RESIZE)}")
    path = Path(weights_path) if weights_path else Path(cache_dir or ".") / INCEPTION_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. FID needs {INCEPTION_WEIGHTS} locally "
            f"(no download at run time): run scripts/download_model.sh inception, or set fid.inception_weights"
        )
    from ld3.utils.extras import require

    NoTrainInceptionV3 = require("torchmetrics.image.fid", "fid", "Inception features").NoTrainInceptionV3

    from ld3.utils.io import sha256_file

    antialias, pil, pipeline = INCEPTION_RESIZE[resize]
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path), antialias=antialias).to(device).eval()

    def pool3(images: torch.Tensor) -> torch.Tensor:
        x = to_uint8_batch(images.to(device))  # the integer images FID is defined on
        if pil:  # 299x299 already: the network's own resize is then the identity
            x = _pil_bicubic_299(x).round().clamp(0, 255).to(torch.uint8).to(device)
        with torch.no_grad():
            return net(x).reshape(x.shape[0], -1)

    def fn(images: torch.Tensor) -> torch.Tensor:
        return pool3(images).double().cpu()

    def outputs(images: torch.Tensor) -> Dict[str, torch.Tensor]:
        f = pool3(images)
        with torch.no_grad():  # torch-fidelity's 'logits_unbiased': pool3 @ fc.weight.T (no bias), 1008 classes
            logits = f.mm(net.fc.weight.T)
        return {"features": f.double().cpu(), "logits": logits.double().cpu()}

    info = {"name": "inception", "implementation": "torchmetrics NoTrainInceptionV3 (torch-fidelity port)",
            "layer": "pool3 (2048)", "weights": path.name, "weights_sha256": sha256_file(path),
            "resize": resize, "reproduces": pipeline,
            "logits": "logits_unbiased (1008; pool3 @ fc.weight.T, the TF graph's softmax without bias)"}
    return FeatureExtractor(fn, info, outputs, num_classes=int(net.fc.weight.shape[0]))


@register_feature_extractor("model")
def model_features(feature_fn: Optional[FeatureFn] = None, model_name: Optional[str] = None,
                   weights_sha256: Optional[str] = None, **_) -> FeatureExtractor:
    """A model's own feature network (``LoadedModel.feature_fn``)."""
    if feature_fn is None:
        raise ValueError("feature extractor 'model' needs a model with a feature_fn (e.g. the embedded digits model)")

    def fn(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return feature_fn(images).reshape(images.shape[0], -1).double().cpu()

    info = {"name": "model", "implementation": f"feature network of model {model_name!r}",
            "weights_sha256": weights_sha256, "reproduces": "no published pipeline (this project's digits FD)"}
    logits_fn = getattr(feature_fn, "logits", None)
    head = getattr(getattr(feature_fn, "net", None), "head", None)
    num_classes = getattr(feature_fn, "num_classes", getattr(head, "out_features", None))
    if logits_fn is None or num_classes is None:
        return FeatureExtractor(fn, info)

    def outputs(images: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            feats = feature_fn(images).reshape(images.shape[0], -1).double().cpu()
            return {"features": feats, "logits": logits_fn(images).double().cpu()}

    info["logits"] = f"the feature network's classifier head ({num_classes} classes)"
    return FeatureExtractor(fn, info, outputs, num_classes=int(num_classes))


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

    @property
    def dim(self) -> int:
        """Feature dimension (0 before the first update)."""
        return 0 if self._sum is None else int(self._sum.shape[0])

    def add(self, other: "FeatureStats") -> "FeatureStats":
        """Add another accumulator's sums in place (disjoint sample sets)."""
        if other._sum is None:
            return self
        if self._sum is None:
            self._sum = torch.zeros_like(other._sum)
            self._outer = torch.zeros_like(other._outer)
        if other._sum.shape != self._sum.shape:
            raise ValueError(f"feature dimensions differ: {self.dim} vs {other.dim}")
        self._sum += other._sum
        self._outer += other._outer
        self.n += other.n
        return self

    def state(self) -> Dict[str, object]:
        """The float64 sums as a dict of tensors (what checkpoints store and processes reduce)."""
        return {"n": int(self.n), "sum": self._sum, "outer": self._outer}

    @classmethod
    def from_state(cls, state: Dict[str, object]) -> "FeatureStats":
        out = cls()
        out.n = int(state["n"])
        if state.get("sum") is not None:
            out._sum = state["sum"].to(torch.float64).clone()
            out._outer = state["outer"].to(torch.float64).clone()
        return out

    @classmethod
    def from_sums(cls, n: int, sum_: torch.Tensor, outer: torch.Tensor) -> "FeatureStats":
        return cls.from_state({"n": n, "sum": sum_, "outer": outer})

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
