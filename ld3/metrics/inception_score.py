"""Inception Score (Salimans et al. 2016) from additive per-split sums, so it shards and resumes like FID.

``IS = exp(E_x KL(p(y|x) || p(y)))`` on each of ``splits`` groups of samples, reported as the mean and the
standard deviation (``ddof=0``) over the groups. The groups are contiguous in sample index: sample ``i`` of
``N`` belongs to split ``s`` with ``s * N // S <= i < (s + 1) * N // S`` (the convention of StyleGAN2-ADA's
``metrics/inception_score.py`` and of the ADM evaluator, which do not shuffle; torch-fidelity shuffles with a
fixed seed and torchmetrics with ``torch.randperm``, so their per-split numbers differ from ours by the split
assignment only; with ``splits=1`` all agree).

Per split the KL average is exact from three sums over its samples (float64):

    mean_i KL(p_i || q) = (1/n) sum_i sum_c p_ic log p_ic  -  sum_c q_c log q_c,   q = (1/n) sum_i p_i

so we keep ``n_s``, ``sum_i p_i`` (C floats) and ``sum_i sum_c p_ic log p_ic`` per split. They add over
batches, processes and resumed runs, and the score is the one-process score up to float64 summation order.

Logits: for ``fid.feature=inception`` the 1008 ``logits_unbiased`` of the TF Inception graph (the pool3
features times the final layer's weights, without its bias: the "no output bias" softmax of the TF/ADM and
StyleGAN evaluators, torch-fidelity's ``isc`` feature); for ``fid.feature=model`` the digits classifier's
10 logits (no published pipeline).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch


def split_bounds(num_samples: int, splits: int) -> torch.Tensor:
    """``[s * N // S for s in 0..S]``: split s holds the sample indices ``bounds[s] <= i < bounds[s + 1]``."""
    return torch.tensor([s * num_samples // splits for s in range(splits + 1)], dtype=torch.long)


def check_splits(num_samples: int, splits: int) -> None:
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"inception score splits must be an integer >= 1, got {splits!r}")
    if num_samples < splits:
        raise ValueError(f"inception score with {splits} splits needs at least {splits} samples, got {num_samples}")


class InceptionScoreSums:
    """Float64 per-split sums of softmax probabilities (see the module docstring); additive."""

    def __init__(self, num_samples: int, splits: int, num_classes: int) -> None:
        check_splits(num_samples, splits)
        self.num_samples = int(num_samples)
        self.splits = int(splits)
        self.bounds = split_bounds(num_samples, splits)
        self.count = torch.zeros(splits, dtype=torch.float64)
        self.sum_p = torch.zeros(splits, num_classes, dtype=torch.float64)
        self.sum_plogp = torch.zeros(splits, dtype=torch.float64)

    def update(self, logits: torch.Tensor, indices: torch.Tensor) -> None:
        """Add samples with global indices ``indices`` (0..N-1) and their class logits (B, C)."""
        logits = logits.detach().double().cpu().reshape(logits.shape[0], -1)
        indices = torch.as_tensor(indices, dtype=torch.long).cpu().reshape(-1)
        if logits.shape[0] != indices.numel():
            raise ValueError(f"{logits.shape[0]} logits for {indices.numel()} sample indices")
        if logits.shape[1] != self.sum_p.shape[1]:
            raise ValueError(f"expected {self.sum_p.shape[1]} classes, got logits of shape {tuple(logits.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise ValueError(f"sample indices must lie in 0..{self.num_samples - 1}")
        split = torch.bucketize(indices, self.bounds, right=True) - 1
        log_p = torch.log_softmax(logits, dim=1)
        p = log_p.exp()
        plogp = torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)
        self.count.index_add_(0, split, torch.ones_like(plogp))
        self.sum_p.index_add_(0, split, p)
        self.sum_plogp.index_add_(0, split, plogp)

    def state(self) -> Dict[str, torch.Tensor]:
        return {"count": self.count, "sum_p": self.sum_p, "sum_plogp": self.sum_plogp}

    def load_state(self, state: Dict[str, torch.Tensor]) -> "InceptionScoreSums":
        for key in ("count", "sum_p", "sum_plogp"):
            value = state[key].to(torch.float64)
            if value.shape != getattr(self, key).shape:
                raise ValueError(f"inception score sums {key!r}: shape {tuple(value.shape)}, expected "
                                 f"{tuple(getattr(self, key).shape)}")
            setattr(self, key, value.clone())
        return self

    def per_split(self) -> np.ndarray:
        """The score of every split (all splits must be complete)."""
        expected = (self.bounds[1:] - self.bounds[:-1]).double()
        if not torch.equal(self.count, expected):
            raise ValueError(f"inception score splits are incomplete: counts {self.count.tolist()}, "
                             f"expected {expected.tolist()}")
        q = self.sum_p / self.count[:, None]
        qlogq = torch.where(q > 0, q * torch.log(q), torch.zeros_like(q)).sum(1)
        kl = self.sum_plogp / self.count - qlogq
        return torch.exp(kl).numpy()

    def score(self) -> Tuple[float, float]:
        """(mean, standard deviation with ddof=0) over the splits."""
        s = self.per_split()
        return float(np.mean(s)), float(np.std(s))


def inception_score(logits: torch.Tensor, splits: int = 10) -> Tuple[float, float]:
    """IS (mean, std) of all logits (N, C) at once, samples in index order (see the module docstring)."""
    sums = InceptionScoreSums(logits.shape[0], splits, logits.shape[1])
    sums.update(logits, torch.arange(logits.shape[0]))
    return sums.score()


class InceptionScoreMetric:
    """The Inception Score as a :class:`ld3.metrics.accumulate.BatchMetric`: global batch ``b`` holds the
    sample indices ``b * batch_size ..``; the logits come from the feature extractor's ``outputs``."""

    def __init__(self, num_samples: int, batch_size: int, splits: int, num_classes: int) -> None:
        check_splits(num_samples, splits)
        self.num_samples, self.batch_size, self.splits = int(num_samples), int(batch_size), int(splits)
        self.num_classes = int(num_classes)

    def describe(self) -> Dict[str, object]:
        return {"splits": self.splits, "num_classes": self.num_classes, "split_rule": "contiguous s*N//S"}

    def _sums(self) -> InceptionScoreSums:
        return InceptionScoreSums(self.num_samples, self.splits, self.num_classes)

    def zeros(self) -> Dict[str, torch.Tensor]:
        return self._sums().state()

    def batch(self, b: int, images: torch.Tensor, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if "logits" not in outputs:
            raise ValueError("the Inception Score needs class logits, but the feature extractor gives none")
        sums = self._sums()
        start = b * self.batch_size
        sums.update(outputs["logits"], torch.arange(start, start + outputs["logits"].shape[0]))
        return sums.state()

    def result(self, state: Dict[str, torch.Tensor]) -> Dict[str, object]:
        sums = self._sums().load_state(state)
        per_split = sums.per_split()
        return {"inception_score": float(np.mean(per_split)), "inception_score_std": float(np.std(per_split)),
                "inception_score_splits": self.splits,
                "inception_score_per_split": [float(v) for v in per_split]}
