"""Zoo loader ``adm``: the guided-diffusion ImageNet models and their noisy classifiers.

Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis" (github openai/guided-diffusion).
The released files (``64x64_diffusion.pt``, ``256x256_diffusion.pt``, ``256x256_diffusion_uncond.pt`` and
the classifiers ``64x64_classifier.pt``, ``256x256_classifier.pt``) are plain state dicts; they are read
with ``torch.load(weights_only=True)`` into this project's own networks (:mod:`ld3.models.adm_nets`)
built with the flags the repository's README gives for each model, and loaded strictly.

* The U-Nets learn the variance (``learn_sigma``): their 6 output channels are (eps, variance
  interpolation); the network returned here keeps the eps half, so ``model_type='noise'``.
* The schedule is the training one as ``NoiseScheduleVP('discrete', betas=...)``: cosine
  (Nichol & Dhariwal 2021, max beta 0.999) for the 64x64 model, linear 1e-4..0.02 (T = 1000) for 256x256.
  The network time input is the integer step k for t = (k + 1) / 1000 (DPM-Solver's convention).
* Classifier guidance: eps - s * sigma_t * grad_x log p(y | x_t) (``guidance_type='classifier'``), with
  the class-conditional U-Net given the same labels y as the classifier, as guided-diffusion's
  ``classifier_sample.py`` (``condition_score``) and DPM-Solver's ``model_wrapper`` do. The default scale is
  the README's ``--classifier_scale`` of each model (1.0, 1.0, 10.0); configs set the paper settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from ld3.models.adm_nets import ADMEncoderClassifier, ADMUNet
from ld3.models.zoo import LoadedModel, register_model
from ld3.models.zoo._checkpoint import load_strict, load_torch_state, tensor_items
from ld3.models.zoo._weights import PathLike, resolve_weights_path
from ld3.schedules import NoiseScheduleVP
from ld3.utils import resolve_device

FETCH_HINT = "adm"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------------------ schedules
def adm_betas(kind: str, num_timesteps: int = 1000) -> torch.Tensor:
    """guided-diffusion's named beta schedules (``get_named_beta_schedule``), float64.

    ``linear``: linspace(1e-4 s, 0.02 s, T) with s = 1000 / T; ``cosine``: beta_i = min(1 - abar((i+1)/T) /
    abar(i/T), 0.999) with abar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2.
    """
    n = int(num_timesteps)
    if kind == "linear":
        s = 1000.0 / n
        return torch.linspace(1e-4 * s, 0.02 * s, n, dtype=torch.float64)
    if kind == "cosine":
        i = torch.arange(n, dtype=torch.float64)

        def abar(u: torch.Tensor) -> torch.Tensor:
            return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.clamp(1 - abar((i + 1) / n) / abar(i / n), max=0.999)
    raise ValueError(f"beta_schedule={kind!r} is not supported; allowed: ['cosine', 'linear']")


# ------------------------------------------------------------------------------------------ releases
def _unet(image_size: int, **kw: Any) -> Dict[str, Any]:
    cfg = dict(image_size=image_size, in_channels=3, out_channels=6, num_heads=4, num_head_channels=64,
               use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False, dropout=0.0,
               attention_resolutions=tuple(image_size // r for r in (32, 16, 8)))
    cfg.update(kw)
    return cfg


def _classifier(image_size: int, depth: int, channel_mult: tuple) -> Dict[str, Any]:
    return dict(image_size=image_size, in_channels=3, model_channels=128, out_channels=1000, num_res_blocks=depth,
                attention_resolutions=tuple(image_size // r for r in (32, 16, 8)), channel_mult=channel_mult,
                num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, pool="attention")


@dataclass(frozen=True)
class ADMRelease:
    """One released guided-diffusion model: file names, architecture flags, schedule, README guidance."""

    checkpoint: str
    unet: Dict[str, Any]
    beta_schedule: str
    classifier_checkpoint: str
    classifier: Dict[str, Any]
    guidance_scale: float


_MULT64, _MULT256 = (1, 2, 3, 4), (1, 1, 2, 2, 4, 4)
#: README flags of github openai/guided-diffusion for each released model
ADM_RELEASES: Dict[str, ADMRelease] = {
    "imagenet64_cond": ADMRelease(
        "64x64_diffusion.pt",
        _unet(64, model_channels=192, num_res_blocks=3, channel_mult=_MULT64, num_classes=1000, dropout=0.1,
              use_new_attention_order=True),
        "cosine", "64x64_classifier.pt", _classifier(64, 4, _MULT64), 1.0,
    ),
    "imagenet256_cond": ADMRelease(
        "256x256_diffusion.pt",
        _unet(256, model_channels=256, num_res_blocks=2, channel_mult=_MULT256, num_classes=1000),
        "linear", "256x256_classifier.pt", _classifier(256, 2, _MULT256), 1.0,
    ),
    "imagenet256_uncond": ADMRelease(
        "256x256_diffusion_uncond.pt",
        _unet(256, model_channels=256, num_res_blocks=2, channel_mult=_MULT256, num_classes=None),
        "linear", "256x256_classifier.pt", _classifier(256, 2, _MULT256), 10.0,
    ),
}
_BY_FILE = {r.checkpoint: v for v, r in ADM_RELEASES.items()}


# ------------------------------------------------------------------------------------------ network
class ADMNetwork(torch.nn.Module):
    """``network(x, t_input, cond=None)`` -> the eps half of the U-Net output; holds the classifier too.

    ``cond`` is a batch of integer labels (class-conditional U-Net; ``default_labels`` when omitted). An
    unconditional U-Net takes no labels: labels given to it (the targets of classifier guidance) are not
    used by the U-Net. ``network.to(...)`` moves the U-Net and the classifier together.
    """

    def __init__(self, unet: ADMUNet, classifier: Optional[ADMEncoderClassifier], default_labels: Optional[int]):
        super().__init__()
        self.unet = unet
        self.classifier = classifier
        self.default_labels = default_labels
        self.eps_channels = int(unet.in_channels)

    def _labels(self, cond: Any, x: torch.Tensor, n: Optional[int]) -> torch.Tensor:
        y = torch.as_tensor(cond, device=x.device)
        if y.is_floating_point():
            raise ValueError(f"class labels must be integers, got dtype {y.dtype}")
        y = y.long()
        if y.dim() == 0:
            y = y.expand(x.shape[0])
        if y.shape != (x.shape[0],):
            raise ValueError(f"expected {x.shape[0]} class labels, got shape {tuple(y.shape)}")
        if n is not None and ((y < 0) | (y >= n)).any():
            raise ValueError(f"class labels must lie in [0, {n - 1}], got {y.tolist()[:8]}")
        return y

    def forward(self, x: torch.Tensor, t_input: Any, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t_input, device=x.device, dtype=torch.float32)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        y = None
        if self.unet.num_classes is not None:
            if cond is None:
                if self.default_labels is None:
                    raise ValueError(
                        f"this ADM U-Net is class-conditional ({self.unet.num_classes} classes): pass the labels as "
                        f"the condition, or set options.class_labels"
                    )
                cond = self.default_labels
            y = self._labels(cond, x, self.unet.num_classes)
        return self.unet(x, t, y=y)[:, : self.eps_channels]

    def classifier_log_prob(self, x: torch.Tensor, t_input: Any, y: Any) -> torch.Tensor:
        """log p(y | x_t) per sample from the noisy classifier (the ``classifier_fn`` of classifier guidance)."""
        if self.classifier is None:
            raise ValueError("no classifier was loaded (options.classifier_path / classifier_checkpoint)")
        t = torch.as_tensor(t_input, device=x.device, dtype=torch.float32)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        logits = self.classifier(x, t).float()
        labels = self._labels(y, x, self.classifier.num_classes)
        return torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1).to(x.dtype)


@dataclass
class ADMLoadedModel(LoadedModel):
    """:class:`LoadedModel` whose classifier guidance feeds the target labels to a class-conditional U-Net.

    The generic wrapper calls the network with ``unconditional_condition`` under classifier guidance (the
    null class of models that have one); guided-diffusion's conditional models have none and see the
    target labels y, as in ``classifier_sample.py``. Without an explicit unconditional condition the labels
    are therefore used for both.
    """

    def model_fn(self, guidance_type: Optional[str] = None, guidance_scale: Optional[float] = None,
                 condition: Any = None, unconditional_condition: Any = None,
                 **kwargs: Any) -> Callable[..., torch.Tensor]:
        gtype = guidance_type or self.default_guidance
        inner = super().model_fn(gtype, guidance_scale, condition, unconditional_condition, **kwargs)
        if gtype != "classifier" or not self.metadata.get("class_conditional"):
            return inner
        default_cond, default_uncond = condition, unconditional_condition

        def fn(x: torch.Tensor, t: Any, condition: Any = None, unconditional_condition: Any = None) -> torch.Tensor:
            c = default_cond if condition is None else condition
            u = default_uncond if unconditional_condition is None else unconditional_condition
            return inner(x, t, condition=c, unconditional_condition=c if u is None else u)

        for a in ("noise_schedule", "model_type", "guidance_type"):
            setattr(fn, a, getattr(inner, a))
        return fn


# ------------------------------------------------------------------------------------------ loader
def _read(path: Path, what: str, sha256: Optional[str]) -> Dict[str, torch.Tensor]:
    return tensor_items(load_torch_state(path, what, FETCH_HINT, sha256), what, path)


def _build(cls: type, cfg: Dict[str, Any], state: Dict[str, torch.Tensor], what: str, path: Path,
           variant: Optional[str]) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            net = cls(**cfg)
    except TypeError as e:
        raise ValueError(f"invalid {what} architecture {cfg}: {e}") from None
    hint = (f"Is variant={variant!r} the model this file holds? Known variants: {sorted(ADM_RELEASES)}"
            if variant else "Check options.architecture against the file.")
    load_strict(net, state, what, path, hint)
    return net.eval().requires_grad_(False)


@register_model("adm")
def load_adm(
    path: PathLike | None = None,
    checkpoint: str | None = None,
    weights_dir: PathLike | None = None,
    variant: str | None = None,
    classifier_path: PathLike | None = None,
    classifier_checkpoint: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    guidance_scale: float | None = None,
    class_labels: int | None = None,
    sha256: str | None = None,
    classifier_sha256: str | None = None,
    architecture: Dict[str, Any] | None = None,
    classifier_architecture: Dict[str, Any] | None = None,
    beta_schedule: str | None = None,
    num_timesteps: int = 1000,
) -> LoadedModel:
    """Load a guided-diffusion U-Net (and optionally its noisy classifier) as a :class:`LoadedModel`.

    Args:
        path / checkpoint / weights_dir: the U-Net ``.pt`` (``checkpoint`` is a name inside ``weights_dir``,
            default ``$LD3_CACHE/weights``).
        variant: ``imagenet64_cond``, ``imagenet256_cond`` or ``imagenet256_uncond`` (default: from the file
            name of a released checkpoint).
        classifier_path / classifier_checkpoint: the noisy classifier ``.pt``; enables classifier guidance
            (the default guidance then).
        device, dtype: where and in which precision the networks run (GroupNorm and softmax stay float32).
        guidance_scale: default classifier scale (default: the README value of the variant).
        class_labels: labels used when a class-conditional U-Net is called without a condition.
        sha256, classifier_sha256: pinned checksums (hex digest or prefix) verified before loading.
        architecture, classifier_architecture: keyword arguments of :class:`~ld3.models.adm_nets.ADMUNet` /
            :class:`~ld3.models.adm_nets.ADMEncoderClassifier`, merged over the variant's (or complete,
            without a variant): for other guided-diffusion checkpoints and tiny test instances.
        beta_schedule: ``linear`` or ``cosine`` (default: the variant's), over ``num_timesteps`` steps.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(DTYPES)}")
    dev = resolve_device(device)
    unet_path = resolve_weights_path(path, checkpoint, weights_dir, "ADM (guided-diffusion) U-Net", FETCH_HINT,
                                     want_dir=False)
    clf_path = None
    if classifier_path is not None or classifier_checkpoint is not None:
        clf_path = resolve_weights_path(classifier_path, classifier_checkpoint, weights_dir,
                                        "ADM noisy classifier", FETCH_HINT, want_dir=False)
    if variant is None:
        variant = _BY_FILE.get(unet_path.name)
        if variant is None and architecture is None:
            raise ValueError(
                f"cannot tell which guided-diffusion model {unet_path.name!r} is: set options.variant to one of "
                f"{sorted(ADM_RELEASES)} (or give options.architecture)"
            )
    if variant is not None and variant not in ADM_RELEASES:
        raise ValueError(f"variant={variant!r} is not supported; allowed: {sorted(ADM_RELEASES)}")
    rel = ADM_RELEASES.get(variant) if variant else None
    unet_cfg = {**(rel.unet if rel else {}), **dict(architecture or {})}
    schedule = beta_schedule or (rel.beta_schedule if rel else None)
    if schedule is None:
        raise ValueError("options.beta_schedule (linear or cosine) is required without a variant")
    betas = adm_betas(schedule, num_timesteps)  # validates the name before any file is read
    clf_cfg = None
    if clf_path is not None:
        clf_cfg = {**(rel.classifier if rel else {}), **dict(classifier_architecture or {})}
        if not clf_cfg:
            raise ValueError("options.classifier_architecture is required for a classifier without a variant")
    unet_state = _read(unet_path, "ADM U-Net checkpoint", sha256)
    clf_state = _read(clf_path, "ADM classifier checkpoint", classifier_sha256) if clf_path is not None else None

    unet = _build(ADMUNet, unet_cfg, unet_state, "ADM U-Net checkpoint", unet_path, variant)
    classifier = None
    if clf_state is not None:
        classifier = _build(ADMEncoderClassifier, clf_cfg, clf_state, "ADM classifier checkpoint", clf_path, variant)
    c = unet.in_channels
    if unet.out_channels not in (c, 2 * c):
        raise ValueError(f"U-Net out_channels={unet.out_channels} must be {c} or {2 * c} (learned variance)")
    num_classes = unet.num_classes
    if class_labels is not None and (num_classes is None or not 0 <= int(class_labels) < num_classes):
        raise ValueError(f"class_labels={class_labels!r} is invalid for a U-Net with num_classes={num_classes}")
    if classifier is not None and num_classes is not None and classifier.num_classes != num_classes:
        raise ValueError(f"the classifier has {classifier.num_classes} classes, the U-Net {num_classes}")

    network = ADMNetwork(unet, classifier, class_labels).to(device=dev, dtype=DTYPES[dtype])
    scale = float(guidance_scale if guidance_scale is not None else (rel.guidance_scale if rel else 1.0))
    n_cls = num_classes if num_classes is not None else (classifier.num_classes if classifier is not None else None)

    def cond_process_fn(labels: Any) -> torch.Tensor:
        return torch.as_tensor(labels).long().to(next(network.parameters()).device)

    size = int(unet.image_size)
    return ADMLoadedModel(
        name="adm",
        noise_schedule=NoiseScheduleVP("discrete", betas=betas),
        network=network,
        model_type="noise",
        shape=(c, size, size),
        num_classes=n_cls,
        null_class=None,
        classifier=network.classifier_log_prob if classifier is not None else None,
        cond_process_fn=cond_process_fn if n_cls else None,
        default_guidance="classifier" if classifier is not None else "uncond",
        default_guidance_scale=scale,
        metadata={
            "path": str(unet_path),
            "classifier_path": None if clf_path is None else str(clf_path),
            "variant": variant,
            "beta_schedule": schedule,
            "learned_variance": unet.out_channels == 2 * c,
            "class_conditional": num_classes is not None,
            "dtype": dtype,
            "device": str(dev),
        },
    )


__all__ = ["ADM_RELEASES", "ADMRelease", "ADMNetwork", "ADMLoadedModel", "adm_betas", "load_adm"]
