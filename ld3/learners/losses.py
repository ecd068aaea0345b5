"""Per-sample distances between a student sample and its teacher target, by registry name.

Every loss is built as ``get_loss(name, model=None, **options)`` and called as ``loss(pred, target)``
on pixel-space tensors (B, ...) (latent models are decoded first); it returns a (B,) vector, one
distance per sample, so the LD3 learner can keep latent moves per sample.

* ``l2``: mean over all non-batch entries of (pred - target)^2 (LD3's ``compute_distance_between_two``:
  sum / (C H W)).
* ``l1``: mean of |pred - target|.
* ``pseudo_huber``: sqrt(||pred - target||^2 + c^2) - c with c = 0.00054 sqrt(d) by default
  (Song & Dhariwal 2023, "Improved techniques for training consistency models", Sec. 3.3).
* ``lpips``: LPIPS (Zhang et al. 2018; the ``lpips`` package) with the VGG-16 (default, as LD3) or
  AlexNet trunk. The package ships only the linear heads; the trunk's ImageNet weights must exist as a
  local file (``backbone_path``, the ld3 weights cache or the torch hub cache). When none is found we
  fail before any training with :class:`MissingWeightsError` naming the file and
  ``scripts/download_model.sh``. ``backbone='random'`` builds a randomly initialized trunk, for tests
  only; its name says so (``lpips_vgg[RANDOM-BACKBONE]``). Inputs are images in [-1, 1]; one-channel
  images are repeated to three channels.
* ``feature``: for models that provide ``feature_fn`` (the embedded ``digits`` model), the LPIPS
  analogue in the model's own feature network: features of each layer are unit-normalized along the
  channel axis, the squared differences averaged over positions and summed over layers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_LOSSES: Dict[str, Callable[..., Loss]] = {}

#: torchvision file names of the LPIPS trunks (what ``scripts/download_model.sh`` fetches)
LPIPS_BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
#: smallest image side each trunk accepts (AlexNet's stride-4 stem and three poolings; VGG's four poolings)
LPIPS_MIN_SIZE = {"vgg": 16, "alex": 32}


class MissingWeightsError(FileNotFoundError):
    """A weights file that cannot be downloaded here is absent."""


def register_loss(name: str) -> Callable[[Callable[..., Loss]], Callable[..., Loss]]:
    """Decorator adding a loss factory ``factory(model=None, **options) -> Loss`` to the registry."""

    def deco(factory: Callable[..., Loss]) -> Callable[..., Loss]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = factory
        return factory

    return deco


def available_losses() -> List[str]:
    return sorted(_LOSSES)


def get_loss(name: str, model: Any = None, **options: Any) -> Loss:
    """Build the loss registered as ``name`` (``model``: the LoadedModel, for model-specific losses)."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; available losses: {available_losses()}")
    return _LOSSES[name](model=model, **options)


def _flat_diff(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
    target = target.to(device=pred.device, dtype=pred.dtype)
    return (pred - target).reshape(pred.shape[0], -1)


class Loss(nn.Module):
    """Base class: ``forward(pred, target) -> (B,)`` per-sample distances; ``name`` for run names."""

    name: str = "loss"

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name}


class L2Loss(Loss):
    name = "l2"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _flat_diff(pred, target).pow(2).mean(dim=1)


class L1Loss(Loss):
    name = "l1"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _flat_diff(pred, target).abs().mean(dim=1)


class PseudoHuberLoss(Loss):
    """sqrt(||d||^2 + c^2) - c; ``c=None`` -> 0.00054 sqrt(dim) (iCT's choice)."""

    name = "pseudo_huber"

    def __init__(self, c: float | None = None) -> None:
        super().__init__()
        if c is not None and not (float(c) > 0):
            raise ValueError(f"pseudo_huber c={c!r} must be > 0 (or null for 0.00054*sqrt(dim))")
        self.c = None if c is None else float(c)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = _flat_diff(pred, target)
        c = self.c if self.c is not None else 0.00054 * math.sqrt(d.shape[1])
        return torch.sqrt(d.pow(2).sum(dim=1) + c * c) - c

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "c": self.c}


@register_loss("l2")
def _make_l2(model: Any = None, **options: Any) -> Loss:
    _no_options("l2", options)
    return L2Loss()


