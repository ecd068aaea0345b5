"""Imagen dynamic thresholding of data (x_0) predictions.

Saharia et al. 2022 ("Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding", Sec. 2.3): per sample, let s be the ``ratio`` quantile of |x0| over all its
elements, clamp s to [1, max_value], then clip x0 to [-s, s] and divide by s. This keeps
pixel-space data predictions inside [-1, 1] without saturating them. It is the same rule as
diffusers' ``_threshold_sample`` and DPM-Solver's ``dynamic_thresholding_fn``.

Meant for pixel-space data-prediction solvers; it is a pure function (no state) and works on any
(B, ...) tensor. The quantile is piecewise-differentiable; gradients flow through the clamp.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

__all__ = ["dynamic_threshold", "ThresholdingOptions", "parse_thresholding_options"]


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Imagen dynamic thresholding of ``x0`` (shape (B, ...)).

    s_b = clamp(quantile_ratio(|x0_b|), 1, max_value);  x0_b <- clamp(x0_b, -s_b, s_b) / s_b.
    """
    if x0.dim() < 1:
        raise ValueError(f"x0 must have a batch dimension, got shape {tuple(x0.shape)}")
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = s.clamp(min=1.0, max=max_value).reshape((-1,) + (1,) * (x0.dim() - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class ThresholdingOptions:
    """Validated thresholding options shared by the data-prediction solvers.

    Options (names as in diffusers' schedulers):
        thresholding: apply :func:`dynamic_threshold` to every x_0 prediction (default False).
        dynamic_thresholding_ratio: the quantile, in (0, 1] (default 0.995).
        sample_max_value: the largest allowed threshold, >= 1 (default 1.0; Imagen used 1 for pixels).
    """

    def __init__(
        self, thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0
    ) -> None:
        if not isinstance(thresholding, bool):
            raise ValueError(f"thresholding must be True or False, got {thresholding!r}")
        ratio = float(dynamic_thresholding_ratio)
        if not (0.0 < ratio <= 1.0):
            raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {dynamic_thresholding_ratio!r}")
        max_value = float(sample_max_value)
        if not (max_value >= 1.0):
            raise ValueError(f"sample_max_value must be >= 1, got {sample_max_value!r}")
        self.thresholding = thresholding
        self.ratio = ratio
        self.max_value = max_value

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """Threshold ``x0`` if enabled, else return it unchanged."""
        if not self.thresholding:
            return x0
        return dynamic_threshold(x0, self.ratio, self.max_value)

    def describe(self) -> Dict[str, Any]:
        return {
            "thresholding": self.thresholding,
            "dynamic_thresholding_ratio": self.ratio,
            "sample_max_value": self.max_value,
        }


def parse_thresholding_options(options: Dict[str, Any]) -> ThresholdingOptions:
    """Pop the three thresholding keys from ``options`` (a dict) and return validated options."""
    keys = ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")
    kw = {k: options.pop(k) for k in keys if k in options}
    return ThresholdingOptions(**kw)
