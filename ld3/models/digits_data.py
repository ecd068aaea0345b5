"""The data of the embedded ``digits`` model: scikit-learn's 8 x 8 digits, upsampled, with a fixed split.

``sklearn.datasets.load_digits`` ships 1,797 grey-scale 8 x 8 images (values 0..16) with scikit-learn,
so nothing is downloaded. Images are scaled to [-1, 1] (v / 8 - 1) and bilinearly upsampled to
``size`` x ``size`` (``torch.nn.functional.interpolate``, ``align_corners=False``; bilinear weights are
convex, so the range stays [-1, 1]).

Split: stratified by class, 20 % validation. For each digit c, the indices of class c (in dataset
order) are permuted by ``numpy.random.default_rng(seed + c)`` and the first ``round(0.2 n_c)`` go to
validation (seed 0: 1,438 train / 359 validation images). :func:`split_fingerprint` hashes the
validation indices so a manifest can record exactly which split a model was trained on.
"""

from __future__ import annotations

import hashlib
from typing import Tuple

import numpy as np
import torch
from torch.nn import functional as F

SPLITS = ("train", "val", "all")
VAL_FRACTION = 0.2


def load_digits_images(size: int = 16) -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, size, size) float32 in [-1, 1] and (N,) int64 labels."""
    if size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8 (the native resolution), got {size}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(d.target, dtype=torch.long)
    return x.clamp(-1.0, 1.0), y


def split_indices(
    labels: torch.Tensor, seed: int = 0, val_fraction: float = VAL_FRACTION
) -> Tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) index arrays, each sorted; see the module docstring."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng(seed + int(c)).permutation(idx)
        n_val = int(round(val_fraction * idx.size))
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def digits_split(split: str = "train", size: int = 16, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split: ``train``, ``val`` or ``all``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; allowed: {list(SPLITS)}")
    x, y = load_digits_images(size)
    if split == "all":
        return x, y
    tr, va = split_indices(y, seed=seed)
    idx = torch.as_tensor(tr if split == "train" else va)
    return x[idx], y[idx]


def split_fingerprint(seed: int = 0) -> str:
    """sha256 (first 16 hex digits) of the validation indices of the split with ``seed``."""
    _, y = load_digits_images(8)
    _, va = split_indices(y, seed=seed)
    return hashlib.sha256(np.asarray(va, dtype=np.int64).tobytes()).hexdigest()[:16]