@register_loss("l1")
def _make_l1(model: Any = None, **options: Any) -> Loss:
    _no_options("l1", options)
    return L1Loss()


@register_loss("pseudo_huber")
def _make_pseudo_huber(model: Any = None, c: float | None = None, **options: Any) -> Loss:
    _no_options("pseudo_huber", options)
    return PseudoHuberLoss(c=c)


def _no_options(name: str, options: Dict[str, Any]) -> None:
    if options:
        raise ValueError(f"loss {name!r} got unknown options {sorted(options)}")


# --------------------------------------------------------------------------------------------- LPIPS
def lpips_backbone_candidates(net: str, cache_dir: str | None = None) -> List[Path]:
    """Where an LPIPS trunk file is looked for, in order: the ld3 weights cache, then torch hub's."""
    fname = LPIPS_BACKBONE_FILES[net]
    out: List[Path] = []
    if cache_dir:
        out += [Path(cache_dir) / "lpips" / fname, Path(cache_dir) / fname]
    env = os.environ.get("LD3_CACHE")
    if env:
        out += [Path(env) / "weights" / "lpips" / fname]
    out.append(Path.home() / ".cache" / "ld3" / "weights" / "lpips" / fname)
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / fname)
    seen, uniq = set(), []
    for p in out:
        key = str(p.expanduser())
        if key not in seen:
            seen.add(key)
            uniq.append(Path(key))
    return uniq


def resolve_lpips_backbone(net: str, backbone_path: str | None = None, cache_dir: str | None = None) -> Path:
    """The local trunk weights file for ``net`` or a :class:`MissingWeightsError` naming what to fetch."""
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"lpips net={net!r} is not supported; allowed: {sorted(LPIPS_BACKBONE_FILES)}")
    if backbone_path:
        p = Path(backbone_path).expanduser()
        if not p.is_file():
            raise MissingWeightsError(
                f"LPIPS {net} backbone file {str(p)!r} (configured loss.backbone_path) does not exist. "
                f"Fetch {LPIPS_BACKBONE_FILES[net]} with `bash scripts/download_model.sh lpips`, or run with loss=l2."
            )
        return p
    cands = lpips_backbone_candidates(net, cache_dir)
    for p in cands:
        if p.is_file():
            return p
    raise MissingWeightsError(
        f"LPIPS-{net} needs the torchvision ImageNet backbone {LPIPS_BACKBONE_FILES[net]!r}, which is not on "
        f"this machine (looked in: {', '.join(str(p) for p in cands)}). The `lpips` package ships only its "
        f"linear heads. Fetch the file with `bash scripts/download_model.sh lpips` (or copy it into one of "
        f"those paths, or set loss.backbone_path), or run with loss=l2."
    )


class LPIPSLoss(Loss):
    """LPIPS distance with a locally loaded trunk (see module docstring)."""

    def __init__(
        self,
        net: str = "vgg",
        backbone: str = "pretrained",
        backbone_path: str | None = None,
        cache_dir: str | None = None,
        version: str = "0.1",
        resize_to: int | None = None,
    ) -> None:
        super().__init__()
        if net not in LPIPS_BACKBONE_FILES:
            raise ValueError(f"lpips net={net!r} is not supported; allowed: {sorted(LPIPS_BACKBONE_FILES)}")
        if backbone not in ("pretrained", "random"):
            raise ValueError(f"lpips backbone={backbone!r} is not supported; allowed: 'pretrained', 'random'")
        from ld3.utils.extras import require

        lpips = require("lpips", "fid", "the LPIPS loss")  # local import: keeps `import ld3.learners` light

        path = None if backbone == "random" else resolve_lpips_backbone(net, backbone_path, cache_dir)
        # pnet_rand=True: never let torchvision download; the trunk is loaded below from the local file
        self.model = lpips.LPIPS(net=net, version=version, pnet_rand=True, pretrained=True, verbose=False)
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            load_lpips_trunk(self.model.net, state, str(path))
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.net = net
        self.backbone = backbone
        self.backbone_file = None if path is None else str(path)
        self.resize_to = resize_to
        self.name = f"lpips_{net}" if backbone == "pretrained" else f"lpips_{net}[RANDOM-BACKBONE]"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.dim() != 4:
            raise ValueError(f"lpips needs images (B, C, H, W), got shape {tuple(pred.shape)}; use loss=l2")
        if pred.shape != target.shape:
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
        target = target.to(device=pred.device, dtype=pred.dtype)
        if pred.shape[1] == 1:
            pred, target = pred.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1)
        if pred.shape[1] != 3:
            raise ValueError(f"lpips needs 1 or 3 channels, got {pred.shape[1]}")
        if not self.resize_to and min(pred.shape[-2:]) < LPIPS_MIN_SIZE[self.net]:
            raise ValueError(
                f"lpips-{self.net} needs images of at least {LPIPS_MIN_SIZE[self.net]}x{LPIPS_MIN_SIZE[self.net]}, "
                f"got {tuple(pred.shape[-2:])}; set loss.resize_to (e.g. 64) or use net=vgg / loss=feature"
            )
        if self.resize_to:
            size = (int(self.resize_to), int(self.resize_to))
            pred = nn.functional.interpolate(pred, size=size, mode="bilinear", align_corners=False)
            target = nn.functional.interpolate(target, size=size, mode="bilinear", align_corners=False)
        self.model.to(pred.device)
        if next(self.model.parameters()).dtype != pred.dtype:
            self.model.to(pred.dtype)
        return self.model(pred, target).reshape(pred.shape[0])

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "net": self.net, "backbone": self.backbone, "backbone_file": self.backbone_file}


def load_lpips_trunk(trunk: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Copy torchvision ``features.<i>.*`` weights into the lpips trunk's ``slice<k>.<i>.*`` modules."""
    own = trunk.state_dict()
    new = {}
    for key in own:
        _, idx, leaf = key.split(".", 2)
        tv_key = f"features.{idx}.{leaf}"
        if tv_key not in state:
            raise ValueError(f"{source} is not a torchvision backbone for this LPIPS trunk: missing {tv_key!r}")
        if state[tv_key].shape != own[key].shape:
            raise ValueError(
                f"{source}: {tv_key} has shape {tuple(state[tv_key].shape)}, expected {tuple(own[key].shape)}"
            )
        new[key] = state[tv_key]
    trunk.load_state_dict(new)


@register_loss("lpips")
def _make_lpips(
    model: Any = None,
    net: str = "vgg",
    backbone: str = "pretrained",
    backbone_path: str | None = None,
    cache_dir: str | None = None,
    version: str = "0.1",
    resize_to: int | None = None,
    **options: Any,
) -> Loss:
    _no_options("lpips", options)
    return LPIPSLoss(net, backbone, backbone_path, cache_dir, version, resize_to)


# --------------------------------------------------------------------------------------------- feature
class FeatureLoss(Loss):
    """LPIPS analogue in a model's own feature network (``feature_fn``; no linear heads).

    ``feature_fn(x)`` may return one tensor or a list of tensors (one per layer); each is (B, C, ...)
    or (B, F). Per layer: normalize along axis 1, squared difference, mean over positions, sum over
    channels; then sum over layers.
    """

    name = "feature"

    def __init__(self, feature_fn: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.feature_fn = feature_fn

    @staticmethod
    def _layers(f: Any) -> Sequence[torch.Tensor]:
        if isinstance(f, torch.Tensor):
            return [f]
        if isinstance(f, dict):
            return list(f.values())
        return list(f)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(device=pred.device, dtype=pred.dtype)
        fp, ft = self._layers(self.feature_fn(pred)), self._layers(self.feature_fn(target))
        total = 0.0
        for a, b in zip(fp, ft, strict=True):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = (a - b).pow(2)
            total = total + (d.sum(dim=1).reshape(d.shape[0], -1).mean(dim=1) if d.dim() > 2 else d.sum(dim=1))
        return total


@register_loss("feature")
def _make_feature(model: Any = None, **options: Any) -> Loss:
    _no_options("feature", options)
    fn = getattr(model, "feature_fn", None)
    if fn is None:
        name = getattr(model, "name", None)
        raise ValueError(f"loss 'feature' needs a model with feature_fn; model {name!r} has none (use loss=l2)")
    return FeatureLoss(fn)
